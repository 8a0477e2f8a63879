"""The README.md model card that `push` publishes next to a distribution: the Hub's metadata
(library, license, base model, tags), where the distribution came from, its layers and its sizes."""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from polarpack.errors import HubError
from polarpack.format import Distribution, size_report
from polarpack.sources.hub import parse_reference


def _base_model(source: Any) -> str | None:
    """The Hub model a distribution was extracted from: polarpack.sources.weights records
    source.hub = hf://..."""
    try:
        parsed = parse_reference(source["hub"]) if source.get("type") == "hub" else None
    except (HubError, KeyError):
        return None
    return parsed.repo_id if parsed and parsed.repo_type == "model" else None


def _n(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")  # a Distribution's URLs hold no credentials


CARD = """
# {stem}: a polarity distribution

The fractions of zero, negative and positive weights in each of the {n} layers of a network
(polarpack `.polar`
format), for polarity-distribution transfer learning (Igoe, Biswas and Basu, ICLR 2024 Tiny Papers).

## Source
{source}

## Layers
| layer | kind | shape | weights | p0 (zero) | p- (negative) | p+ (positive) |
| --- | --- | --- | ---: | ---: | ---: | ---: |
{layers}

## Size
| what | bytes |
| --- | ---: |
{files}
| the sign pattern, 2 bits per weight | {signs} |
| the float32 weights | {floats} |

## Usage
```bash
polarpack inspect {uri}
polarpack train --dist {uri}
python -c 'from polarpack.hub import pull; print(pull("{uri}").names)'
```
"""


def build_card(
    dist: Distribution,
    files: dict[str, bytes],
    *,
    repo_id: str,
    stem: str,
    revision: str | None = None,
    license: str | None = "mit",
) -> ModelCard:
    """The README.md model card: no dates or versions, so a re-push of the same distribution
    changes nothing."""
    rev = f"@{revision}" if revision not in (None, "main") else ""
    source, sizes = dict(dist.source), size_report(dist)
    facts = {
        "sha256": "not recorded",
        **source,
        "extraction": dict(dist.extraction),
        "producer": dict(dist.producer),
    }
    facts = [f"- {key}: `{_cell(value)}`" for key, value in sorted(facts.items()) if value != {}]
    layers = [
        f"| `{_cell(layer.name)}` | {layer.kind} | "
        f"{'x'.join(map(str, layer.shape or ())) or 'unknown'} | "
        f"{_n(layer.numel)} | {layer.p0:.6g} | {layer.p_neg:.6g} | {layer.p_pos:.6g} |"
        for layer in dist.layers
    ]
    body = CARD.format(
        stem=stem,
        n=len(dist.layers),
        uri=f"hf://{repo_id}{rev}/{next(iter(files))}",
        source="\n".join(facts),
        layers="\n".join(layers),
        files="\n".join(f"| `{name}` | {len(data):,} |" for name, data in files.items()),
        signs=_n(sizes.get("sign_pattern_bytes")),
        floats=_n(sizes.get("float32_bytes")),
    )
    meta = ModelCardData(
        library_name="polarpack",
        license=license or None,
        base_model=_base_model(source),
        tags=["polarpack", "polarity-distribution"],
    )
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n{body}")
