"""A bounded cache of chunk vectors that is only trusted for one table version.

`record` needs the vector of every item an event names. Agents record feedback on the
items they were just shown, over and over, so most of those reads ask for vectors read
a moment before. LanceDB gives every commit, by any process, a new table version, and
reading the latest version number costs a fraction of a millisecond; a cache tied to
the version it was filled at therefore never serves a vector that a re-ingest, a
deletion or a forgotten user has since changed, in this process or another.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from pertinent.types import Vector

__all__ = ["VersionedVectorCache"]


class VersionedVectorCache:
    """chunk id → (owner, vector), at most `size` entries, valid for one table version.

    The owner is kept so a cached private chunk (a memory) is only returned to its owner,
    exactly as the store's own filter would."""

    def __init__(self, size: int) -> None:
        self.size = max(0, int(size))
        self._version: int | None = None
        self._entries: OrderedDict[str, tuple[str, Vector]] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(
        self, version: int, ids: Iterable[str], user_id: str | None
    ) -> tuple[dict[str, Vector], list[str]]:
        """The cached vectors visible to `user_id` and the ids still to read. A version
        other than the cached one empties the cache first."""
        found: dict[str, Vector] = {}
        missing: list[str] = []
        with self._lock:
            if version != self._version:
                self._entries.clear()
                self._version = version
            for i in ids:
                entry = self._entries.get(i)
                if entry is None:
                    missing.append(i)
                    continue
                owner, vector = entry
                if owner and owner != user_id:
                    missing.append(i)  # not visible: let the store's filter decide
                    continue
                self._entries.move_to_end(i)
                found[i] = vector
        return found, missing

    def fill(self, version: int, owners: Mapping[str, str], vectors: Mapping[str, Vector]) -> None:
        """Add vectors read at `version` (read the version *before* the rows, so a commit
        in between leaves them tagged with the older version and they are dropped)."""
        if not self.size:
            return
        with self._lock:
            if version != self._version:
                return
            for i, v in vectors.items():
                self._entries[i] = (owners.get(i, ""), v)
                self._entries.move_to_end(i)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._version = None

    def __len__(self) -> int:
        return len(self._entries)
