"""A circuit breaker around any `Store`.

When a cluster is down, every call otherwise waits for its timeout (seconds) before
failing, on every agent turn. After `threshold` consecutive `StoreUnavailable`
failures the breaker opens: calls fail at once, in microseconds, with a message that
names the store and says when it will be tried again. After `reset_after` seconds one
call is let through (half-open); its success closes the breaker.

Only `StoreUnavailable` counts: bad input or a corrupted store are not outages, and a
`PartialWrite` proves the store answered.

`LRUDict` bounds the client's in-memory caches (profiles, sessions, consents), so a
long-lived process serving many users does not grow without limit.

`ReplicatedStore` keeps a local copy of the documents next to a cluster, so that
degraded mode can answer from it while the cluster is down (and says so).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from pertinent.errors import StoreUnavailable
from pertinent.stores.base import EventArrays, SearchFilter, Store, StoredEvent, StoredTurn
from pertinent.types import Chunk, Hit, Vector

__all__ = ["CircuitBreaker", "LRUDict", "ReplicatedStore", "ResilientStore"]

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class LRUDict(dict[K, V]):
    """A dict that keeps at most `maxsize` entries, dropping the least recently read or
    written. A dict subclass so it drops in where the caches were plain dicts.

    For caches of state that can be rebuilt (a profile is the fold of its event log, a
    session of its turns, a consent of the stored setting): an evicted entry costs one
    store read the next time, never a wrong answer. `get`, writes, `pop`, `del` and
    `clear` are serialized by a lock (so a `pop` cannot be undone by a concurrent `get`).
    """

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        if maxsize <= 0:
            raise ValueError("maxsize must be > 0")
        self.maxsize = maxsize
        self._guard = threading.Lock()

    def get(self, key: K, default: Any = None) -> Any:
        with self._guard:
            if key not in self:
                return default
            value = super().pop(key)
            super().__setitem__(key, value)  # most recent last
            return value

    def pop(self, key: K, *default: Any) -> Any:
        with self._guard:
            return super().pop(key, *default)

    def __delitem__(self, key: K) -> None:
        with self._guard:
            super().__delitem__(key)

    def clear(self) -> None:
        with self._guard:
            super().clear()

    def __setitem__(self, key: K, value: V) -> None:
        with self._guard:
            if key in self:
                super().pop(key)
            super().__setitem__(key, value)
            while len(self) > self.maxsize:
                try:
                    super().pop(next(iter(self)))
                except (KeyError, RuntimeError, StopIteration):  # another thread popped
                    continue


class CircuitBreaker:
    """Thread-safe closed → open → half-open breaker. `clock` is injectable for tests."""

    def __init__(
        self,
        threshold: int = 3,
        reset_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._clock() - self._opened_at >= self.reset_after else "open"

    def before(self) -> float | None:
        """None if the call may go ahead; else the seconds until the next trial."""
        with self._lock:
            if self._opened_at is None:
                return None
            waited = self._clock() - self._opened_at
            if waited >= self.reset_after and not self._trial_running:
                self._trial_running = True  # exactly one trial call while half-open
                return None
            return max(0.0, self.reset_after - waited)

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial_running = False
            if self._failures >= self.threshold or self._opened_at is not None:
                self._opened_at = self._clock()


class ResilientStore:
    """Delegates every `Store` call through a `CircuitBreaker`."""

    def __init__(self, inner: Store, breaker: CircuitBreaker, name: str) -> None:
        self.inner = inner
        self.breaker = breaker
        self.name = name

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        wait = self.breaker.before()
        if wait is not None:
            raise StoreUnavailable(
                f"{self.name} is marked down after {self.breaker.threshold} failed calls in a "
                f"row; {what} was not attempted. Next try in {wait:.1f} s."
            )
        try:
            out = fn()
        except StoreUnavailable:
            self.breaker.failure()
            raise
        self.breaker.success()
        return out

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def upsert_chunks(self, chunks: Sequence[Chunk]) -> int:
        return self._call("upsert", lambda: self.inner.upsert_chunks(chunks))

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        return self._call("delete", lambda: self.inner.delete_documents(doc_ids))

    def get_chunks(self, ids: Sequence[str], *, user_id: str | None = None) -> list[Chunk]:
        return self._call("get_chunks", lambda: self.inner.get_chunks(ids, user_id=user_id))

    def get_vectors(self, ids: Sequence[str], *, user_id: str | None = None) -> dict[str, Vector]:
        return self._call("get_vectors", lambda: self.inner.get_vectors(ids, user_id=user_id))

    def count_chunks(self) -> int:
        return self._call("count", self.inner.count_chunks)

    def document_ids(self) -> list[str]:
        return self._call("document_ids", self.inner.document_ids)

    def hybrid_search(
        self, text: str, vector: Vector, *, k: int, alpha: float, where: SearchFilter
    ) -> list[Hit]:
        return self._call(
            "hybrid search",
            lambda: self.inner.hybrid_search(text, vector, k=k, alpha=alpha, where=where),
        )

    def vector_search(self, vector: Vector, *, k: int, where: SearchFilter) -> list[Hit]:
        return self._call(
            "vector search", lambda: self.inner.vector_search(vector, k=k, where=where)
        )

    def keyword_search(self, text: str, *, k: int, where: SearchFilter) -> list[Hit]:
        return self._call(
            "keyword search", lambda: self.inner.keyword_search(text, k=k, where=where)
        )

    def append_events(self, events: Sequence[StoredEvent]) -> None:
        self._call("append events", lambda: self.inner.append_events(events))

    def read_events(self, user_id: str) -> list[StoredEvent]:
        return self._call("read events", lambda: self.inner.read_events(user_id))

    def read_event_arrays(self, user_id: str) -> EventArrays:
        return self._call("read events", lambda: self.inner.read_event_arrays(user_id))

    def append_turns(self, turns: Sequence[StoredTurn]) -> None:
        self._call("append turns", lambda: self.inner.append_turns(turns))

    def read_turns(self, user_id: str, session_id: str) -> list[StoredTurn]:
        return self._call("read turns", lambda: self.inner.read_turns(user_id, session_id))

    def known_users(self) -> list[str]:
        return self._call("known users", self.inner.known_users)

    def purge_before(self, log: str, cutoff: datetime) -> int:
        return self._call("retention", lambda: self.inner.purge_before(log, cutoff))

    def get_user_settings(self, user_id: str) -> dict[str, Any] | None:
        return self._call("read settings", lambda: self.inner.get_user_settings(user_id))

    def put_user_settings(self, user_id: str, settings: Mapping[str, Any]) -> None:
        self._call("write settings", lambda: self.inner.put_user_settings(user_id, settings))

    def delete_user(self, user_id: str) -> Mapping[str, int]:
        return self._call("forget user", lambda: self.inner.delete_user(user_id))

    def close(self) -> None:
        self.inner.close()


class ReplicatedStore:
    """A primary store (the cluster) plus a local `replica` of its documents.

    Document writes go to the primary first, then to the replica, so the replica never
    holds what the primary refused; a call that fails part-way is repeated whole (writes
    are idempotent). Forgetting a user deletes their owned chunks from the replica first:
    a cluster that is down must not keep a local copy alive. Events, turns and settings
    live on the primary only, so while it is down answers are plain (not personalized).

    Reads all go to the primary. Serving from the replica is the client's decision
    (`Pertinent` in degraded mode), because only it can declare the answer degraded.
    """

    def __init__(self, primary: Store, replica: Store, replica_name: str) -> None:
        self.primary = primary
        self.replica = replica
        self.replica_name = replica_name

    @property
    def dim(self) -> int:
        return self.primary.dim

    @property
    def model_id(self) -> str:
        return self.primary.model_id

    def upsert_chunks(self, chunks: Sequence[Chunk]) -> int:
        written = self.primary.upsert_chunks(chunks)
        self.replica.upsert_chunks(chunks)
        return written

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        deleted = self.primary.delete_documents(doc_ids)
        self.replica.delete_documents(doc_ids)
        return deleted

    def delete_user(self, user_id: str) -> Mapping[str, int]:
        self.replica.delete_user(user_id)
        return self.primary.delete_user(user_id)

    def get_chunks(self, ids: Sequence[str], *, user_id: str | None = None) -> list[Chunk]:
        return self.primary.get_chunks(ids, user_id=user_id)

    def get_vectors(self, ids: Sequence[str], *, user_id: str | None = None) -> dict[str, Vector]:
        return self.primary.get_vectors(ids, user_id=user_id)

    def count_chunks(self) -> int:
        return self.primary.count_chunks()

    def document_ids(self) -> list[str]:
        return self.primary.document_ids()

    def hybrid_search(
        self, text: str, vector: Vector, *, k: int, alpha: float, where: SearchFilter
    ) -> list[Hit]:
        return self.primary.hybrid_search(text, vector, k=k, alpha=alpha, where=where)

    def vector_search(self, vector: Vector, *, k: int, where: SearchFilter) -> list[Hit]:
        return self.primary.vector_search(vector, k=k, where=where)

    def keyword_search(self, text: str, *, k: int, where: SearchFilter) -> list[Hit]:
        return self.primary.keyword_search(text, k=k, where=where)

    def append_events(self, events: Sequence[StoredEvent]) -> None:
        self.primary.append_events(events)

    def read_events(self, user_id: str) -> list[StoredEvent]:
        return self.primary.read_events(user_id)

    def read_event_arrays(self, user_id: str) -> EventArrays:
        return self.primary.read_event_arrays(user_id)

    def append_turns(self, turns: Sequence[StoredTurn]) -> None:
        self.primary.append_turns(turns)

    def read_turns(self, user_id: str, session_id: str) -> list[StoredTurn]:
        return self.primary.read_turns(user_id, session_id)

    def known_users(self) -> list[str]:
        return self.primary.known_users()

    def purge_before(self, log: str, cutoff: datetime) -> int:
        return self.primary.purge_before(log, cutoff)

    def get_user_settings(self, user_id: str) -> dict[str, Any] | None:
        return self.primary.get_user_settings(user_id)

    def put_user_settings(self, user_id: str, settings: Mapping[str, Any]) -> None:
        self.primary.put_user_settings(user_id, settings)

    def close(self) -> None:
        try:
            self.primary.close()
        finally:
            self.replica.close()
