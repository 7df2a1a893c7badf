"""pertinent: personalized retrieval for LLM agents.

    import pertinent
    px = pertinent.open("./pertinent-data")
    px.ingest(docs)
    px.record("alice", pertinent.Event(kind="open", item_id=chunk_id))
    ctx = px.retrieve("how do I rotate API keys?", user_id="alice", session_id="s1",
                      budget=pertinent.Budget(model="gpt-4o", max_tokens=1500))

Only the names below are public; modules are implementation detail.
"""

from pertinent.client import (
    Consent,
    ForgetReceipt,
    IngestReport,
    Pertinent,
    RetentionReport,
    open,
)
from pertinent.config import EventWeights, ScoringWeights, Settings
from pertinent.embeddings import CachedQueryEmbedder, Embedder, SentenceTransformerEmbedder
from pertinent.errors import (
    BudgetTooSmall,
    ConfigurationError,
    ConsentWithheld,
    DecryptionFailed,
    DimensionMismatch,
    DocumentLoadError,
    EmbeddingModelMismatch,
    EmptyQuery,
    InvalidInput,
    InvalidVector,
    MissingDependency,
    NonFiniteVector,
    PartialWrite,
    PertinentError,
    QueryTooLong,
    StoreCorrupted,
    StoreError,
    StoreNotWritable,
    StoreUnavailable,
    TokenizerUnavailable,
    UnknownEventKind,
    UnknownItem,
)
from pertinent.memory.extractors import (
    ExtractionError,
    FactExtractor,
    LLMError,
    LLMTimeout,
    OpenAICompatibleLLM,
    from_langchain,
    from_llama_index,
)
from pertinent.memory.longterm import (
    InvalidTimestamp,
    LongTermMemory,
    MemorySettings,
    MemoryTurn,
)
from pertinent.memory.profiles import ProfileView
from pertinent.memory.session_memory import SessionMemory
from pertinent.memory.sessions import SessionView
from pertinent.privacy.encryption import KeyProvider, Keyring, RotationReport
from pertinent.retrievers.rerank import CrossEncoderReranker, Reranker
from pertinent.stores.base import SearchFilter, Store
from pertinent.types import (
    Budget,
    Chunk,
    Citation,
    Document,
    Event,
    Hit,
    PackedContext,
    Result,
    ScoreBreakdown,
    Turn,
)
from pertinent.versions import EmbeddingVersion, ReembedReport

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "BudgetTooSmall",
    "CachedQueryEmbedder",
    "Chunk",
    "Citation",
    "ConfigurationError",
    "Consent",
    "ConsentWithheld",
    "CrossEncoderReranker",
    "DecryptionFailed",
    "DimensionMismatch",
    "Document",
    "DocumentLoadError",
    "Embedder",
    "EmbeddingModelMismatch",
    "EmbeddingVersion",
    "EmptyQuery",
    "Event",
    "EventWeights",
    "ExtractionError",
    "FactExtractor",
    "ForgetReceipt",
    "Hit",
    "IngestReport",
    "InvalidInput",
    "InvalidTimestamp",
    "InvalidVector",
    "KeyProvider",
    "Keyring",
    "LLMError",
    "LLMTimeout",
    "LongTermMemory",
    "MemorySettings",
    "MemoryTurn",
    "MissingDependency",
    "NonFiniteVector",
    "OpenAICompatibleLLM",
    "PackedContext",
    "PartialWrite",
    "Pertinent",
    "PertinentError",
    "ProfileView",
    "QueryTooLong",
    "ReembedReport",
    "Reranker",
    "Result",
    "RetentionReport",
    "RotationReport",
    "ScoreBreakdown",
    "ScoringWeights",
    "SearchFilter",
    "SentenceTransformerEmbedder",
    "SessionMemory",
    "SessionView",
    "Settings",
    "Store",
    "StoreCorrupted",
    "StoreError",
    "StoreNotWritable",
    "StoreUnavailable",
    "TokenizerUnavailable",
    "Turn",
    "UnknownEventKind",
    "UnknownItem",
    "__version__",
    "from_langchain",
    "from_llama_index",
    "open",
]
