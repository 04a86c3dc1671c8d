"""One error hierarchy: every failure a user can act on derives from `NasError`.

Messages name the file (when there is one), the field and the offending value,
e.g. ``search_spaces/x.yaml: n_kv_head=3 must divide n_head=8``.
"""

from __future__ import annotations

from typing import Any


class NasError(Exception):
    """Base class for errors the user can act on (bad input, missing data, ...)."""


class ConfigError(NasError, ValueError):
    """A value in a file or argument is invalid. Names source, field and value."""

    def __init__(self, message: str, *, source: str | None = None,
                 field: str | None = None, value: Any = None) -> None:
        self.source = source
        self.field = field
        self.value = value
        super().__init__(f"{source}: {message}" if source else message)


class ArchitectureError(ConfigError):
    """An `Architecture` field has an invalid value."""


class DataError(NasError):
    """A corpus or tokenizer problem (unreadable path, empty or too small corpus)."""


class ExportError(NasError):
    """ONNX export failed or the exported graph does not match PyTorch."""


class ProviderError(ConfigError):
    """A hardware profile asks for an execution provider that is not installed."""


class StoreError(NasError):
    """The database cannot be opened or holds something unexpected."""


class NotFoundError(NasError, LookupError):
    """A search, candidate or file that the user named does not exist."""


class SearchError(NasError):
    """A search cannot start or continue (e.g. name reused with another space)."""
