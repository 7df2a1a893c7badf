"""An append-only audit log of retrievals, as JSON lines on local disk.

For each retrieval: when, who (user, session), which results with their score
breakdowns, the embedding model and tokenizer. The query text only when
`include_query` is set: a log of every question is itself a record of a person.

Why a file and not the store: the audit trail must survive a store being rebuilt or
switched (LanceDB ↔ Weaviate), and privacy officers read it with ordinary tools.
Why by hand and not `logging.handlers.RotatingFileHandler`: forgetting a user and
retention must *rewrite* past lines, under a lock shared by every process that writes
the file (fcntl), which a logging handler does not offer.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pertinent.types import Result

__all__ = ["AuditLog"]


class AuditLog:
    """`path` is the live file; rotated files are `path.1`, `path.2`, … (oldest last)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        include_query: bool = False,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.include_query = include_query
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self._lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def files(self) -> list[Path]:
        rotated = [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.backups + 1)]
        return [p for p in [self.path, *rotated] if p.exists()]

    def record_retrieval(
        self,
        *,
        user_id: str | None,
        session_id: str | None,
        query: str,
        results: Sequence[Result],
        model_id: str,
        tokenizer: str | None = None,
        token_count: int | None = None,
        at: datetime | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "at": (at or datetime.now(timezone.utc)).isoformat(),
            "event": "retrieve",
            "user_id": user_id,
            "session_id": session_id,
            "embedding_model": model_id,
            "tokenizer": tokenizer,
            "token_count": token_count,
            "results": [
                {
                    "rank": r.rank,
                    "chunk_id": r.id,
                    "doc_id": r.chunk.doc_id,
                    "score": r.score,
                    "explain": r.explain.as_dict(),
                }
                for r in results
            ],
        }
        if self.include_query:
            entry["query"] = query
        line = json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
        with self._locked():
            if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                self._rotate()
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def _rotate(self) -> None:
        oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
        if oldest.exists():
            oldest.unlink()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first."""
        out: list[dict[str, Any]] = []
        with self._locked():
            for p in reversed(self.files()):
                with open(p, encoding="utf-8") as fh:
                    out.extend(json.loads(line) for line in fh if line.strip())
        return out

    def _rewrite(self, drop: Callable[[dict[str, Any]], bool]) -> int:
        """Rewrite every file without the entries `drop` selects; each file is replaced
        atomically (write, fsync, rename), so a crash leaves the old or the new file."""
        removed = 0
        with self._locked():
            for p in self.files():
                with open(p, encoding="utf-8") as fh:
                    lines = [line for line in fh if line.strip()]
                keep = [line for line in lines if not drop(json.loads(line))]
                removed += len(lines) - len(keep)
                if len(keep) == len(lines):
                    continue
                tmp = p.with_name(p.name + ".tmp")
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.writelines(keep)
                    fh.flush()
                    os.fsync(fh.fileno())
                tmp.replace(p)
        return removed

    def forget(self, user_id: str) -> int:
        """Remove the user's entries from every file, rotated ones included."""
        return self._rewrite(lambda e: e.get("user_id") == user_id)

    def purge_before(self, cutoff: datetime) -> int:
        return self._rewrite(lambda e: datetime.fromisoformat(e["at"]) < cutoff)
