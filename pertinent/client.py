"""`Pertinent`: the one object users hold. It wires the embedder, the store, the
user and session states, the pipeline and the packer, and validates input once,
here, so the stages below can trust their arguments.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from pertinent.config import Settings
from pertinent.embeddings import (
    CachedQueryEmbedder,
    Embedder,
    SentenceTransformerEmbedder,
    check_vector,
)
from pertinent.errors import (
    ConfigurationError,
    ConsentWithheld,
    EmbeddingModelMismatch,
    EmptyQuery,
    InvalidInput,
    PartialWrite,
    QueryTooLong,
    StoreUnavailable,
    UnknownItem,
)
from pertinent.ingest import Chunker, normalize_acl, to_documents
from pertinent.memory.profiles import ProfileView, UserProfile
from pertinent.memory.sessions import SessionState, SessionView
from pertinent.privacy.audit import AuditLog
from pertinent.privacy.encryption import KeyProvider, RotationReport
from pertinent.privacy.redaction import Redactor
from pertinent.prompts.packing import pack
from pertinent.prompts.tokenizers import tokenizer_for
from pertinent.retrievers.pipeline import StageTimes, gather_candidates, keyword_depth, rank
from pertinent.retrievers.rerank import Reranker
from pertinent.retrievers.rescoring import Candidate, minmax
from pertinent.stores.base import SearchFilter, Store, StoredEvent, StoredTurn
from pertinent.stores.fusion import start_hybrid_search
from pertinent.stores.resilience import LRUDict, ReplicatedStore
from pertinent.types import (
    Budget,
    Chunk,
    Event,
    PackedContext,
    Result,
    Turn,
    Vector,
    as_utc,
    check_text,
    utcnow,
)
from pertinent.versions import (
    ActiveVersion,
    ReembedReport,
    Registry,
    VersionHome,
    VersionPin,
    home_for,
    pinned,
)

__all__ = ["Consent", "ForgetReceipt", "IngestReport", "Pertinent", "RetentionReport", "open"]

_NEGATIVE_KINDS = frozenset({"reject", "dislike", "skip"})

_MAX_QUERY_CHARS = 100_000
_NO_PROFILE = ProfileView(None, None, 0.0, 0.0, 0.0)
_NO_SESSION = SessionView(vector=None, gate=0.0, turns=0)
_LOCK_STRIPES = 1024


def _lancedb_store(path: Path, emb: Embedder, s: Settings) -> Store:
    """The embedded store at `path`, with the settings' cache and malloc bounds (the
    store itself, and the local replica of a Weaviate cluster)."""
    from pertinent.stores.lancedb import LanceDBStore

    kib = s.malloc_mmap_threshold_kib
    return LanceDBStore(
        path,
        model_id=emb.model_id,
        dim=emb.dim,
        cache_bytes=s.lancedb_cache_mib << 20,
        index_cache_bytes=s.lancedb_index_cache_mib << 20,
        log_cache_bytes=s.lancedb_log_cache_mib << 20,
        malloc_mmap_threshold=None if kib is None else kib << 10,
        malloc_arena_max=s.malloc_arena_max,
        keep_versions=timedelta(seconds=s.lancedb_keep_versions_s),
    )


def _optimize(store: object, seen: set[int]) -> int:
    """Run `optimize` on every store under `store` that has one. Looked up on the class:
    `EncryptedStore.__getattr__` forwards any name to the store it wraps, which is
    reached through `inner` anyway."""
    if id(store) in seen:
        return 0
    seen.add(id(store))
    own = getattr(type(store), "optimize", None)
    if callable(own):
        own(store)
        return 1
    parts = vars(store) if hasattr(store, "__dict__") else {}
    return sum(
        _optimize(parts[name], seen) for name in ("inner", "primary", "replica") if name in parts
    )


def _new_ids(n: int) -> list[str]:
    """n random 128-bit hex ids from one `os.urandom` call: uuid4() per event was 10%
    of a batched `record`."""
    raw = os.urandom(16 * n).hex()
    return [raw[32 * i : 32 * i + 32] for i in range(n)]


@dataclass(frozen=True)
class IngestReport:
    documents: int
    chunks: int
    doc_ids: tuple[str, ...]


@dataclass(frozen=True)
class ForgetReceipt:
    """What `forget_user` deleted, for the audit trail. Counts are 0 on a repeat call."""

    user_id: str
    deleted: Mapping[str, int]
    at: datetime
    caches_cleared: tuple[str, ...] = field(default=())

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


@dataclass(frozen=True)
class Consent:
    """What a user allows. Opting out of personalization makes every retrieval plain
    hybrid search and stores no events or session turns; opting out of memory refuses
    user-owned documents (the long-term memory)."""

    personalization: bool = True
    memory: bool = True


@dataclass(frozen=True)
class RetentionReport:
    """What `apply_retention` purged: rows per log, the cut-off times, when."""

    deleted: Mapping[str, int]
    cutoffs: Mapping[str, datetime]
    at: datetime


_CONSENT_TTL_S = 5.0


def _check_id(value: str | None, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string, got {value!r}.")
    if "\x00" in value:
        raise InvalidInput(f"{what} may not contain NUL characters.")
    return check_text(value, what)


class Pertinent:
    """Personalized retrieval over one store.

    Thread-safe: each user's profile and each session has its own lock; the store
    handles concurrent writers. Async methods run the same code off the event loop.
    """

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        settings: Settings,
        *,
        reranker: Reranker | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        # The active embedding version: store, embedder and profile/session caches, read
        # through the properties below; a call pins it per thread (pertinent/versions.py).
        self._pin = VersionPin()
        self._active = ActiveVersion(None, store, embedder)
        self._other_versions: dict[str, ActiveVersion] = {}
        self._version_lock = threading.Lock()
        self._versions_home: VersionHome | None = None  # where the registry lives (lazy)
        self._home_lock = threading.Lock()
        self.store = store
        self.redactor = redactor
        self.redaction_counts: Counter[str] = Counter()
        self._consents: dict[str, tuple[float, Consent]] = LRUDict(settings.profile_cache_size)
        self.audit: AuditLog | None = None
        if settings.audit_path is not None:
            self.audit = AuditLog(settings.audit_path, include_query=settings.audit_include_query)
        self.embedder = embedder
        self.settings = settings
        self.reranker = reranker
        self.last_times: StageTimes | None = None
        # Why the last retrieval was served degraded (Settings.degraded_mode); () if not.
        self.last_degraded: tuple[str, ...] = ()
        self._chunker = Chunker(
            embedder.count_tokens,
            chunk_tokens=min(settings.chunk_tokens, embedder.max_tokens - 2),
            overlap=settings.chunk_overlap,
        )
        # Bounded (Settings.profile_cache_size, session_cache_size): rebuilt from the logs.
        self._profiles: dict[str, UserProfile] = LRUDict(settings.profile_cache_size)
        self._sessions: dict[tuple[str, str], SessionState] = LRUDict(settings.session_cache_size)
        # A fixed set of lock stripes, not one lock per user ever seen (unbounded); no code
        # path holds two of them at once, and they are re-entrant should one ever nest.
        self._locks = [threading.RLock() for _ in range(_LOCK_STRIPES)]
        self._locks_guard = threading.Lock()
        # Each retrieve hands the executor its hybrid search and its user-state reads;
        # Python's default size (cores + 4) keeps concurrent retrieves from queueing.
        self._executor = ThreadPoolExecutor(thread_name_prefix="pertinent")

    # ------------------------------------------------------------------ lifecycle

    def optimize(self) -> int:
        """Bring the stores' indexes up to date and merge their small files; returns how
        many stores had such upkeep to do.

        Call it after a bulk ingest, and now and then on a store that is re-ingested
        often. An ingest keeps the embedded store's indexes usable but not tidy: its
        newest rows are searched exactly until they are a quarter of the vector index,
        and rows replaced by a re-ingest stay in their files, hidden. A call that
        rebuilds the vector index takes about a minute per 100,000 chunks on two cores
        (746 s at 1M, docs/benchmarks.md). Weaviate indexes as it writes and has nothing
        to do here; wrappers (encryption, circuit breaker, a local replica) are looked
        through.
        """
        return _optimize(self.store, set())

    def close(self) -> None:
        # Waits for reads in flight, so no thread of this client outlives `close`.
        self._executor.shutdown(wait=True)
        self.store.close()
        for version in self._other_versions.values():  # kept open for rollback
            version.store.close()
        if self._versions_home is not None:
            self._versions_home.close()

    def __enter__(self) -> Pertinent:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ versions

    @property
    def store(self) -> Store:
        """The active version's store (the one pinned by the call this thread is in)."""
        return self._pin.current(self._active).store

    @store.setter
    def store(self, value: Store) -> None:
        self._pin.current(self._active).store = value

    @property
    def embedder(self) -> Embedder:
        """The active version's embedder: queries and stored vectors always agree."""
        return self._pin.current(self._active).embedder

    @embedder.setter
    def embedder(self, value: Embedder) -> None:
        self._pin.current(self._active).embedder = value

    @property
    def _profiles(self) -> dict[str, UserProfile]:
        return self._pin.current(self._active).profiles

    @_profiles.setter
    def _profiles(self, value: dict[str, UserProfile]) -> None:
        self._pin.current(self._active).profiles = value

    @property
    def _sessions(self) -> dict[tuple[str, str], SessionState]:
        return self._pin.current(self._active).sessions

    @_sessions.setter
    def _sessions(self, value: dict[tuple[str, str], SessionState]) -> None:
        self._pin.current(self._active).sessions = value

    # ------------------------------------------------------------------ consent

    def set_consent(
        self, user_id: str, *, personalization: bool | None = None, memory: bool | None = None
    ) -> Consent:
        """Record what the user allows; persisted in the store, honoured by every path.

        Opting out does not delete what is stored: call `forget_user` for that.
        """
        _check_id(user_id, "user_id")
        current = self.consent(user_id)
        new = Consent(
            personalization=current.personalization if personalization is None else personalization,
            memory=current.memory if memory is None else memory,
        )
        stored = dict(self.store.get_user_settings(user_id) or {})
        stored["consent"] = {"personalization": new.personalization, "memory": new.memory}
        self.store.put_user_settings(user_id, stored)
        self._consents[user_id] = (time.monotonic(), new)
        return new

    def consent(self, user_id: str) -> Consent:
        """The user's consent; cached for a few seconds so the hot path does not read the
        store on every call (another process's change is seen within 5 s)."""
        cached = self._consents.get(user_id)
        if cached is not None and time.monotonic() - cached[0] < _CONSENT_TTL_S:
            return cached[1]
        raw = (self.store.get_user_settings(user_id) or {}).get("consent") or {}
        value = Consent(
            personalization=bool(raw.get("personalization", True)),
            memory=bool(raw.get("memory", True)),
        )
        self._consents[user_id] = (time.monotonic(), value)
        return value

    # ------------------------------------------------------------------ retention

    def apply_retention(self, now: datetime | None = None) -> RetentionReport:
        """Purge events and session turns older than the configured windows
        (`retention_events_days`, `retention_turns_days`; None keeps forever), then drop
        cached profiles and sessions so they are refolded from what remains."""
        at = as_utc(now) if now else utcnow()
        windows = {
            "events": self.settings.retention_events_days,
            "turns": self.settings.retention_turns_days,
        }
        deleted: dict[str, int] = {}
        cutoffs: dict[str, datetime] = {}
        for log, days in windows.items():
            if days is None:
                continue
            cutoffs[log] = at - timedelta(days=days)
            deleted[log] = self.store.purge_before(log, cutoffs[log])
        self._purge_other_versions(cutoffs)
        days = self.settings.retention_audit_days
        if self.audit is not None and days is not None:
            cutoffs["audit"] = at - timedelta(days=days)
            deleted["audit"] = self.audit.purge_before(cutoffs["audit"])
        with self._locks_guard:
            self._profiles.clear()
            self._sessions.clear()
        return RetentionReport(deleted=deleted, cutoffs=cutoffs, at=at)

    def _audit(
        self,
        query: str,
        user_id: str | None,
        session_id: str | None,
        results: Sequence[Result],
        packed: PackedContext | None = None,
    ) -> None:
        if self.audit is None:
            return
        self.audit.record_retrieval(
            user_id=user_id,
            session_id=session_id,
            query=self._redact(query),
            results=results,
            model_id=self.embedder.model_id,
            tokenizer=packed.tokenizer if packed else None,
            token_count=packed.token_count if packed else None,
        )

    def _redact(self, text: str) -> str:
        """User-owned text passes here before it is stored (and so before it can reach an
        LLM through memory or history). Counts are kept; the removed values are not."""
        if self.redactor is None:
            return text
        report = self.redactor.redact(text)
        self.redaction_counts.update(report.counts)
        return report.text

    def _lock(self, key: object) -> threading.RLock:
        return self._locks[hash(key) % _LOCK_STRIPES]

    # ------------------------------------------------------------------ ingest

    def ingest(
        self,
        docs: Any,
        *,
        acl: Sequence[str] = (),
        owner: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        show_progress: bool | None = None,
        batch_chunks: int = 1024,
    ) -> IngestReport:
        """Chunk, embed and store documents; re-ingesting a document id replaces it.

        `docs`: a str (text, never a path), a dict with `text`, a `Document`, a
        `pathlib.Path` to a file or directory (.md/.txt/.rst), or an iterable of those.
        `acl` restricts who may read them (``"role:support"``); `owner` makes them
        private to one user. Chunks are written in batches of whole documents, so a
        document is always replaced in one commit.
        """
        if owner is not None:
            _check_id(owner, "owner")
            if not self.consent(owner).memory:
                raise ConsentWithheld(
                    f"User {owner!r} opted out of long-term memory; their documents are not "
                    "stored. Ingest without owner= for shared documents."
                )
        documents = [
            replace(d, text=self._redact(d.text)) if d.owner is not None else d
            for d in to_documents(docs, acl=acl, owner=owner, metadata=metadata)
        ]
        # An item may name its own owner ({"owner": ...}): the same consent applies.
        for item_owner in sorted({d.owner for d in documents if d.owner is not None}):
            if item_owner != owner and not self.consent(item_owner).memory:
                raise ConsentWithheld(
                    f"User {item_owner!r} opted out of long-term memory; their documents are "
                    "not stored (nothing of this call was written). Drop their items."
                )
        progress = self.settings.show_progress if show_progress is None else show_progress
        from tqdm.auto import tqdm

        total_chunks = 0
        batch: list[Chunk] = []
        bar = tqdm(
            total=len(documents), unit="doc", desc="ingest", disable=progress is False, leave=False
        )
        try:
            pending_docs = 0
            for doc in documents:
                batch.extend(self._chunker.split(doc))
                pending_docs += 1
                if len(batch) >= batch_chunks:
                    total_chunks += self._write_chunks(batch)
                    bar.update(pending_docs)
                    batch, pending_docs = [], 0
            if batch:
                total_chunks += self._write_chunks(batch)
            bar.update(pending_docs)
        finally:
            bar.close()
        return IngestReport(
            documents=len(documents), chunks=total_chunks, doc_ids=tuple(d.id for d in documents)
        )

    @pinned
    def _write_chunks(self, chunks: list[Chunk]) -> int:
        vectors = self.embedder.embed_documents([c.text for c in chunks])
        model_id = self.embedder.model_id
        embedded = [
            Chunk(
                id=c.id,
                doc_id=c.doc_id,
                text=c.text,
                position=c.position,
                metadata=c.metadata,
                acl=c.acl,
                owner=c.owner,
                source=c.source,
                title=c.title,
                model_id=model_id,
                vector=vectors[i],
            )
            for i, c in enumerate(chunks)
        ]
        return self.store.upsert_chunks(embedded)

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        return self.store.delete_documents([_check_id(d, "document id") for d in doc_ids])

    # ------------------------------------------------------------------ events

    @pinned
    def record(
        self,
        user_id: str,
        events: Event | Iterable[Event],
        *,
        text_vectors: Mapping[str, Vector] | None = None,
    ) -> int:
        """Append events to the user's log and fold them into the profile.

        Nothing is written unless every event is valid (an unknown item id with no
        text raises `UnknownItem` before any write). `text_vectors` passes embeddings
        the caller already has for event texts, so they are not computed twice.
        """
        _check_id(user_id, "user_id")
        batch = [events] if isinstance(events, Event) else list(events)
        if not batch:
            return 0
        if not self.consent(user_id).personalization:
            for e in batch:  # still validate, so callers learn of bad input either way
                if not isinstance(e, Event):
                    raise InvalidInput(
                        f"record() takes pertinent.Event objects, got {type(e).__name__}."
                    )
            return 0  # opted out: nothing about this user is logged
        for e in batch:
            if not isinstance(e, Event):
                raise InvalidInput(
                    f"record() takes pertinent.Event objects, got {type(e).__name__}."
                )
        if self.redactor is not None:
            redacted = []
            for e in batch:
                clean = self._redact(e.text) if e.text else e.text
                redacted.append(replace(e, text=clean) if clean != e.text else e)
            # A vector the caller computed from raw text would carry what was removed.
            kept = {e.text for e in redacted}
            text_vectors = {t: v for t, v in (text_vectors or {}).items() if t in kept}
            batch = redacted
        item_ids = sorted({e.item_id for e in batch if e.item_id})
        items = self.store.get_vectors(item_ids, user_id=user_id)
        known = {
            text: check_vector(v, self.embedder.dim, f"text_vectors entry {text[:40]!r}")
            for text, v in (text_vectors or {}).items()
        }
        texts = sorted(
            {
                e.text
                for e in batch
                if (not e.item_id or e.item_id not in items) and e.text and e.text not in known
            }
        )
        if texts:
            known.update(zip(texts, self.embedder.embed_documents(texts), strict=True))
        now = utcnow()
        model_id = self.embedder.model_id
        ids = _new_ids(len(batch))
        weights: dict[tuple[str, float | None], float] = {}  # a batch has few distinct ones
        vectors: list[Vector] = []
        for e in batch:
            found = items.get(e.item_id) if e.item_id else None
            if found is None and e.text:
                found = known.get(e.text)
            if found is None:
                raise UnknownItem(
                    f"Event {e.kind!r} names item {e.item_id!r}, which is not in the store (or not "
                    "visible to this user), and has no text to embed. Pass a chunk id from a "
                    "result (`result.id`) or add text=."
                )
            vectors.append(found)
        # One matrix for the log and the profile; each stored event holds a row of it.
        matrix = np.array(vectors, dtype=np.float32)
        stored: list[StoredEvent] = []
        for n, e in enumerate(batch):
            weight = weights.get((e.kind, e.weight))
            if weight is None:
                weight = weights[(e.kind, e.weight)] = self._weight(e)
            stored.append(
                StoredEvent(
                    id=ids[n],
                    user_id=user_id,
                    kind=e.kind,
                    weight=weight,
                    timestamp=e.timestamp or now,
                    item_id=e.item_id,
                    text=e.text,
                    session_id=e.session_id,
                    model_id=model_id,
                    vector=matrix[n],
                )
            )
        with self._lock(("user", user_id)):
            self.store.append_events(stored)
            profile = self._profiles.get(user_id)
            if profile is not None:
                profile.add_many(
                    matrix,
                    np.array([s.weight for s in stored], dtype=np.float64),
                    np.array([s.timestamp.timestamp() for s in stored], dtype=np.float64),
                )
        return len(stored)

    def _weight(self, event: Event) -> float:
        default = self.settings.event_weights.weight(event.kind)
        magnitude = abs(event.weight) if event.weight is not None else abs(default)
        return -magnitude if event.kind in _NEGATIVE_KINDS else magnitude

    def _user_profile(self, user_id: str) -> UserProfile:
        with self._lock(("user", user_id)):
            profile = self._profiles.get(user_id)
            if profile is None:
                log = self.store.read_event_arrays(user_id)
                s = self.settings
                profile = UserProfile.from_arrays(
                    self.embedder.dim,
                    log.vectors,
                    log.weights,
                    log.times,
                    half_life_days=s.half_life_days,
                    interests=s.interests,
                    interest_threshold=s.interest_threshold,
                )
                self._profiles[user_id] = profile
            return profile

    @pinned
    def profile(self, user_id: str | None, now: datetime | None = None) -> ProfileView:
        """The user's profile as of `now`; an unknown or absent user is a cold profile."""
        if user_id is None:
            return _NO_PROFILE
        _check_id(user_id, "user_id")
        if not self.consent(user_id).personalization:
            return _NO_PROFILE
        return self._user_profile(user_id).view(
            as_utc(now) if now else utcnow(), self.settings.confidence_n0
        )

    # ------------------------------------------------------------------ sessions

    def _session_state(self, user_id: str, session_id: str) -> SessionState:
        key = (user_id, session_id)
        with self._lock(("session", key)):
            state = self._sessions.get(key)
            if state is None:
                state = SessionState(
                    self.embedder.dim, half_life_turns=self.settings.session_half_life_turns
                )
                for t in self.store.read_turns(user_id, session_id):
                    state.add(t.vector)
                self._sessions[key] = state
            return state

    @pinned
    def add_turn(
        self,
        user_id: str,
        session_id: str,
        role: str,
        text: str,
        *,
        vector: Vector | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        """Add a conversation turn (the user's or the assistant's) to the session."""
        _check_id(user_id, "user_id")
        _check_id(session_id, "session_id")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("A turn needs non-empty text.")
        check_text(text, "The turn")
        if not self.consent(user_id).personalization:
            return  # opted out: the conversation is not kept
        clean = self._redact(text)
        if clean != text:
            text, vector = clean, None  # the raw text's vector would carry what was removed
        vec = vector if vector is not None else self.embedder.embed_documents([text])[0]
        state = self._session_state(user_id, session_id)
        with self._lock(("session", (user_id, session_id))):
            self.store.append_turns(
                [
                    StoredTurn(
                        id=uuid.uuid4().hex,
                        user_id=user_id,
                        session_id=session_id,
                        role=role,
                        text=text,
                        timestamp=as_utc(timestamp) if timestamp else utcnow(),
                        model_id=self.embedder.model_id,
                        vector=np.asarray(vec, dtype=np.float32),
                    )
                ]
            )
            state.add(np.asarray(vec, dtype=np.float32))

    @pinned
    def session(self, user_id: str | None, session_id: str | None) -> SessionView:
        if user_id is None or session_id is None or not self.consent(user_id).personalization:
            return _NO_SESSION
        return self._session_state(user_id, session_id).view(self.settings.session_n0)

    @pinned
    def history(self, user_id: str, session_id: str) -> list[Turn]:
        return [
            Turn(role=t.role, text=t.text, timestamp=t.timestamp)
            for t in self.store.read_turns(
                _check_id(user_id, "user_id"), _check_id(session_id, "session_id")
            )
        ]

    # ------------------------------------------------------------------ retrieval

    def _check_request(
        self, query: str, user_id: str | None, session_id: str | None, top_k: int | None
    ) -> int:
        """Validate what every retrieval entry point takes; returns the effective top_k."""
        if not isinstance(query, str) or not query.strip():
            raise EmptyQuery("The query is empty; pass the user's question as text.")
        check_text(query, "The query")
        if len(query) > _MAX_QUERY_CHARS:
            raise QueryTooLong(
                f"The query has {len(query)} characters; pass the question, not a document "
                "(put conversation context in session turns)."
            )
        if user_id is not None:
            _check_id(user_id, "user_id")
        if session_id is not None:
            _check_id(session_id, "session_id")
            if user_id is None:
                raise InvalidInput("session_id needs a user_id: sessions belong to a user.")
        k = top_k if top_k is not None else self.settings.top_k
        if not isinstance(k, int) or k <= 0:
            raise InvalidInput(f"top_k must be a positive int, got {k!r}.")
        return k

    @pinned
    def personalize(
        self,
        query: str,
        items: Sequence[Chunk],
        *,
        scores: Sequence[float] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        top_k: int | None = None,
        now: datetime | None = None,
    ) -> list[Result]:
        """Re-score candidates that came from elsewhere (another retriever, a search API)
        with this user's profile and session, then MMR; the store is not searched.

        `scores` are the source's relevance scores (any scale; min-max normalised into the
        hybrid term); without them the query cosine is used. Items without a vector are
        embedded here. This is what the LlamaIndex and LangChain re-rankers call.
        """
        k = self._check_request(query, user_id, session_id, top_k if top_k else len(items) or 1)
        if scores is not None and len(scores) != len(items):
            raise InvalidInput(f"{len(scores)} scores for {len(items)} items; pass one per item.")
        if not items:
            return []
        qvec = self.embedder.embed_query(query)
        missing = [i for i, c in enumerate(items) if c.vector is None]
        new_vecs = self.embedder.embed_documents([items[i].text for i in missing])
        vectors = [
            np.asarray(c.vector, dtype=np.float32) if c.vector is not None else None for c in items
        ]
        for j, i in enumerate(missing):
            vectors[i] = new_vecs[j]
        matrix = np.stack(
            [
                check_vector(v, self.embedder.dim, f"item {items[i].id!r} vector")
                for i, v in enumerate(vectors)
            ]
        )
        cos = matrix @ qvec
        base = np.asarray(scores, dtype=np.float64) if scores is not None else cos
        if not np.all(np.isfinite(base)):
            raise InvalidInput("scores contain NaN or infinity; pass finite relevance scores.")
        hybrid = minmax(base)
        candidates = [
            Candidate(
                chunk=replace(c, vector=matrix[i]),
                bm25=0.0,
                vector=float(cos[i]),
                hybrid=float(hybrid[i]),
                found_by=("input",),
            )
            for i, c in enumerate(items)
        ]
        results = rank(
            query,
            candidates,
            self.profile(user_id, now),
            self.session(user_id, session_id),
            self.settings,
            top_k=k,
            reranker=self.reranker,
        )
        self._audit(query, user_id, session_id, results)
        return results

    @pinned
    def search(
        self,
        query: str,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        principals: Sequence[str] = (),
        top_k: int | None = None,
        exclude_ids: Sequence[str] = (),
        now: datetime | None = None,
        remember: bool = False,
    ) -> list[Result]:
        """Ranked, explained results without packing. With `remember`, the query is
        recorded as the user's `query` event (not as a session turn: a tool's search is
        not something the user said)."""
        results, qvec = self._search(
            query, user_id, session_id, principals, top_k, exclude_ids, now
        )
        self._audit(query, user_id, session_id, results)
        if remember and user_id is not None:
            self.record(
                user_id,
                Event(kind="query", text=query, session_id=session_id, timestamp=now),
                text_vectors={query: qvec},
            )
        return results

    def fit(self, results: Sequence[Result], budget: Budget) -> list[Result]:
        """The results whose passages fit `budget` whole, in rank order: the packer's
        choice (near-duplicates skipped, exact token counts) with cutting disabled, for
        frameworks that show each passage as a unit (nodes, documents)."""
        packed = pack(
            results,
            budget,
            near_duplicate_cosine=self.settings.near_duplicate_cosine,
            min_partial_tokens=budget.max_tokens + 1,
            tokenizer=tokenizer_for(budget.model),
        )
        kept = {c.chunk_id for c in packed.citations}
        return [r for r in results if r.id in kept]

    async def apersonalize(self, query: str, items: Sequence[Chunk], **kwargs: Any) -> list[Result]:
        return await asyncio.to_thread(lambda: self.personalize(query, items, **kwargs))

    @pinned
    def _search(
        self,
        query: str,
        user_id: str | None,
        session_id: str | None,
        principals: Sequence[str],
        top_k: int | None,
        exclude_ids: Sequence[str],
        now: datetime | None,
    ) -> tuple[list[Result], Vector]:
        k = self._check_request(query, user_id, session_id, top_k)
        times = StageTimes()
        # The user's state (consent, profile, session) is read from the store while the
        # query is embedded and searched: for a user not in the caches those reads cost
        # as much as the search, and nothing but the user leg and re-scoring needs them.
        state: Future[tuple[ProfileView, SessionView]] | None = None
        if user_id is not None:
            state = self._executor.submit(
                self._user_state, self._pin.current(self._active), user_id, session_id, now
            )
        where = SearchFilter(
            user_id=user_id,
            principals=normalize_acl(principals) + ((f"user:{user_id}",) if user_id else ()),
            exclude_ids=tuple(exclude_ids),
        )
        # The keyword leg needs no vector: a store that runs it alone (the embedded one)
        # runs it while the query is embedded (pertinent/stores/fusion.py).
        store = self.store
        pending = start_hybrid_search(
            store, query, k=keyword_depth(self.settings, personal=user_id is not None), where=where
        )
        t0 = time.perf_counter()
        try:
            qvec = self.embedder.embed_query(query)
        except BaseException:
            pending.cancel()
            raise
        times.add("embed_query", t0)
        degraded: list[str] = []

        resolved: list[tuple[ProfileView, SessionView]] = []

        def user_state() -> tuple[ProfileView, SessionView]:
            if not resolved:
                try:
                    resolved.append(state.result() if state else (_NO_PROFILE, _NO_SESSION))
                except StoreUnavailable as exc:
                    if not self.settings.degraded_mode:
                        raise
                    # Declared, never silent: the caller sees why this answer is not personal.
                    degraded.append(f"not personalized: user state unavailable ({exc})")
                    resolved.append((_NO_PROFILE, _NO_SESSION))
            return resolved[0]

        try:
            candidates = gather_candidates(
                store,
                query,
                qvec,
                lambda: user_state()[0],
                self.settings,
                where,
                times,
                self._executor,
                # Worth waiting for when the profile is in memory: what is left to read
                # (consent, session) is at most two small lookups.
                profile_ready=lambda: state is None or state.done() or user_id in self._profiles,
                pending=pending,
            )
        except StoreUnavailable as exc:
            replica = self._replica()
            if replica is None:
                raise
            # The replica holds the documents as of the last ingest through this client;
            # the caller is told the answer came from it, and why.
            degraded.append(
                f"served from the local replica at {replica[1]}, which may lag the "
                f"cluster: the cluster is unavailable ({exc})"
            )
            candidates = gather_candidates(
                replica[0], query, qvec, lambda: user_state()[0], self.settings, where, times, None
            )
        profile, session = user_state()
        results = rank(
            query,
            candidates,
            profile,
            session,
            self.settings,
            top_k=k,
            reranker=self.reranker,
            times=times,
        )
        self.last_times = times
        self.last_degraded = tuple(degraded)
        return results, qvec

    def _user_state(
        self,
        version: ActiveVersion,
        user_id: str,
        session_id: str | None,
        now: datetime | None,
    ) -> tuple[ProfileView, SessionView]:
        """Profile and session, read in a worker thread pinned to the caller's embedding
        version (a query never mixes versions, even across threads)."""
        with self._pin.pin(lambda: version):
            return self.profile(user_id, now), self.session(user_id, session_id)

    def _replica(self) -> tuple[Store, str] | None:
        """The local replica degraded mode may serve from (Settings.degraded_fallback_path),
        and its name. With encryption the replica holds sealed records like the cluster
        (sealing happens above the replication): it is read through the same sealer."""
        if not self.settings.degraded_mode:
            return None
        store = self.store
        if isinstance(store, ReplicatedStore):
            return store.replica, store.replica_name
        from pertinent.privacy.encryption import EncryptedStore

        if isinstance(store, EncryptedStore) and isinstance(store.inner, ReplicatedStore):
            rep = store.inner
            sealed = EncryptedStore(
                rep.replica, store.sealer, seal_owned_chunks=store.seal_owned_chunks
            )
            return sealed, rep.replica_name
        return None

    @pinned
    def retrieve(
        self,
        query: str,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        budget: Budget | None = None,
        principals: Sequence[str] = (),
        instructions: str = "",
        memories: Sequence[str] = (),
        include_history: bool = False,
        top_k: int | None = None,
        exclude_ids: Sequence[str] = (),
        remember: bool = True,
        now: datetime | None = None,
    ) -> PackedContext:
        """The context to put in the prompt for this user, in this conversation.

        `principals` are the caller's groups for ACLs (``"role:support"``; the user's
        own ``"user:<id>"`` is added). An unknown user gets plain hybrid search. With
        `remember` (default), the query becomes a session turn and a `query` event
        *after* ranking, so it personalizes the next turn, not this one.
        """
        budget = budget or Budget(self.settings.budget_model, self.settings.budget_tokens)
        results, qvec = self._search(
            query, user_id, session_id, principals, top_k, exclude_ids, now
        )
        history: list[Turn] = []
        if include_history and user_id and session_id:
            history = self.history(user_id, session_id)
        t0 = time.perf_counter()
        packed = pack(
            results,
            budget,
            instructions=instructions,
            memories=memories,
            history=history,
            near_duplicate_cosine=self.settings.near_duplicate_cosine,
            min_partial_tokens=self.settings.min_partial_tokens,
            tokenizer=tokenizer_for(budget.model),
        )
        if self.last_times is not None:
            self.last_times.add("pack", t0)
        self._audit(query, user_id, session_id, results, packed)
        degraded = list(self.last_degraded)
        if remember and user_id is not None:
            t0 = time.perf_counter()
            try:
                if session_id is not None:
                    self.add_turn(user_id, session_id, "user", query, vector=qvec)
                self.record(
                    user_id,
                    Event(kind="query", text=query, session_id=session_id, timestamp=now),
                    text_vectors={query: qvec},
                )
            except (StoreUnavailable, PartialWrite) as exc:
                if not self.settings.degraded_mode:
                    raise
                degraded.append(f"not remembered: the turn could not be stored ({exc})")
            if self.last_times is not None:
                self.last_times.add("remember", t0)
        if degraded:
            packed = replace(packed, degraded=tuple(degraded))
            self.last_degraded = tuple(degraded)
        return packed

    # ------------------------------------------------------------------ async

    async def aretrieve(self, query: str, **kwargs: Any) -> PackedContext:
        """`retrieve` off the event loop (the model and LanceDB calls are blocking)."""
        return await asyncio.to_thread(lambda: self.retrieve(query, **kwargs))

    async def asearch(self, query: str, **kwargs: Any) -> list[Result]:
        return await asyncio.to_thread(lambda: self.search(query, **kwargs))

    async def arecord(self, user_id: str, events: Event | Iterable[Event]) -> int:
        return await asyncio.to_thread(self.record, user_id, events)

    async def aingest(self, docs: Any, **kwargs: Any) -> IngestReport:
        return await asyncio.to_thread(lambda: self.ingest(docs, **kwargs))

    # ------------------------------------------------------------------ privacy

    def forget_user(self, user_id: str) -> ForgetReceipt:
        """Delete everything the user owns: events, session turns, owned chunks, the
        cached profile and sessions, and the query-embedding cache (it holds their
        questions). Idempotent: a second call deletes nothing and says so."""
        _check_id(user_id, "user_id")
        with self._lock(("user", user_id)):
            deleted = dict(self.store.delete_user(user_id))
            had_profile = self._profiles.pop(user_id, None) is not None
            self._consents.pop(user_id, None)
            dropped = [k for k in self._sessions if k[0] == user_id]
            for k in dropped:
                del self._sessions[k]
        cleared = []
        if isinstance(self.embedder, CachedQueryEmbedder):
            self.embedder.clear()
            cleared.append("query_embeddings")
        deleted["cached_profile"] = int(had_profile)
        deleted["cached_sessions"] = len(dropped)
        deleted.update(self._forget_in_other_versions(user_id))
        if self.audit is not None:
            deleted["audit_entries"] = self.audit.forget(user_id)
        return ForgetReceipt(
            user_id=user_id, deleted=deleted, at=utcnow(), caches_cleared=tuple(cleared)
        )

    # ------------------------------------------------------------------ encryption

    def rotate_key(self, new_key: bytes | KeyProvider) -> RotationReport:
        """Re-seal every user-owned record (every embedding version) with `new_key`.

        Records sealed with an older key are opened with it first, so the old key must
        still be held (the one the store was opened with). Idempotent and resumable: a
        repeat or an interrupted-then-repeated call re-seals only what is left; reopen an
        interrupted store with ``encryption_key=Keyring(new_key, old_key)``. Afterwards
        the store opens with `new_key` only (docs/privacy.md).
        """
        from pertinent.privacy.encryption import EncryptedStore, rotating
        from pertinent.versions import each_inactive_store

        with self._version_lock:
            store = rotating(self.store, new_key)
            report = store.reseal()
            for version in self._other_versions.values():
                if isinstance(version.store, EncryptedStore):
                    version.store.sealer = store.sealer
            for other in each_inactive_store(self._home(), self._active.id):
                sealed = EncryptedStore(
                    other, store.sealer, seal_owned_chunks=store.seal_owned_chunks
                )
                sealed.reseal()
        return report

    # ------------------------------------------------------------------ embedding versions

    def embedding_versions(self) -> Registry:
        """The embedding models this store has versions for, and which one is active."""
        from pertinent.versions import _initial

        home = self._home()
        return home.load() or _initial(self._active.embedder, home)

    def _home(self) -> VersionHome:
        """Where this store's embedding versions live: its directory (LanceDB) or its
        base collection prefix (Weaviate)."""
        with self._home_lock:
            if self._versions_home is None:
                self._versions_home = home_for(self.settings)
            return self._versions_home

    @staticmethod
    def _check_versionable(like: Store) -> None:
        from pertinent.privacy.encryption import EncryptedStore

        inner = like.inner if isinstance(like, EncryptedStore) else like
        if isinstance(inner, ReplicatedStore):
            raise ConfigurationError(
                "Embedding versions cannot be built or switched with a degraded-mode replica "
                "(degraded_fallback_path): the replica holds one model's vectors. Open the "
                "store without it to re-embed or roll back; reopened afterwards, a newer "
                "version keeps its own replica under <degraded_fallback_path>/versions/<id>."
            )

    def _like_active(self, raw: Store, like: Store) -> Store:
        """`raw` (a version's store) behind the same wrappers as `like`: the circuit
        breaker of a cluster, and encryption with the same sealer."""
        from pertinent.privacy.encryption import EncryptedStore
        from pertinent.stores.resilience import CircuitBreaker, ResilientStore

        inner = like.inner if isinstance(like, EncryptedStore) else like
        store = raw
        if isinstance(inner, ResilientStore):
            s = self.settings
            breaker = CircuitBreaker(threshold=s.breaker_threshold, reset_after=s.breaker_reset_s)
            store = ResilientStore(store, breaker, name=inner.name)
        if isinstance(like, EncryptedStore):
            store = EncryptedStore(store, like.sealer, seal_owned_chunks=like.seal_owned_chunks)
        return store

    def reembed(self, embedder: Embedder, *, model: str | None = None) -> ReembedReport:
        """Build a new embedding version with `embedder` beside the active one (documents
        from their text, memories, events and session turns re-embedded, profiles
        refolded), then switch to it atomically. `rollback()` switches back. `model`
        records how `open` can load the model by itself (a sentence-transformers path
        or name). Pause writers while it runs: their writes land in the old version."""
        from pertinent.privacy.encryption import EncryptedStore
        from pertinent.versions import build_version, switch

        if self.settings.query_cache_size > 0 and not isinstance(embedder, CachedQueryEmbedder):
            embedder = CachedQueryEmbedder(embedder, self.settings.query_cache_size)
        home = self._home()
        with self._version_lock:
            old = self._active
            enc = old.store if isinstance(old.store, EncryptedStore) else None
            self._check_versionable(old.store)

            def wrap(raw: Store) -> Store:
                return self._like_active(raw, old.store)

            registry, new, report = build_version(
                home, old, embedder, wrap=wrap, opener=enc, model=model
            )
            self._bounded_caches(new)
            old.id = old.id or registry.active
            self._other_versions[old.id] = old
            switch(home, registry, registry.versions[-1].id)
            self._active = new  # one assignment: the next call sees the new version whole
        return report

    def rollback(self, *, embedder: Embedder | None = None) -> str:
        """Switch back to the version that was active before the last switch; returns its
        id. In another process than the re-embed, pass `embedder` unless the version's
        model can be loaded by name. Writes made since the switch stay in the newer
        version (which `rollback` then makes the previous one: roll forward with it)."""
        from pertinent.versions import switch

        home = self._home()
        with self._version_lock:
            registry = home.load()
            if registry is None or registry.previous is None:
                raise InvalidInput(
                    "There is no previous embedding version to roll back to (the store was "
                    "never re-embedded)."
                )
            target = registry.get(registry.previous)
            current = self._active
            current.id = current.id or registry.active
            version = self._other_versions.pop(target.id, None)
            if version is None or (embedder is not None and embedder is not version.embedder):
                if embedder is None:
                    if target.model is None:
                        raise ConfigurationError(
                            f"Version {target.id} was built with {target.model_id!r}, which "
                            "pertinent cannot load by name; pass rollback(embedder=...)."
                        )
                    embedder = SentenceTransformerEmbedder(
                        target.model, precision=self.settings.embedding_precision
                    )
                if embedder.model_id != target.model_id:
                    raise EmbeddingModelMismatch(
                        f"Version {target.id} holds {target.model_id!r} vectors, not "
                        f"{embedder.model_id!r}; pass the embedder it was built with."
                    )
                self._check_versionable(current.store)
                store = self._like_active(home.open_store(target), current.store)
                version = self._bounded_caches(ActiveVersion(target.id, store, embedder))
            self._other_versions[current.id] = current
            switch(home, registry, target.id)
            self._active = version
        return target.id

    def _bounded_caches(self, version: ActiveVersion) -> ActiveVersion:
        """A new version's profile and session caches, bounded like the first one's."""
        version.profiles = LRUDict(self.settings.profile_cache_size)
        version.sessions = LRUDict(self.settings.session_cache_size)
        return version

    def _forget_in_other_versions(self, user_id: str) -> dict[str, int]:
        """Forgetting reaches every embedding version, not only the active one."""
        from pertinent.versions import each_inactive_store

        n = 0
        for version in self._other_versions.values():
            version.profiles.pop(user_id, None)
            for key in [k for k in version.sessions if k[0] == user_id]:
                del version.sessions[key]
        for other in each_inactive_store(self._home(), self._active.id):
            n += sum(other.delete_user(user_id).values())
        return {"other_versions": n} if n else {}

    def _purge_other_versions(self, cutoffs: Mapping[str, datetime]) -> None:
        from pertinent.versions import each_inactive_store

        for version in self._other_versions.values():
            version.profiles.clear()
            version.sessions.clear()
        for other in each_inactive_store(self._home(), self._active.id):
            for log, cutoff in cutoffs.items():
                other.purge_before(log, cutoff)


def resolve_settings(
    path: str | Path | None = None,
    *,
    settings: Settings | None = None,
    backend: str | None = None,
    url: str | None = None,
    api_key: str | None = None,
    grpc_port: int | None = None,
) -> Settings:
    """`settings` (or ``PERTINENT_*`` env vars) with the arguments `open` takes applied:
    what `open` and the CLI agree a store's place is."""
    from pydantic import SecretStr

    from pertinent.errors import ConfigurationError

    s = settings or Settings()
    update: dict[str, Any] = {}
    if path is not None:
        update["path"] = Path(path)
    if backend is None and url is not None:
        backend = "weaviate"
    if backend is not None:
        if backend not in ("lancedb", "weaviate"):
            raise ConfigurationError(
                f"Unknown backend {backend!r}; use 'lancedb' (embedded) or 'weaviate'."
            )
        update["backend"] = backend
    if url is not None:
        update["weaviate_url"] = url
    if api_key is not None:
        update["weaviate_api_key"] = SecretStr(api_key)
    if grpc_port is not None:
        update["weaviate_grpc_port"] = grpc_port
    return s.model_copy(update=update) if update else s


def open(
    path: str | Path | None = None,
    *,
    settings: Settings | None = None,
    embedder: Embedder | None = None,
    reranker: Reranker | None = None,
    redactor: Redactor | None = None,
    backend: str | None = None,
    url: str | None = None,
    api_key: str | None = None,
    grpc_port: int | None = None,
    encryption_key: bytes | KeyProvider | None = None,
) -> Pertinent:
    """Open (or create) a store. The embedded default: LanceDB under `path` and the
    bundled all-MiniLM-L6-v2 model; nothing is downloaded.

    ``backend="weaviate"`` with `url` (and `api_key`, `grpc_port` when the cluster needs
    them) puts the same data on a Weaviate cluster instead (docs/weaviate.md); a `url`
    alone implies it. Arguments override `settings`, which read ``PERTINENT_*`` env vars.
    `redactor` (or ``Settings(redact_pii=True)``) removes PII from user-owned text before
    it is stored (docs/privacy.md). `encryption_key` (bytes, or a key provider for a KMS;
    or ``Settings.encryption_key_file``) seals user-owned records with AES-GCM; a key the
    store was not written with raises `DecryptionFailed` here (docs/privacy.md).
    """
    from pertinent.errors import ConfigurationError

    s = resolve_settings(
        path, settings=settings, backend=backend, url=url, api_key=api_key, grpc_port=grpc_port
    )
    from pertinent.versions import active_entry

    # The active embedding version picks the model and the store's place (a directory
    # or a collection prefix); the registry is read once here (pertinent/versions.py).
    home = home_for(s)
    try:
        version = active_entry(home)
    finally:
        home.close()  # on Weaviate a connection of its own, reopened only when needed
    if version is not None and embedder is None:
        if version.model is None:
            raise ConfigurationError(
                f"The store's active embedding version {version.id} uses {version.model_id!r}, "
                "which pertinent cannot load by name; pass embedder=, or `pertinent rollback`."
            )
        s = s.model_copy(update={"embedding_model": version.model})
    emb: Embedder = embedder or SentenceTransformerEmbedder(
        s.embedding_model,
        batch_size=s.embedding_batch_size,
        query_threads=s.query_threads,
        document_threads=s.document_threads,
        precision=s.embedding_precision,
    )
    if s.query_cache_size > 0 and not isinstance(emb, CachedQueryEmbedder):
        emb = CachedQueryEmbedder(emb, s.query_cache_size)
    store: Store
    if s.backend == "weaviate":
        from pertinent.stores.weaviate import WeaviateStore

        key = s.weaviate_api_key.get_secret_value() if s.weaviate_api_key else None
        store = WeaviateStore(
            s.weaviate_url,
            model_id=emb.model_id,
            dim=emb.dim,
            api_key=key or None,
            grpc_port=s.weaviate_grpc_port,
            timeout_s=s.weaviate_timeout_s,
            prefix=version.prefix or s.weaviate_collection_prefix
            if version is not None
            else s.weaviate_collection_prefix,
        )
        from pertinent.stores.resilience import CircuitBreaker, ResilientStore

        breaker = CircuitBreaker(threshold=s.breaker_threshold, reset_after=s.breaker_reset_s)
        store = ResilientStore(store, breaker, name=f"Weaviate at {s.weaviate_url}")
        if s.degraded_fallback_path is not None:
            if not s.degraded_mode:
                store.close()
                raise ConfigurationError(
                    "degraded_fallback_path answers from a local replica while the cluster is "
                    "down, which is degraded mode: set degraded_mode=True as well."
                )
            replica_path = s.degraded_fallback_path
            if version is not None and version.id != "v1":  # one model's vectors per replica
                replica_path = replica_path / "versions" / version.id
            replica = _lancedb_store(replica_path, emb, s)
            store = ReplicatedStore(store, replica, str(replica_path))
    else:
        if s.degraded_fallback_path is not None:
            raise ConfigurationError(
                "degraded_fallback_path is a local replica of a Weaviate cluster; the embedded "
                "backend needs none. Remove it or use backend='weaviate'."
            )
        root = version.path(s.path) if version is not None else s.path
        store = _lancedb_store(root, emb, s)
    from pertinent.privacy.encryption import encrypt_store

    store = encrypt_store(store, s, encryption_key)
    if redactor is None and s.redact_pii:
        from pertinent.privacy.redaction import PatternRedactor

        redactor = PatternRedactor(kinds=s.pii_kinds)
    px = Pertinent(store, emb, s, reranker=reranker, redactor=redactor)
    px._active.id = version.id if version is not None else None
    px._versions_home = home
    return px
