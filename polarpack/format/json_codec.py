"""The JSON encoding: one top-level member per line, one layer per line (spec: "JSON encoding")."""

from __future__ import annotations

import json
from typing import Any

from polarpack.errors import FormatError
from polarpack.format.distribution import Distribution
from polarpack.format.fields import (
    JSON_GRANULARITIES,
)


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, **kwargs)


def encode_json(dist: Distribution) -> bytes:
    """UTF-8 JSON: one top-level member per line, one layer per line (`json.dumps` with its default
    separators; keys sorted inside source, extraction, producer and metadata), a final newline."""
    if dist.granularity not in JSON_GRANULARITIES:
        raise FormatError(
            f"a {dist.granularity} distribution has no JSON encoding (its signs are binary): "
            "save it as NAME.polar.safetensors"
        )
    if dist.norms:
        raise FormatError(
            "normalisation tensors have no JSON encoding: save the distribution as "
            "NAME.polar.safetensors"
        )
    d = dist.to_dict()
    layers = ",\n".join("    " + _dumps(layer) for layer in d.pop("layers"))
    members = [f"  {_dumps(k)}: {_dumps(v, sort_keys=True)}" for k, v in d.items()]
    members.insert(2 if "granularity" in d else 1, f'  "layers": [\n{layers}\n  ]')
    return ("{\n" + ",\n".join(members) + "\n}\n").encode("utf-8")


def _loads(text: str | bytes, where: str, what: str) -> Any:
    """json.loads that rejects duplicate keys; NaN/Infinity come back as floats for validate to
    name."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            raise FormatError(
                f"{where}: {what}: a JSON object has a duplicate key; each key may appear once"
            )
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=float)
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"{where}: malformed {what} at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:  # huge integers, deep nesting
        raise FormatError(f"{where}: malformed {what}: {exc}") from None
