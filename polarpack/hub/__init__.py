"""Publish and pull `.polar` distributions on the Hugging Face Hub, safe against a hostile or
broken server: `push` (polarpack.hub.publish) with its model card (polarpack.hub.card); `pull`,
`pull_file`, `download` and `hf://` references live in polarpack.sources.hub, the Hub as a source,
and are re-exported here."""

from polarpack.hub.card import build_card
from polarpack.hub.publish import PushResult, push
from polarpack.sources.hub import (
    HubReference,
    download,
    hub_timeout,
    parse_reference,
    pull,
    pull_file,
)
from polarpack.sources.references import is_hub_reference

__all__ = [
    "HubReference",
    "PushResult",
    "build_card",
    "download",
    "hub_timeout",
    "is_hub_reference",
    "parse_reference",
    "pull",
    "pull_file",
    "push",
]
