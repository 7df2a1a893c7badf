"""A circuit breaker around any `Store`.

When a cluster is down, every call otherwise waits for its timeout (seconds) before
failing, on every agent turn. After `threshold` consecutive `StoreUnavailable`
failures the breaker opens: calls fail at once, in microseconds, with a message that
names the store and says when it will be tried again. After `reset_after` seconds one
call is let through (half-open); its success closes the breaker.

Only `StoreUnavailable` counts: bad input or a corrupted store are not outages, and a
`PartialWrite` proves the store answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from pertinent.errors import StoreUnavailable
from pertinent.stores.base import SearchFilter, Store, StoredEvent, StoredTurn
from pertinent.types import Chunk, Hit, Vector

__all__ = ["CircuitBreaker", "ResilientStore"]

T = TypeVar("T")


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
