"""Every error pertinent raises on purpose.

Catch `PertinentError` to handle all of them; catch a subclass to handle one case.
Each message says what to change. Driver errors (LanceDB, Weaviate, tiktoken) are
mapped to the most specific subclass in one place per backend, with `raise ... from exc`
so the original traceback is kept.

    PertinentError
    ├── ConfigurationError
    │   ├── MissingDependency
    │   └── TokenizerUnavailable
    ├── InvalidInput                      (also a ValueError)
    │   ├── EmptyQuery
    │   ├── QueryTooLong
    │   ├── InvalidVector
    │   │   ├── DimensionMismatch
    │   │   └── NonFiniteVector
    │   ├── UnknownEventKind
    │   ├── UnknownItem
    │   ├── BudgetTooSmall
    │   └── DocumentLoadError
    ├── ConsentWithheld
    ├── DecryptionFailed
    ├── EmbeddingModelMismatch
    └── StoreError
        ├── StoreUnavailable
        ├── StoreNotWritable
        ├── StoreCorrupted
        └── PartialWrite
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "BudgetTooSmall",
    "ConfigurationError",
    "ConsentWithheld",
    "DecryptionFailed",
    "DimensionMismatch",
    "DocumentLoadError",
    "EmbeddingModelMismatch",
    "EmptyQuery",
    "InvalidInput",
    "InvalidVector",
    "MissingDependency",
    "NonFiniteVector",
    "PartialWrite",
    "PertinentError",
    "QueryTooLong",
    "StoreCorrupted",
    "StoreError",
    "StoreNotWritable",
    "StoreUnavailable",
    "TokenizerUnavailable",
    "UnknownEventKind",
    "UnknownItem",
]


class PertinentError(Exception):
    """Base of every error pertinent raises on purpose."""


class ConfigurationError(PertinentError):
    """The settings or the installed packages cannot do what was asked."""


class MissingDependency(ConfigurationError, ImportError):
    """An optional package is needed for this feature; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; it is needed here. "
            f"Install it with: pip install 'pertinent[{extra}]'"
        )
        self.package = package
        self.extra = extra


class TokenizerUnavailable(ConfigurationError):
    """No tokenizer could be loaded for the target model."""


class InvalidInput(PertinentError, ValueError):
    """An argument is malformed. Nothing was written."""


class EmptyQuery(InvalidInput):
    """The query is empty or only white space."""


class QueryTooLong(InvalidInput):
    """The query has more tokens than the embedding model reads; it would be cut silently."""


class InvalidVector(InvalidInput):
    """A vector cannot be used for search or storage."""


class DimensionMismatch(InvalidVector):
    """A vector's length differs from the store's embedding dimension."""


class NonFiniteVector(InvalidVector):
    """A vector holds NaN or infinity."""


class UnknownEventKind(InvalidInput):
    """An event kind that has no weight in the settings."""


class UnknownItem(InvalidInput):
    """An event names an item id that is not in the store, and carries no text to embed."""


class BudgetTooSmall(InvalidInput):
    """The token budget cannot hold even the fixed parts of the context (e.g. instructions)."""


class DocumentLoadError(InvalidInput):
    """A file given to ingest cannot be read as text."""


class ConsentWithheld(PertinentError):
    """The user opted out of what this call would store (e.g. long-term memory)."""


class DecryptionFailed(PertinentError):
    """A sealed record cannot be opened: the key is not the one it was sealed with (or
    the key provider does not hold it), or the record was modified or moved to another
    record. Nothing was written; reopen with the right key (after a rotation, the new
    one). `key_id` names the key the record needs, when it is known."""

    def __init__(self, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class EmbeddingModelMismatch(PertinentError):
    """The store holds vectors of another embedding model; mixing models gives garbage scores."""


class StoreError(PertinentError):
    """The store failed. No partial write was left behind by pertinent."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (a server that is down, a path that vanished)."""


class StoreNotWritable(StoreError):
    """The store's location exists but cannot be written (permissions, read-only disk)."""


class PartialWrite(StoreError):
    """The store did not write some objects of a batch (or went away mid-batch).
    `failed` maps each id that was not written to the reason; every other object of the
    call was written. Writes are idempotent: repeat the call to retry."""

    def __init__(self, message: str, failed: Mapping[str, str]) -> None:
        super().__init__(message)
        self.failed = dict(failed)


class StoreCorrupted(StoreError):
    """The store's files cannot be read as a pertinent store."""
