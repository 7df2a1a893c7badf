"""Settings: every tunable number in one place, overridable by env vars (PERTINENT_*).

Defaults are chosen so that a user with no history gets exactly the store's hybrid
search (the personalization gates are 0), and a user with a few dozen events gets a
noticeable but bounded personal tilt. `docs/configuration.md` lists each field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["EventWeights", "ScoringWeights", "Settings"]


class ScoringWeights(BaseModel):
    """Weights of the bounded mix that gives the personalized score.

    The final score is a weighted mean of terms that each lie in [0, 1]; the user and
    session weights are multiplied by their confidence gates, so with no history the
    final score is the hybrid score.
    """

    model_config = {"frozen": True}

    hybrid: float = Field(1.0, ge=0)
    # user 4 and negative 0.5 come from `pertinent tune movielens` on the dev split
    # (docs/evaluation.md, "Tuning"); the tuner preferred negative 0, which would make
    # rejections inert, at a cost of 4% nDCG@10 inside the bootstrap noise.
    user: float = Field(4.0, ge=0)
    session: float = Field(0.5, ge=0)
    negative: float = Field(0.5, ge=0, description="share of the negative affinity subtracted")
    rerank: float = Field(0.5, ge=0, le=1, description="share of the cross-encoder in the final")

    @model_validator(mode="after")
    def _some_weight(self) -> ScoringWeights:
        if self.hybrid == 0 and self.user == 0 and self.session == 0:
            raise ValueError("at least one of hybrid, user, session weights must be > 0")
        return self


class EventWeights(BaseModel):
    """Default weight per event kind; negative kinds feed the negative sum."""

    model_config = {"frozen": True}

    query: float = 0.5
    open: float = 1.0
    click: float = 0.5
    accept: float = 2.0
    like: float = 2.0
    reject: float = -2.0
    dislike: float = -2.0
    skip: float = -0.5

    def weight(self, kind: str) -> float:
        return float(getattr(self, kind))


class Settings(BaseSettings):
    """All knobs. Pass as `pertinent.open(path, settings=Settings(...))` or set env vars
    such as ``PERTINENT_HALF_LIFE_DAYS=14`` or ``PERTINENT_WEIGHTS__USER=0.8``."""

    model_config = SettingsConfigDict(
        env_prefix="PERTINENT_", env_nested_delimiter="__", frozen=True
    )

    path: Path = Path("./pertinent-data")
    backend: Literal["lancedb", "weaviate"] = "lancedb"

    # Weaviate (backend="weaviate"; docs/weaviate.md)
    weaviate_url: str = Field("http://localhost:8080", description="REST endpoint of the cluster")
    weaviate_grpc_port: int = Field(50051, gt=0, lt=65536, description="gRPC port, same host")
    weaviate_api_key: SecretStr | None = Field(None, description="API key (None: anonymous)")
    weaviate_timeout_s: float = Field(
        30.0, gt=0, description="deadline of every store call, retries included"
    )
    weaviate_collection_prefix: str = Field(
        "Pertinent", description="collection names start with this (several stores per cluster)"
    )

    # Embeddings
    embedding_model: str = Field(
        "all-MiniLM-L6-v2",
        description="the bundled model's name, or a local sentence-transformers directory",
    )
    embedding_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="weights' dtype for the bundled embedder; auto: bfloat16 on a CPU with "
        "native bfloat16 (AMX, AVX512-BF16), float32 elsewhere",
    )
    embedding_batch_size: int = Field(64, gt=0)
    query_cache_size: int = Field(4096, ge=0)
    query_threads: int | None = Field(
        1, gt=0, description="torch threads for query embedding (None: leave torch's default)"
    )
    document_threads: int | None = Field(
        None, gt=0, description="torch threads for batch embedding (None: all cores)"
    )

    # Chunking (in tokens of the embedding model: chunks longer than it reads would be cut)
    chunk_tokens: int = Field(200, gt=16)
    chunk_overlap: float = Field(0.1, ge=0, lt=0.5)

    # Search
    alpha: float = Field(0.5, ge=0, le=1, description="vector share in hybrid fusion")
    candidates: int = Field(50, gt=0, description="hybrid candidates per query")
    user_candidates: int = Field(20, ge=0, description="extra candidates from the user-blended leg")
    rho: float = Field(0.5, ge=0, description="strength of the user vector in the blended leg")
    user_leg: Literal["separate", "fused"] = Field(
        "separate",
        description="separate: a second vector search on the user-blended query; "
        "fused: one hybrid search whose vector leg is the blended query (one round trip)",
    )
    top_k: int = Field(10, gt=0)

    # Personalization
    weights: ScoringWeights = ScoringWeights()
    event_weights: EventWeights = EventWeights()
    half_life_days: float = Field(30.0, gt=0)
    confidence_n0: float = Field(10.0, gt=0, description="event mass at which the user gate is 0.5")
    session_half_life_turns: float = Field(3.0, gt=0)
    session_n0: float = Field(1.0, gt=0)
    interests: int = Field(
        1, ge=1, le=16, description="user interest centroids (1 = a single profile)"
    )
    interest_threshold: float = Field(0.35, ge=-1, le=1)

    # Diversity
    # Off by default (docs/evaluation.md): λ 0.9 cost 1.7% nDCG@10 on Cranfield and 2% on
    # MovieLens for +0.9% recall@10 on LoCoMo, and with it on, a user without history
    # would not get exactly the hybrid ranking.
    mmr_lambda: float = Field(1.0, ge=0, le=1, description="1 = no diversity, 0 = only diversity")

    # Packing
    budget_model: str = "gpt-4o"
    budget_tokens: int = Field(2000, gt=0)
    near_duplicate_cosine: float = Field(0.97, gt=0, le=1)
    min_partial_tokens: int = Field(40, ge=0, description="smallest cut passage worth including")
    # Faults
    degraded_mode: bool = Field(
        False,
        description="when user state cannot be read or written, serve plain results and say so "
        "in PackedContext.degraded instead of raising",
    )
    breaker_threshold: int = Field(3, gt=0, description="failed calls before a cluster is down")
    breaker_reset_s: float = Field(
        10.0, gt=0, description="seconds before a down cluster is retried"
    )
    # Resource bounds: in-memory caches of rebuildable state (an evicted profile is refolded
    # from its event log on next use)
    profile_cache_size: int = Field(
        10_000, gt=0, description="user profiles (and consents) kept in memory, LRU"
    )
    session_cache_size: int = Field(10_000, gt=0, description="session states kept in memory, LRU")
    lancedb_cache_mib: int = Field(
        64,
        ge=0,
        description="LanceDB metadata cache of the chunks and user settings, MiB "
        "(0 = LanceDB's defaults for both of their caches)",
    )
    lancedb_log_cache_mib: int = Field(
        16,
        ge=0,
        description="LanceDB index and metadata caches of the event and turn logs, MiB "
        "each (0 = LanceDB's defaults); they hold little more than the latest version's "
        "metadata and the user_id indexes, but every append adds its version's metadata "
        "until the bound evicts it",
    )
    lancedb_index_cache_mib: int = Field(
        1024,
        gt=0,
        description="LanceDB index cache, MiB: it must hold the vector index (about 0.6 KiB "
        "per chunk at 384 dimensions: 60 MiB at 100k chunks, 600 MiB at 1M) or every query "
        "reads the index from disk again",
    )
    lancedb_keep_versions_s: float = Field(
        60.0,
        ge=0,
        description="embedded store: each compaction deletes table versions older than "
        "this (and than twice the store's read_consistency). LanceDB's own default keeps "
        "them 7 days: a busy event log then grew to 40 times its rows on disk, and finding "
        "its latest version, which every read does, took 9.7 ms instead of 0.4",
    )
    malloc_mmap_threshold_kib: int | None = Field(
        1024,
        ge=1,
        le=32 * 1024,
        description="embedded store: glibc serves allocations of this many KiB or more "
        "with their own mmap, at a fixed threshold, set when the store opens. glibc's "
        "self-adjusting threshold left LanceDB's freed write buffers fragmenting the heap, "
        "and a process that writes steadily grew without limit (None = leave malloc "
        "alone; MALLOC_MMAP_THRESHOLD_ in the environment always wins). The price is on "
        "big reads, whose buffers are mapped afresh each time: reading a 10,000-event "
        "log's vectors took 47 ms against 15 with glibc's own threshold, so a process "
        "that rebuilds many profiles and writes little may prefer None",
    )
    malloc_arena_max: int | None = Field(
        None,
        ge=1,
        description="embedded store: cap glibc malloc arenas at this many when the store "
        "opens (None = glibc's default, 8 per core; MALLOC_ARENA_MAX in the environment "
        "always wins). Halves write-path growth on its own; little on top of the fixed "
        "mmap threshold",
    )
    degraded_fallback_path: Path | None = Field(
        None,
        description="backend weaviate with degraded_mode: a local LanceDB replica of the "
        "documents (written on every ingest) that serves searches while the cluster is down",
    )

    # Privacy
    audit_path: Path | None = Field(
        None, description="JSON-lines audit log of retrievals (None: no audit log)"
    )
    audit_include_query: bool = Field(False, description="write query texts into the audit log")
    retention_audit_days: float | None = Field(
        None, gt=0, description="audit entries older than this are purged by apply_retention"
    )
    retention_events_days: float | None = Field(
        None, gt=0, description="events older than this are purged by apply_retention"
    )
    retention_turns_days: float | None = Field(
        None, gt=0, description="session turns older than this are purged by apply_retention"
    )
    redact_pii: bool = Field(
        False, description="redact PII from user-owned text before storing (extra 'pii')"
    )
    pii_kinds: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "SECRET")
    encryption_key_file: Path | None = Field(
        None,
        description="seal user-owned records with AES-GCM; one base64 key per line, current "
        "first (extra 'crypto'; docs/privacy.md)",
    )
    encrypt_owned_chunks: bool = Field(
        True,
        description="with encryption, also seal memories' text (then found by vector, not BM25)",
    )
    show_progress: bool | None = Field(None, description="progress bars; None = only on a terminal")
