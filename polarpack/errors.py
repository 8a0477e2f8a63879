"""Error types: every failure a user can cause is a `PolarpackError` whose message names the
offending file, layer or field and says how to fix it. The CLI prints these as one line."""

from __future__ import annotations

from polarpack.redact import redact_urls


class PolarpackError(Exception):
    """Base class for user-facing errors (bad input, missing data, unreachable services). A URL in
    the message is shown without its credentials: error messages get pasted into issues."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_urls(a) if isinstance(a, str) else a for a in args))


class FormatError(PolarpackError, ValueError):
    """A `.polar` file or distribution object violates the format spec."""


class SourceError(PolarpackError):
    """A weights source (model name, checkpoint, hub reference) cannot be read or has no layers."""


class ModelError(PolarpackError):
    """Unknown model name, or weights/distributions that do not fit the model."""


class DataError(PolarpackError):
    """A dataset cannot be found, read or decoded."""


class HubError(PolarpackError):
    """A Hugging Face Hub operation failed (not found, auth, offline, server error)."""


class ConfigError(PolarpackError, ValueError):
    """An invalid option combination or experiment file."""
