"""The `.polar` format: polarity distributions in a JSON and a safetensors encoding.

The exact specification is `spec/polar-format.md` (format_version 3; files of versions 1 and 2
still read); the JSON Schema of the JSON encoding ships in the package
(`polarpack/format/polar.schema.json`, see `json_schema()`). Four granularities climb from a few
numbers to a 1-bit checkpoint: ``layer`` (p0, p-, p+ per layer: the paper's P), ``channel`` (the
counts of each output channel), ``pattern`` (the exact ternary signs) and ``scaled`` (the signs and
one magnitude per output channel). Any of them may carry the network's normalisation tensors.

One idea per module:

- `fields`: versions, granularities and key names, the vocabulary every part shares;
- `layer`: `LayerDistribution`, one layer (coded streams stay coded until asked for);
- `distribution`: `Distribution`, the in-memory form of a file;
- `rules`: every rule of the spec, once (`validate`);
- `json_codec`: the JSON encoding (layer and channel granularity);
- `container`: the safetensors encoding (every granularity, entropy-coded);
- `coding`: the entropy coding of sign patterns and channel counts;
- `limits`: the bounds on a reader's work, and the environment variables that raise them;
- `files`: `load`, `save`, `encode`, `decode`: encodings by name and by content;
- `sizes`: `size_report`, what a file holds against the information bounds.

Everything other code uses is re-exported here: import it from `polarpack.format`.
"""

from polarpack.format import coding
from polarpack.format.container import METADATA_KEY, decode_safetensors, encode_safetensors
from polarpack.format.distribution import Distribution
from polarpack.format.fields import (
    FORMAT_VERSION,
    GRANULARITIES,
    HEADER_KEYS,
    INT64_MAX,
    JSON_GRANULARITIES,
    LAYER_KEYS,
    LAYER_KINDS,
    NORM_MEMBERS,
    OBJECT_KEYS,
    READ_VERSIONS,
    SOURCE_TYPES,
    SUM_TOLERANCE,
    TOP_KEYS,
)
from polarpack.format.files import (
    decode,
    detect_encoding,
    encode,
    encoding_for_path,
    json_schema,
    load,
    save,
)
from polarpack.format.json_codec import encode_json
from polarpack.format.layer import LayerDistribution, pack_signs, unpack_signs
from polarpack.format.limits import JSON_LIMIT, SAFETENSORS_LIMIT, size_limit
from polarpack.format.rules import validate
from polarpack.format.sizes import coded_bytes, entropy_bits, size_report

__all__ = [
    "FORMAT_VERSION",
    "GRANULARITIES",
    "HEADER_KEYS",
    "INT64_MAX",
    "JSON_GRANULARITIES",
    "JSON_LIMIT",
    "LAYER_KEYS",
    "LAYER_KINDS",
    "METADATA_KEY",
    "NORM_MEMBERS",
    "OBJECT_KEYS",
    "READ_VERSIONS",
    "SAFETENSORS_LIMIT",
    "SOURCE_TYPES",
    "SUM_TOLERANCE",
    "TOP_KEYS",
    "Distribution",
    "LayerDistribution",
    "coded_bytes",
    "coding",
    "decode",
    "decode_safetensors",
    "detect_encoding",
    "encode",
    "encode_json",
    "encode_safetensors",
    "encoding_for_path",
    "entropy_bits",
    "json_schema",
    "load",
    "pack_signs",
    "save",
    "size_limit",
    "size_report",
    "unpack_signs",
    "validate",
]
