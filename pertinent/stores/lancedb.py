"""The embedded default store: LanceDB tables in a directory, no server.

Tables: `chunks` (shared and user-owned chunks, BM25 index on `text`), `events` and
`turns` (user-owned logs), `meta` (the embedding model the store was built with).

Hybrid search runs the two legs (LanceDB full-text search and exact cosine search,
both with the visibility filter as a *pre*filter) and fuses them here with relative
score fusion. LanceDB's own hybrid query does fusion too, but returns only the fused
relevance; pertinent needs each leg's raw score for the `ScoreBreakdown` and the same
fusion as Weaviate's `relativeScoreFusion`, so that both backends rank alike.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from pertinent.errors import (
    DimensionMismatch,
    EmbeddingModelMismatch,
    MissingDependency,
    StoreCorrupted,
    StoreError,
    StoreNotWritable,
    StoreUnavailable,
)
from pertinent.stores.allocator import fix_mmap_threshold, limit_malloc_arenas
from pertinent.stores.base import (
    EventArrays,
    SearchFilter,
    StoredEvent,
    StoredTurn,
    event_arrays,
    vector_matrix,
)
from pertinent.stores.fusion import PendingHybrid, relative_score_fusion
from pertinent.stores.vector_cache import VersionedVectorCache
from pertinent.types import Chunk, Hit, Vector

__all__ = ["LanceDBStore", "sql_literal"]

_log = logging.getLogger("pertinent.stores.lancedb")
_SCHEMA_VERSION = "1"
_FTS_REFRESH_ROWS = 2000
# Past this many chunks a flat scan behind the visibility prefilter costs 100+ ms per
# query on 2 cores. The index is an HNSW graph over int8-quantised vectors (HNSW_SQ):
# MiniLM vectors of real text do not cluster tightly, so IVF had to probe ~40% of the
# table for recall@50 >= 0.95 (0.79 at 40 of 100 partitions on 10k real vectors), while
# HNSW at ef=_VECTOR_EF kept 0.96 at a third of the time (docs/benchmarks.md). Scores
# are recomputed from the stored float vectors, so quantisation only touches the order
# of the graph walk. Stores indexed with IVF_FLAT before keep it, probed _VECTOR_NPROBES.
_VECTOR_INDEX_MIN_ROWS = 10_000
_VECTOR_EF = 500
_VECTOR_REFINE = 2
_VECTOR_REBUILD_GROWTH = 2
_VECTOR_NPROBES = 40
# Rows written after the vector index was built join it as a new graph segment, and
# every search walks every segment. Folded in at each BM25 refresh, a load of 715,000
# chunks in 5,000-row batches left 141 segments, and folding the next batch then ran out
# of file handles (20,000). So new rows join the vector index only once they are this
# fraction of the rows already in it: segments grow with the log of the table (about 21
# from 10k to 1M chunks), and until then the newest rows (at most a fifth of the table)
# are searched exactly beside the graph: slower, never wrong.
_VECTOR_FOLD_FRACTION = 4
# A compaction rewrites a file once this share of its rows is deleted (LanceDB's
# default), and `optimize` rebuilds the vector index rather than remap it over such a
# rewrite: the remap costs about as much as a build, and after one on 100k chunks
# ANN recall@50 fell from 0.975 to 0.94 (docs/benchmarks.md, "Sixth pass").
_MATERIALIZE_DELETIONS = 0.1
# Every small append is a new data file and a new table version; reads slow down with
# thousands of them, so the logs (and the user settings) are compacted once every this
# many table versions, whichever process wrote them (_after_append).
_COMPACT_EVERY_APPENDS = 200
# Between compactions each append is a data file the user_id B-tree does not cover, and
# a user's read scans every such file: 37 ms with 117 of them, 7-12 ms with new rows
# folded into the index every 16 appends (docs/benchmarks.md, "Sixth pass"). A fold
# rewrites no data and costs 1-2 ms, so it runs this often.
_FOLD_EVERY_APPENDS = 16
# Compaction writes new files but leaves the old versions (and their files) on disk for
# LanceDB's default of 7 days. A log appended to all day then kept every version: after
# 13,700 appends the events table held 13,700 versions in 972 MB for 24 MB of rows, and
# every read, which first looks for the latest version, spent 9.7 ms on that instead of
# 0.4 (docs/reliability.md, "Old table versions"). So each compaction also drops
# versions older than this. A reader in another process that is still on a dropped
# version re-reads on the latest (_rereads_lost_versions).
_KEEP_VERSIONS = timedelta(minutes=1)
# Log fragments stop growing here (≈ 25 MB of 384-d events): a compaction rewrites at
# most this many rows, and a million events are ≈ 60 fragments.
_LOG_FRAGMENT_ROWS = 16_384
# Chunks are compacted at every BM25 refresh (_FTS_REFRESH_ROWS new rows); with the
# whole table rewritten each time, ingesting n chunks wrote O(n²) bytes.
_CHUNK_FRAGMENT_ROWS = 131_072
# From this many ids a get_vectors miss is fetched by row id (_take_vectors) rather than
# filtered with `id IN (...)`.
_TAKE_MIN_MISSES = 32


def sql_literal(value: str) -> str:
    """Quote a string for a LanceDB (DataFusion SQL) filter.

    Every id in a filter comes from callers (user ids, doc ids); doubling quotes is the
    SQL standard escape and DataFusion treats backslashes literally, so this is complete.
    """
    if "\x00" in value:
        # NUL cannot be stored in a filter string; no legitimate id carries it.
        raise StoreError("ids may not contain NUL characters")
    return "'" + value.replace("'", "''") + "'"


def _in_list(values: Sequence[str]) -> str:
    return "(" + ", ".join(sql_literal(v) for v in values) + ")"


def _is_contention(message: str) -> bool:
    text = message.lower()
    return "concurrent writer" in text or "commit conflict" in text or "retryable" in text


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _lost_version(exc: StoreError) -> bool:
    """Whether a read failed because another process deleted the files of the version
    it was on (compaction deletes versions older than keep_versions, see
    _KEEP_VERSIONS): LanceDB reports the missing data file as "Not found"."""
    msg = str(exc)
    return isinstance(exc, StoreCorrupted) and "Not found" in msg and ".lance" in msg


def _rereads_lost_versions(
    method: Callable[Concatenate[LanceDBStore, _P], _R],
) -> Callable[Concatenate[LanceDBStore, _P], _R]:
    """Run a read again, once, on the latest version when its version was deleted under
    it. A reader on a version that was latest when its query began is unprotected by
    any retention: Lance ages versions from when they were written, not from when they
    were superseded. The latest version is never deleted, so one retry is enough."""

    @functools.wraps(method)
    def read(self: LanceDBStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except StoreError as exc:
            if not _lost_version(exc):
                raise
            _log.info("re-reading on the latest version: %s", exc)
            self._checkout_latest()
            return method(self, *args, **kwargs)

    return read


class _GroupCommit:
    """Coalesces appends from many threads into one LanceDB commit.

    Every `add` is a table version; with eight threads appending one event each, commits
    conflict and LanceDB gives up ("Too many concurrent writers", seen with 8 threads and
    4 processes). Callers block until their rows are committed, so `record` still means
    durable; what changes is that one commit carries every row that arrived meanwhile.
    """

    def __init__(self, name: str, write: Any, pa: Any) -> None:
        self._write = write
        self._pa = pa
        self._queue: queue.SimpleQueue[tuple[Any, Future[None]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"pertinent-{name}", daemon=True)
        self._thread.start()

    def submit(self, rows: Any) -> None:
        done: Future[None] = Future()
        self._queue.put((rows, done))
        done.result()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            try:
                self._write(self._pa.concat_tables([rows for rows, _ in batch]))
            except BaseException as exc:
                for _, fut in batch:
                    fut.set_exception(exc)
            else:
                for _, fut in batch:
                    fut.set_result(None)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the writer after what is queued, and wait for it: a thread still
        running after `close` returned is one that a process opening and closing stores
        accumulates (seen as +4 threads after 12 cycles on a loaded machine)."""
        self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _owner_clause(user_id: str | None) -> str:
    if user_id is None:
        return "owner = ''"
    return f"(owner = '' OR owner = {sql_literal(user_id)})"


def _visibility(where: SearchFilter) -> str:
    if where.owned_only:
        owner = f"owner = {sql_literal(where.user_id)}" if where.user_id is not None else "false"
    else:
        owner = _owner_clause(where.user_id)
    # `public` (no ACL) and `array_has_any` are both answered by scalar indexes (a bitmap
    # and a label list); `array_length(acl) = 0` read the acl of every row on every query,
    # which at 100k chunks cost more than the search itself (docs/benchmarks.md).
    if where.principals:
        acl = (
            "(public OR array_has_any(acl, ["
            + ", ".join(sql_literal(p) for p in where.principals)
            + "]))"
        )
    else:
        acl = "public"
    parts = [owner, acl]
    if where.exclude_ids:
        parts.append(f"id NOT IN {_in_list(where.exclude_ids)}")
    if where.doc_ids is not None:
        parts.append(f"doc_id IN {_in_list(where.doc_ids)}" if where.doc_ids else "false")
    return " AND ".join(parts)


class _KeywordsFirst:
    """A hybrid search whose BM25 leg was started before the query vector existed; the
    vector leg runs in the thread that finishes it, and the two are fused here."""

    def __init__(
        self,
        store: LanceDBStore,
        text: str,
        k: int,
        where: SearchFilter,
        job: Future[list[Hit]] | None,
    ) -> None:
        self._store = store
        self._text = text
        self._k = k
        self._where = where
        self._job = job

    def finish(self, vector: Vector, *, k: int, alpha: float) -> list[Hit]:
        store = self._store
        try:
            q = store._check_query_vector(vector)
        except DimensionMismatch:
            self.cancel()
            raise
        job = self._job
        if alpha < 1 and (job is None or k > self._k) and store._has_fts and self._text.strip():
            # Deeper than started (or not started): the leg runs again, beside the vector leg.
            self.cancel()
            job = store._pool.submit(store.keyword_search, self._text, k=k, where=self._where)
        elif alpha >= 1:
            self.cancel()
            job = None
        try:
            dense = store.vector_search(q, k=k, where=self._where) if alpha > 0 else []
        except BaseException:
            if job is not None:
                job.cancel()
            raise
        sparse = job.result() if job is not None else []
        # A leg started deeper than `k` is cut to its top `k`: the hits a `k`-deep search
        # returns, ties broken by id as everywhere else.
        sparse = sorted(sparse, key=lambda h: (-(h.bm25 or 0.0), h.id))[:k]
        return relative_score_fusion(dense, sparse, q, k=k, alpha=alpha)

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()


def _rows_in_order(column: Any, order: np.ndarray, dim: int) -> np.ndarray:
    """A FixedSizeList column as an (n, dim) float32 matrix with row `order[i]` at i.

    Each Arrow chunk is scattered straight into the one output matrix: joining the
    chunks first and then gathering wrote two new 15 MB buffers for a 10,000-event log
    instead of one, and under the store's mmap threshold each is faulted in afresh
    (docs/reliability.md). A log read back in time order (events recorded as they
    happen) is copied by plain slices: 1.9 against 3.0 ms scattered, for 10,000 rows.
    """
    n = len(order)
    out = np.empty((n, dim), dtype=np.float32)
    sequential = bool(n == 0 or (order[0] == 0 and (np.diff(order) == 1).all()))
    if not sequential:
        where = np.empty(n, dtype=np.intp)
        where[order] = np.arange(n, dtype=np.intp)
    start = 0
    for chunk in column.chunks:
        rows = len(chunk)
        if rows == 0:
            continue
        block = chunk.flatten().to_numpy(zero_copy_only=False).reshape(rows, dim)
        if sequential:
            out[start : start + rows] = block
        else:
            out[where[start : start + rows]] = block
        start += rows
    return out


class LanceDBStore:
    """Chunks, events and session turns in LanceDB tables under `path`.

    Writes by several processes are safe (LanceDB commits are optimistic and appends
    never conflict); `read_consistency` makes each read see the latest commit of other
    processes (0 s = always, at the cost of a version check per query). Compactions
    delete versions older than `keep_versions` (at least twice `read_consistency`).

    LanceDB's caches are bounded per connection: `cache_bytes` (metadata) and
    `index_cache_bytes` for the chunks and user settings, `log_cache_bytes` (both caches;
    `cache_bytes` when None) for the event and turn logs. None or 0 leaves LanceDB's own
    defaults, which grow to gigabytes in a long-lived process.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        model_id: str,
        dim: int,
        read_consistency: timedelta | None = timedelta(0),
        cache_bytes: int | None = None,
        index_cache_bytes: int | None = None,
        log_cache_bytes: int | None = None,
        vector_cache_entries: int = 10_000,
        malloc_mmap_threshold: int | None = 1 << 20,
        malloc_arena_max: int | None = None,
        keep_versions: timedelta = _KEEP_VERSIONS,
    ) -> None:
        try:
            import lance  # noqa: F401  (pylance: the logs' compaction, see _compact)
            import lancedb
            import pyarrow as pa
        except ImportError as exc:
            missing = "pylance" if exc.name == "lance" else exc.name or "lancedb"
            raise MissingDependency(missing, "local") from exc
        # Before LanceDB's threads start (pertinent/stores/allocator.py says why).
        if malloc_mmap_threshold is not None:
            fix_mmap_threshold(malloc_mmap_threshold)
        if malloc_arena_max is not None:
            limit_malloc_arenas(malloc_arena_max)
        self._pa = pa
        self.path = Path(path).expanduser()
        self._dim = dim
        self._model_id = model_id
        self._lock = threading.RLock()
        self._unindexed = 0
        self._versions_seen: dict[str, int] = {}  # see _after_append
        self._sessions: list[Any] = []  # LanceDB cache sessions, see cache_bytes
        # A process that reads an old version fails if its files are deleted under it,
        # so versions are kept at least twice as long as readers may stay on one.
        self._keep_versions = max(keep_versions, 2 * (read_consistency or timedelta(0)))
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pertinent-lancedb")
        self._vector_cache = VersionedVectorCache(vector_cache_entries)
        self._row_index: tuple[int, Any, Any] | None = None  # see _take_vectors
        self._check_writable()
        with self._errors("open"):
            # LanceDB's index and metadata caches default to gigabytes and grow with every
            # write (docs/reliability.md, "Soak"); a bound keeps a long-lived process flat.
            # The index cache must still hold the vector index, or every query reads it
            # from disk again (13 -> 109 ms at 100k chunks with 64 MiB): its own bound.
            def connect(index_bytes: int | None, metadata_bytes: int | None) -> Any:
                session = (
                    lancedb.Session(
                        index_cache_size_bytes=index_bytes,
                        metadata_cache_size_bytes=metadata_bytes,
                    )
                    if metadata_bytes
                    else None
                )
                if session is not None:
                    self._sessions.append(session)
                return lancedb.connect(
                    str(self.path), read_consistency_interval=read_consistency, session=session
                )

            self._db = connect(index_cache_bytes or cache_bytes, cache_bytes)
            # The logs get their own connection and bound (`log_cache_bytes`, both caches).
            # Their only indexes are small user_id B-trees, but every compaction (every
            # _COMPACT_EVERY_APPENDS appends) writes new ones, and in a shared cache the
            # stale copies sit until the index bound (sized for the vector index) is
            # reached: +4 MiB per 1,000 commits at 1 GiB, flat at 16 MiB. The metadata
            # cache also keeps the metadata of every version an append wrote, deleted or
            # not, until its bound evicts it: at 64 MiB the soak grew about 1 MiB per
            # 1,000 retrieves for more than 100,000 (docs/reliability.md, "Long soak,
            # sixth attempt"). Reads need only the latest version's: a small bound.
            log_bytes = cache_bytes if log_cache_bytes is None else log_cache_bytes
            self._log_db = connect(log_bytes, log_bytes)
            existing = set(self._db.list_tables().tables)
        self._check_meta(existing)
        self._chunks = self._open_or_create("chunks", self._chunk_schema(), existing)
        self._events = self._open_or_create(
            "events", self._event_schema(), existing, db=self._log_db
        )
        self._turns = self._open_or_create("turns", self._turn_schema(), existing, db=self._log_db)
        self._users = self._open_or_create("users", self._user_schema(), existing)
        fts = [ix.name for ix in self._chunks.list_indices() if ix.index_type == "FTS"]
        self._has_fts = bool(fts)
        if fts:  # carry on the count of rows the BM25 index lacks, from earlier processes
            with self._errors("open"):
                stats = self._chunks.index_stats(fts[0])
            self._unindexed = int(stats.num_unindexed_rows) if stats else 0
        indexed = {tuple(ix.columns): ix.index_type for ix in self._chunks.list_indices()}
        self._vector_index_type: str | None = indexed.get(("vector",))
        self._has_vector_index = self._vector_index_type is not None
        self._has_filter_indexes = {("owner",), ("public",), ("acl",)} <= indexed.keys()
        self._event_writer = _GroupCommit(
            "events", lambda rows: self._append("events", self._events, rows), self._pa
        )
        self._turn_writer = _GroupCommit(
            "turns", lambda rows: self._append("turns", self._turns, rows), self._pa
        )

    # ------------------------------------------------------------------ setup

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_id(self) -> str:
        return self._model_id

    def _check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreNotWritable(
                f"Cannot create the store directory {self.path}: {exc.strerror}. "
                "Pass a path you can write to."
            ) from exc
        if not self.path.is_dir():
            raise StoreNotWritable(f"{self.path} exists and is not a directory.")
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StoreNotWritable(
                f"The store directory {self.path} is not writable by this process. "
                "Fix its permissions or pass another path."
            )

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Map LanceDB/Arrow/OS failures to the pertinent error tree, in one place."""
        try:
            yield
        except StoreError:
            raise
        except PermissionError as exc:
            raise StoreNotWritable(
                f"LanceDB store at {self.path}: permission denied during {what}: {exc}. "
                "Fix the directory's permissions."
            ) from exc
        except FileNotFoundError as exc:
            raise StoreUnavailable(
                f"LanceDB store at {self.path} vanished during {what}: {exc}. "
                "Check that the directory (or its mount) still exists."
            ) from exc
        except (OSError, RuntimeError, ValueError, self._pa.ArrowException) as exc:
            msg = str(exc)
            if "ermission denied" in msg or "Read-only file system" in msg:
                raise StoreNotWritable(
                    f"LanceDB store at {self.path} cannot be written ({what}): {msg}"
                ) from exc
            if "Too many open files" in msg or "No space left on device" in msg:
                # Resources of this machine, not damage to the store: an ingest of 1M
                # chunks in 5,000-chunk batches ran out of file handles (ulimit 20,000)
                # while folding its new rows into the indexes (docs/benchmarks.md).
                raise StoreUnavailable(
                    f"LanceDB store at {self.path} ran out of a resource during {what}: "
                    f"{msg}. Raise the open-files limit (ulimit -n) or free disk space, "
                    "then retry; call optimize() after a large ingest, which merges the "
                    "files and index segments a search opens."
                ) from exc
            if _is_contention(msg):
                raise StoreUnavailable(
                    f"LanceDB store at {self.path} is busy ({what}): too many processes are "
                    "writing at once and the commit kept conflicting. Nothing was written by "
                    "this call; retry it, or route writes through fewer processes."
                ) from exc
            raise StoreCorrupted(
                f"LanceDB store at {self.path} failed during {what}: {msg}. If its files were "
                "damaged, restore them from a backup or rebuild the store by re-ingesting into "
                "a new directory."
            ) from exc
        except Exception as exc:
            # pylance's CommitConflictError derives from Exception alone.
            if type(exc).__name__ != "CommitConflictError":
                raise
            raise StoreUnavailable(
                f"LanceDB store at {self.path} is busy ({what}): another process changed the "
                f"table at the same time ({exc}). Nothing was lost; retry the call."
            ) from exc

    def _check_meta(self, existing: set[str]) -> None:
        with self._errors("reading meta"):
            if "meta" not in existing:
                if existing & {"chunks", "events", "turns"}:
                    raise StoreCorrupted(
                        f"{self.path} holds pertinent tables but no 'meta' table; the store is "
                        "damaged or was written by something else. Use a new directory."
                    )
                self._db.create_table(
                    "meta",
                    data=[
                        {"key": "model_id", "value": self._model_id},
                        {"key": "dim", "value": str(self._dim)},
                        {"key": "schema_version", "value": _SCHEMA_VERSION},
                    ],
                )
                return
            rows = self._db.open_table("meta").to_arrow().to_pylist()
        meta = {r["key"]: r["value"] for r in rows}
        if meta.get("model_id") != self._model_id or meta.get("dim") != str(self._dim):
            raise EmbeddingModelMismatch(
                f"The store at {self.path} was built with embedding model "
                f"{meta.get('model_id')!r} (dim {meta.get('dim')}), not {self._model_id!r} "
                f"(dim {self._dim}). Open it with the same model, or ingest into a new "
                "directory with the new model."
            )

    def _open_or_create(
        self, name: str, schema: Any, existing: set[str], db: Any | None = None
    ) -> Any:
        db = self._db if db is None else db
        with self._errors(f"opening table {name}"):
            if name in existing:
                table = db.open_table(name)
                if name == "chunks" and "public" not in table.schema.names:
                    table = self._add_public_column(table)
                if table.schema != schema:
                    raise StoreCorrupted(
                        f"Table {name!r} in {self.path} has an unexpected schema; it was written "
                        "by another version of pertinent or damaged. Use a new directory."
                    )
                return table
            table = db.create_table(name, schema=schema)
            if name in ("events", "turns"):
                from lancedb.index import BTree

                table.create_index("user_id", config=BTree())
            return table

    def _add_public_column(self, table: Any) -> Any:
        """Stores written before the `public` column get it computed from `acl` in one
        commit (no data is rewritten by hand). Two processes opening the same old store
        at once race to add it: the loser finds it added."""
        try:
            table.add_columns({"public": "array_length(acl) = 0"})
        except Exception:
            table = self._db.open_table("chunks")
            if "public" not in table.schema.names:
                raise
        return table

    def _user_schema(self) -> Any:
        pa = self._pa
        return pa.schema(
            [
                pa.field("user_id", pa.string()),
                pa.field("meta", pa.string()),
                pa.field("updated", pa.timestamp("us", tz="UTC")),
            ]
        )

    def _vector_field(self) -> Any:
        pa = self._pa
        return pa.field("vector", pa.list_(pa.float32(), self._dim))

    def _chunk_schema(self) -> Any:
        pa = self._pa
        return pa.schema(
            [
                pa.field("id", pa.string()),
                pa.field("doc_id", pa.string()),
                pa.field("owner", pa.string()),
                pa.field("position", pa.int32()),
                pa.field("text", pa.string()),
                pa.field("title", pa.string()),
                pa.field("source", pa.string()),
                pa.field("metadata", pa.string()),
                pa.field("acl", pa.list_(pa.string())),
                pa.field("model_id", pa.string()),
                self._vector_field(),
                pa.field("public", pa.bool_()),  # no ACL: derived from `acl`, indexed
            ]
        )

    def _event_schema(self) -> Any:
        pa = self._pa
        return pa.schema(
            [
                pa.field("id", pa.string()),
                pa.field("user_id", pa.string()),
                pa.field("kind", pa.string()),
                pa.field("weight", pa.float64()),
                pa.field("ts", pa.timestamp("us", tz="UTC")),
                pa.field("item_id", pa.string()),
                pa.field("text", pa.string()),
                pa.field("session_id", pa.string()),
                pa.field("model_id", pa.string()),
                self._vector_field(),
            ]
        )

    def _turn_schema(self) -> Any:
        pa = self._pa
        return pa.schema(
            [
                pa.field("id", pa.string()),
                pa.field("user_id", pa.string()),
                pa.field("session_id", pa.string()),
                pa.field("role", pa.string()),
                pa.field("text", pa.string()),
                pa.field("ts", pa.timestamp("us", tz="UTC")),
                pa.field("model_id", pa.string()),
                self._vector_field(),
            ]
        )

    # ------------------------------------------------------------------ chunks

    def upsert_chunks(self, chunks: Sequence[Chunk]) -> int:
        if not chunks:
            return 0
        vectors = vector_matrix([c.vector for c in chunks], self._dim, "upsert_chunks")
        for c in chunks:
            if c.model_id != self._model_id:
                raise EmbeddingModelMismatch(
                    f"Chunk {c.id!r} was embedded with {c.model_id!r}; this store holds "
                    f"{self._model_id!r} vectors."
                )
        pa = self._pa
        table = pa.table(
            {
                "id": [c.id for c in chunks],
                "doc_id": [c.doc_id for c in chunks],
                "owner": [c.owner or "" for c in chunks],
                "position": pa.array([c.position for c in chunks], pa.int32()),
                "text": [c.text for c in chunks],
                "title": [c.title for c in chunks],
                "source": [c.source for c in chunks],
                "metadata": [json.dumps(dict(c.metadata), sort_keys=True) for c in chunks],
                "acl": pa.array([list(c.acl) for c in chunks], pa.list_(pa.string())),
                "model_id": [c.model_id for c in chunks],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1), pa.float32()), self._dim
                ),
                "public": [not c.acl for c in chunks],
            },
            schema=self._chunk_schema(),
        )
        doc_ids = sorted({c.doc_id for c in chunks})
        with self._lock, self._errors("upsert"):
            # One commit: insert/replace the new chunks and delete the documents' chunks
            # that are no longer produced, so a crash never leaves half a document.
            (
                self._chunks.merge_insert("id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(f"doc_id IN {_in_list(doc_ids)}")
                .execute(table)
            )
            self._unindexed += len(chunks)
            self._refresh_fts(force=not self._has_fts)
        return len(chunks)

    def _refresh_fts(self, *, force: bool = False) -> None:
        """Keep the BM25 index current. Unindexed rows are still searched (by a flat scan
        LanceDB runs beside the index), so refreshing is about speed, not correctness."""
        if not self._has_fts:
            from lancedb.index import FTS, BTree

            self._chunks.create_index("text", config=FTS(with_position=False), replace=True)
            self._chunks.create_index("doc_id", config=BTree(), replace=True)
            self._has_fts = True
            self._unindexed = 0
        elif force or self._unindexed >= _FTS_REFRESH_ROWS:
            self._compact(self._chunks, ingest=True)
            self._unindexed = 0
            self._index_vectors()

    def _index_vectors(self) -> None:
        """Build the vector index and the visibility filter's indexes once the table is
        big enough; `optimize` folds later rows into them."""
        if self._has_vector_index and self._has_filter_indexes:
            return
        if self._chunks.count_rows() < _VECTOR_INDEX_MIN_ROWS:
            return
        if not self._has_filter_indexes:  # also for stores indexed before `public` existed
            self._index_filters()
        if self._has_vector_index:
            return
        from lancedb.index import HnswSq

        # One partition: a single graph (partitions would make it IVF, with IVF's recall).
        config = HnswSq(distance_type="cosine", num_partitions=1)
        rows = int(self._chunks.count_rows())
        self._chunks.create_index("vector", config=config, replace=True)
        self._has_vector_index = True
        self._vector_index_type = "IvfHnswSq"
        self._set_meta_value("vector_index_rows", str(rows))

    def _vector_fold_due(self) -> bool:
        """Whether the rows the vector index lacks are enough to join it as one segment
        (see _VECTOR_FOLD_FRACTION)."""
        names = [ix.name for ix in self._chunks.list_indices() if list(ix.columns) == ["vector"]]
        if not names:
            return True  # nothing held back: the other indexes fold at every refresh
        stats = self._chunks.index_stats(names[0])
        if stats is None:
            return True
        indexed, unindexed = int(stats.num_indexed_rows), int(stats.num_unindexed_rows)
        return unindexed >= max(_FTS_REFRESH_ROWS, indexed // _VECTOR_FOLD_FRACTION)

    def _meta_value(self, key: str) -> str | None:
        rows = self._db.open_table("meta").search().where(f"key = {sql_literal(key)}").to_list()
        return str(rows[0]["value"]) if rows else None

    def _set_meta_value(self, key: str, value: str) -> None:
        (
            self._db.open_table("meta")
            .merge_insert("key")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute([{"key": key, "value": value}])
        )

    def _index_filters(self) -> None:
        """Scalar indexes for every column the visibility filter tests, so the prefilter
        is answered from indexes instead of reading those columns row by row."""
        from lancedb.index import Bitmap, LabelList

        self._chunks.create_index("owner", config=Bitmap(), replace=True)
        self._chunks.create_index("public", config=Bitmap(), replace=True)
        self._chunks.create_index("acl", config=LabelList(), replace=True)
        self._has_filter_indexes = True

    def cache_bytes(self) -> int | None:
        """Bytes held now in LanceDB's index and metadata caches of this store (None with
        LanceDB's own unbounded defaults, `cache_bytes=None`). A long-lived process's
        resident memory includes them until they reach their bounds."""
        if not self._sessions:
            return None
        return sum(int(session.size_bytes) for session in self._sessions)

    def optimize(self) -> None:
        """Fold new rows into the indexes and compact small files (safe to call any time).

        Rows added after the vector index was built are folded in as an extra graph
        segment (an ingest does it only once they are a quarter of the index, see
        _VECTOR_FOLD_FRACTION), each searched in turn; once the table has grown to
        _VECTOR_REBUILD_GROWTH times the rows the index was built on, the index is
        rebuilt whole instead (minutes at 1M chunks, which is why only this explicit
        call does it, never an ingest). It is rebuilt too once a file holds enough
        deleted rows to be rewritten (re-ingested or deleted documents), since the
        rewrite would remap the graph (_MATERIALIZE_DELETIONS).

        A rebuild drops the old index *before* compacting. Lance merges only neighbouring
        fragments covered by the same index segments, so with the segments in place every
        batch indexed during a load stayed a file of its own (19 at 100k chunks), and
        compacting after the rebuild instead remaps the graph: 50 s at 100k chunks, and
        ANN recall@50 fell from 0.975 to 0.94 (docs/benchmarks.md, "Sixth pass"). Searches
        that run meanwhile scan the vectors exactly: slower, never wrong."""
        with self._lock, self._errors("optimize"):
            rows = int(self._chunks.count_rows())
            built = self._meta_value("vector_index_rows")
            grown = bool(built) and rows >= _VECTOR_REBUILD_GROWTH * int(built or 0)
            if self._has_vector_index and (
                grown or self._deleted_share() >= _MATERIALIZE_DELETIONS
            ):
                self._drop_vector_index()  # rebuilt below, over every row
            for table in (self._chunks, self._events, self._turns):
                self._compact(table)
            self._unindexed = 0
            self._index_vectors()

    def _drop_vector_index(self) -> None:
        for ix in self._chunks.list_indices():
            if list(ix.columns) == ["vector"]:
                self._chunks.drop_index(ix.name)
        self._has_vector_index = False

    def _deleted_share(self) -> float:
        """The largest share of deleted rows in any file the vector index covers (files
        it does not cover are rewritten without remapping it)."""
        dataset = self._chunks.to_lance()
        covered: set[int] = set()
        for index in dataset.describe_indices():
            if list(index.field_names) == ["vector"]:
                for segment in index.segments:
                    covered |= set(segment.fragment_ids)
        worst = 0.0
        for fragment in dataset.get_fragments():
            physical = int(fragment.physical_rows)
            if physical and fragment.fragment_id in covered:
                worst = max(worst, int(fragment.num_deletions) / physical)
        return worst

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        if not doc_ids:
            return 0
        where = f"doc_id IN {_in_list(list(doc_ids))}"
        with self._lock, self._errors("delete"):
            n = int(self._chunks.count_rows(where))
            if n:
                self._chunks.delete(where)
        return n

    @_rereads_lost_versions
    def get_chunks(self, ids: Sequence[str], *, user_id: str | None = None) -> list[Chunk]:
        if not ids:
            return []
        # ACLs are not checked here: this serves events that name an item the caller
        # already saw. Ownership is, so one user's private chunks never feed another.
        where = f"id IN {_in_list(list(ids))} AND {_owner_clause(user_id)}"
        with self._errors("get_chunks"):
            table = self._chunks.search().where(where).limit(len(ids)).to_arrow()
        by_id = {c.id: c for c in self._arrow_to_chunks(table)}
        return [by_id[i] for i in ids if i in by_id]

    @_rereads_lost_versions
    def get_vectors(self, ids: Sequence[str], *, user_id: str | None = None) -> dict[str, Vector]:
        # Only the id, owner and vector columns, read column-wise: `record` needs nothing
        # else, and building full chunks (to_pylist + JSON metadata) was most of its cost.
        # Vectors read before come from a cache tied to the table version (vector_cache.py).
        if not ids:
            return {}
        unique = list(dict.fromkeys(ids))
        with self._errors("get_vectors"):
            version = int(self._chunks.version) if self._vector_cache.size else -1
            found, missing = self._vector_cache.lookup(version, unique, user_id)
            if not missing:
                return found
            table = None
            if len(missing) >= _TAKE_MIN_MISSES:
                table = self._take_vectors(missing, user_id)
            if table is None:
                where = f"id IN {_in_list(missing)} AND {_owner_clause(user_id)}"
                table = (
                    self._chunks.search()
                    .where(where)
                    .select(["id", "owner", "vector"])
                    .limit(len(missing))
                    .to_arrow()
                )
        read = table["id"].to_pylist()
        matrix = self._vector_matrix(table["vector"])
        # One array per row (a row view would keep the whole batch's matrix alive for as
        # long as the cache holds any of its rows), read-only since the cache shares it.
        vectors = {i: _frozen(matrix[n].copy()) for n, i in enumerate(read)}
        self._vector_cache.fill(
            version, dict(zip(read, table["owner"].to_pylist(), strict=True)), vectors
        )
        found.update(vectors)
        return found

    def _take_vectors(self, ids: list[str], user_id: str | None) -> Any | None:
        """The rows of `ids` (id, owner, vector) visible to `user_id`, fetched by row id.

        A filter `id IN (...)` costs about as much per listed id as a scan (17-57 ms for
        1,000 ids at 10k chunks, docs/benchmarks.md); with every id's row id at hand, a
        take costs a few ms. The id column is read once per table version (any commit,
        by any process, gives a new one). None when the rows moved under us (another
        process compacted between the version read and the take): the caller then
        filters instead.
        """
        import pyarrow.compute as pc

        version = int(self._chunks.version)
        index = self._row_index
        if index is None or index[0] != version:
            scan = self._chunks.search().select(["id"]).with_row_id(True).limit(None).to_arrow()
            index = self._row_index = (version, scan["id"], scan["_rowid"])
        _, all_ids, row_ids = index
        wanted = self._pa.array(ids, self._pa.string())
        positions = pc.index_in(wanted, value_set=all_ids)
        known = positions.drop_null()
        if len(known) == 0:
            pa = self._pa
            return pa.table(
                {
                    "id": pa.array([], pa.string()),
                    "owner": pa.array([], pa.string()),
                    "vector": pa.array([], pa.list_(pa.float32(), self._dim)),
                }
            )
        try:
            got = (
                self._chunks.take_row_ids(row_ids.take(known).to_pylist())
                .select(["id", "owner", "vector"])
                .to_arrow()
            )
        except (OSError, RuntimeError, ValueError):
            return None
        if sorted(got["id"].to_pylist()) != sorted(all_ids.take(known).to_pylist()):
            return None
        owner = got["owner"]
        visible = pc.equal(owner, "")
        if user_id is not None:
            visible = pc.or_(visible, pc.equal(owner, user_id))
        return got.filter(visible)

    def _vector_matrix(self, column: Any) -> np.ndarray:
        """A fixed-size-list column as one (n, dim) float32 array, without per-row lists."""
        flat = column.combine_chunks().flatten() if len(column) else None
        if flat is None:
            return np.zeros((0, self._dim), dtype=np.float32)
        # A copy: callers get writable arrays that do not pin Arrow buffers.
        return np.array(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(
            -1, self._dim
        )

    @_rereads_lost_versions
    def count_chunks(self) -> int:
        with self._errors("count"):
            return int(self._chunks.count_rows())

    @_rereads_lost_versions
    def document_ids(self) -> list[str]:
        with self._errors("list documents"):
            col = self._chunks.search().select(["doc_id"]).limit(None).to_arrow()["doc_id"]
        return sorted(set(col.to_pylist()))

    def _arrow_to_chunks(self, table: Any, vectors: np.ndarray | None = None) -> list[Chunk]:
        """Rows of the chunks table as chunks, column by column: vectors as one matrix,
        each other column converted once. Row by row (`to_pylist`, a list of 384 floats per vector)
        this took 2.0 ms per 50 hits against 0.5 (probe on the 100k benchmark store)."""
        n = int(table.num_rows)
        if n == 0:
            return []
        if vectors is None:
            vectors = self._vector_matrix(table["vector"])
        cols = {
            name: table[name].to_pylist()
            for name in (
                "id",
                "doc_id",
                "text",
                "position",
                "metadata",
                "acl",
                "owner",
                "source",
                "title",
                "model_id",
            )
        }
        return [
            Chunk(
                id=cols["id"][i],
                doc_id=cols["doc_id"][i],
                text=cols["text"][i],
                position=int(cols["position"][i]),
                metadata=json.loads(cols["metadata"][i]) if cols["metadata"][i] else {},
                acl=tuple(cols["acl"][i] or ()),
                owner=cols["owner"][i] or None,
                source=cols["source"][i],
                title=cols["title"][i],
                model_id=cols["model_id"][i],
                vector=vectors[i],
            )
            for i in range(n)
        ]

    # ------------------------------------------------------------------ search

    def _check_query_vector(self, vector: Vector) -> Vector:
        arr = np.asarray(vector, dtype=np.float32)
        if arr.shape != (self._dim,):
            raise DimensionMismatch(
                f"Query vector has shape {arr.shape}; the store's dimension is {self._dim}."
            )
        return arr

    @_rereads_lost_versions
    def vector_search(self, vector: Vector, *, k: int, where: SearchFilter) -> list[Hit]:
        q = self._check_query_vector(vector)
        with self._errors("vector search"):
            search = (
                self._chunks.search(q, vector_column_name="vector")
                .distance_type("cosine")
                .where(_visibility(where), prefilter=True)
            )
            if self._vector_index_type == "IvfFlat":
                search = search.nprobes(_VECTOR_NPROBES)
            elif self._has_vector_index:
                # ef >= the k it walks for or LanceDB refuses; refining re-ranks 2k candidates
                # on the float vectors, so int8 rounding seldom pushes a true top-k out.
                search = search.ef(max(_VECTOR_EF, k * _VECTOR_REFINE))
                search = search.refine_factor(_VECTOR_REFINE)
            table = search.limit(k).to_arrow()
        vectors = self._vector_matrix(table["vector"])
        chunks = self._arrow_to_chunks(table, vectors)
        cosines = vectors @ q
        hits = [
            Hit(chunk=c, vector_cosine=float(cos)) for c, cos in zip(chunks, cosines, strict=True)
        ]
        # Ties (and, on an IVF_FLAT index, float rounding) in a deterministic order.
        hits.sort(key=lambda h: (-(h.vector_cosine or 0.0), h.id))
        return hits

    @_rereads_lost_versions
    def keyword_search(self, text: str, *, k: int, where: SearchFilter) -> list[Hit]:
        if not self._has_fts or not text.strip():
            return []
        with self._errors("keyword search"):
            table = (
                self._chunks.search(text, query_type="fts", fts_columns="text")
                .where(_visibility(where), prefilter=True)
                .limit(k)
                .to_arrow()
            )
        scores = table["_score"].to_pylist() if table.num_rows else []
        return [
            Hit(chunk=c, bm25=float(score))
            for c, score in zip(self._arrow_to_chunks(table), scores, strict=True)
        ]

    @_rereads_lost_versions
    def hybrid_search(
        self, text: str, vector: Vector, *, k: int, alpha: float, where: SearchFilter
    ) -> list[Hit]:
        q = self._check_query_vector(vector)
        return self._start_hybrid(text, k=k, where=where, keywords=alpha < 1).finish(
            q, k=k, alpha=alpha
        )

    def start_hybrid_search(self, text: str, *, k: int, where: SearchFilter) -> PendingHybrid:
        """Start the BM25 leg now, in this store's pool: it needs no vector, so it runs
        while the caller embeds the query (`pertinent.stores.fusion`)."""
        return self._start_hybrid(text, k=k, where=where, keywords=True)

    def _start_hybrid(
        self, text: str, *, k: int, where: SearchFilter, keywords: bool
    ) -> _KeywordsFirst:
        job = (
            self._pool.submit(self.keyword_search, text, k=k, where=where)
            if keywords and self._has_fts and text.strip()
            else None
        )
        return _KeywordsFirst(self, text, k, where, job)

    # ------------------------------------------------------------------ user logs

    def append_events(self, events: Sequence[StoredEvent]) -> None:
        if not events:
            return
        vectors = vector_matrix([e.vector for e in events], self._dim, "append_events")
        pa = self._pa
        table = pa.table(
            {
                "id": [e.id for e in events],
                "user_id": [e.user_id for e in events],
                "kind": [e.kind for e in events],
                "weight": pa.array([e.weight for e in events], pa.float64()),
                "ts": pa.array(
                    [e.timestamp.astimezone(timezone.utc) for e in events],
                    pa.timestamp("us", tz="UTC"),
                ),
                "item_id": [e.item_id for e in events],
                "text": [e.text for e in events],
                "session_id": [e.session_id for e in events],
                "model_id": [e.model_id for e in events],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1), pa.float32()), self._dim
                ),
            },
            schema=self._event_schema(),
        )
        with self._errors("append events"):
            self._event_writer.submit(table)

    @_rereads_lost_versions
    def read_events(self, user_id: str) -> list[StoredEvent]:
        # Column-wise: vectors as one matrix and scalars as whole columns; a row-wise
        # to_pylist with one np.asarray per row dominated a profile rebuild.
        table = self._event_table(user_id)
        if table.num_rows == 0:
            return []
        vectors = self._vector_matrix(table["vector"])
        cols = {
            name: table[name].to_pylist()
            for name in ("id", "user_id", "kind", "weight", "ts", "item_id", "text")
        }
        sessions = table["session_id"].to_pylist()
        models = table["model_id"].to_pylist()
        return [
            StoredEvent(
                id=cols["id"][n],
                user_id=cols["user_id"][n],
                kind=cols["kind"][n],
                weight=float(cols["weight"][n]),
                timestamp=cols["ts"][n],
                item_id=cols["item_id"][n],
                text=cols["text"][n],
                session_id=sessions[n],
                model_id=models[n],
                vector=vectors[n],
            )
            for n in range(table.num_rows)
        ]

    @_rereads_lost_versions
    def read_event_arrays(self, user_id: str) -> EventArrays:
        import pyarrow.compute as pc

        search = (
            self._events.search()
            .where(f"user_id = {sql_literal(user_id)}")
            .select(["id", "weight", "ts", "vector"])
        )
        with self._errors("read events"):
            table = search.limit(None).to_arrow()
        if table.num_rows == 0:
            return event_arrays([], self._dim)
        order = pc.sort_indices(
            table.select(["ts", "id"]), sort_keys=[("ts", "ascending"), ("id", "ascending")]
        ).to_numpy()
        micros = table["ts"].to_numpy().astype("datetime64[us]").astype(np.int64)
        return EventArrays(
            vectors=_rows_in_order(table["vector"], order, self._dim),
            weights=np.asarray(table["weight"].to_numpy(), dtype=np.float64)[order],
            # Integer microseconds / 1e6 is the very float `datetime.timestamp()` gives.
            times=micros[order] / 1e6,
        )

    def _event_table(self, user_id: str) -> Any:
        """The user's events as an Arrow table in (time, id) order."""
        import pyarrow.compute as pc

        with self._errors("read events"):
            table = (
                self._events.search()
                .where(f"user_id = {sql_literal(user_id)}")
                .limit(None)
                .to_arrow()
            )
        if table.num_rows == 0:
            return table
        return table.take(
            pc.sort_indices(table, sort_keys=[("ts", "ascending"), ("id", "ascending")])
        )

    def append_turns(self, turns: Sequence[StoredTurn]) -> None:
        if not turns:
            return
        vectors = vector_matrix([t.vector for t in turns], self._dim, "append_turns")
        pa = self._pa
        table = pa.table(
            {
                "id": [t.id for t in turns],
                "user_id": [t.user_id for t in turns],
                "session_id": [t.session_id for t in turns],
                "role": [t.role for t in turns],
                "text": [t.text for t in turns],
                "ts": pa.array(
                    [t.timestamp.astimezone(timezone.utc) for t in turns],
                    pa.timestamp("us", tz="UTC"),
                ),
                "model_id": [t.model_id for t in turns],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1), pa.float32()), self._dim
                ),
            },
            schema=self._turn_schema(),
        )
        with self._errors("append turns"):
            self._turn_writer.submit(table)

    def _append(self, name: str, table: Any, rows: Any) -> None:
        """One commit, retried with jittered backoff while other processes hold the
        table: LanceDB's own retries give up under a burst of writers."""
        for attempt in range(8):
            try:
                table.add(rows)
                break
            except (OSError, RuntimeError, ValueError) as exc:
                if not _is_contention(str(exc)) or attempt == 7:
                    raise
                time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
        self._after_append(name, table)

    def _after_append(self, name: str, table: Any) -> None:
        """Compact once every _COMPACT_EVERY_APPENDS table versions, and fold new rows
        into the user_id index once every _FOLD_EVERY_APPENDS, whichever process
        wrote them. Counted per process, as before, a store written by short-lived
        processes (a CLI call per event, a worker restarted often) never reached the
        count, and every append stayed a file and a version for good."""
        try:
            version = int(table.version)
        except (OSError, RuntimeError, ValueError) as exc:  # the rows are committed
            _log.warning("compaction check of %s skipped: %r", name, exc)
            return
        with self._lock:
            last = self._versions_seen.get(name, version - 1)
            self._versions_seen[name] = version
        if version // _COMPACT_EVERY_APPENDS > last // _COMPACT_EVERY_APPENDS:
            try:
                self._compact(table)
            except Exception as exc:
                # The rows are committed; a compaction that lost a race with another
                # process (OSError, or pylance's CommitConflictError, a bare Exception)
                # only delays compaction. Failing the caller would make it retry and
                # write its events twice.
                _log.warning("compaction of %s skipped: %r", name, exc)
        elif version // _FOLD_EVERY_APPENDS > last // _FOLD_EVERY_APPENDS:
            try:
                table.to_lance().optimize.optimize_indices()
                table.checkout_latest()
            except Exception as exc:  # as above: only the reads' speed waits for the next
                _log.warning("index refresh of %s skipped: %r", name, exc)

    def _checkout_latest(self) -> None:
        with self._errors("checkout latest"):
            for table in (self._chunks, self._events, self._turns, self._users):
                table.checkout_latest()

    def _compact(self, table: Any, *, scrub: bool = False, ingest: bool = False) -> None:
        """Merge small files, fold new rows into the indexes, and delete the files of
        versions older than `keep_versions` (see _KEEP_VERSIONS for why).

        With `ingest` (the chunks' refresh during an ingest), new rows join the vector
        index only once that is due (_VECTOR_FOLD_FRACTION); until then they are merged
        only into files of _FTS_REFRESH_ROWS, so they are rewritten once, into full-size
        files, when they join it, instead of the whole growing tail at every refresh.
        Deleted rows are not purged either: rewriting an indexed file remaps the vector
        index over it, which costs as much as building it (22.4 s for one upsert that
        re-ingested documents of a 30,000-chunk store, bench/probe_ingest_index.py).
        `optimize` purges them by rebuilding the index instead (_MATERIALIZE_DELETIONS).

        With `scrub`, every fragment holding a deleted row is rewritten and every older
        version is deleted, so deleted rows (a forgotten user, expired events, values
        sealed with a retired key) leave the disk. Without it LanceDB rewrites a fragment
        only once a tenth of its rows are deleted: a user with 1 event in 1,000 left
        their text in the data file after `forget_user`.
        """
        # Through pylance: LanceDB's `optimize` merges every fragment under a million rows,
        # so each compaction rewrote the whole table (77 MB written to add 200 rows to a
        # 50,000-row log) and it takes no compaction options. Here fragments stop growing
        # at a bound, and a compaction rewrites at most that many rows.
        rows = _CHUNK_FRAGMENT_ROWS if table is self._chunks else _LOG_FRAGMENT_ROWS
        # A scrub rewrites every file holding a deleted row, and LanceDB would remap the
        # vector index over the rewritten files: about as costly as a build (one graph,
        # one partition), and ANN recall@50 fell from 0.976 to 0.936 after forgetting a
        # user who owned 1,000 of 100,000 chunks (bench/probe_forget_index.py; rebuilt:
        # 0.978, the forget 69 s against 54). Rebuilt instead, as `optimize` does.
        rebuild = (
            scrub
            and table is self._chunks
            and self._has_vector_index
            and self._deleted_share() > 0.0
        )
        if rebuild:
            self._drop_vector_index()
        fold_vectors = not ingest or self._vector_fold_due()
        if not fold_vectors:
            rows = _FTS_REFRESH_ROWS
        dataset = table.to_lance()
        dataset.optimize.compact_files(
            target_rows_per_fragment=rows,
            materialize_deletions=not ingest,
            materialize_deletions_threshold=0.0 if scrub else _MATERIALIZE_DELETIONS,
        )
        if not fold_vectors:
            others = [ix.name for ix in table.list_indices() if list(ix.columns) != ["vector"]]
            if others:
                dataset.optimize.optimize_indices(index_names=others)
        else:
            dataset.optimize.optimize_indices()
        with warnings.catch_warnings():
            # Readers of the deleted versions in other processes re-read on the latest
            # one (_rereads_lost_versions).
            warnings.simplefilter("ignore", UserWarning)
            dataset.cleanup_old_versions(
                older_than=timedelta(0) if scrub else self._keep_versions,
                delete_unverified=scrub,
            )
        table.checkout_latest()
        if rebuild:
            self._index_vectors()

    @_rereads_lost_versions
    def read_turns(self, user_id: str, session_id: str) -> list[StoredTurn]:
        return self._read_turns(
            f"user_id = {sql_literal(user_id)} AND session_id = {sql_literal(session_id)}"
        )

    def _read_turns(self, where: str) -> list[StoredTurn]:
        """The turns matching `where`, oldest first (ties by id)."""
        with self._errors("read turns"):
            rows = self._turns.search().where(where).limit(None).to_arrow().to_pylist()
        out = [
            StoredTurn(
                id=r["id"],
                user_id=r["user_id"],
                session_id=r["session_id"],
                role=r["role"],
                text=r["text"],
                timestamp=r["ts"],
                model_id=r["model_id"],
                vector=np.asarray(r["vector"], dtype=np.float32),
            )
            for r in rows
        ]
        out.sort(key=lambda t: (t.timestamp, t.id))
        return out

    # ------------------------------------------------------------------ rewriting
    # What key rotation and re-embedding need (`RewritableStore`): every user-owned
    # row, and rewriting rows in place by id, one commit per call.

    @_rereads_lost_versions
    def chunk_owners(self) -> list[str]:
        """Every user that owns at least one chunk (memories, owned documents)."""
        with self._errors("list chunk owners"):
            col = (
                self._chunks.search().where("owner != ''").select(["owner"]).limit(None).to_arrow()
            )
        return sorted(set(col["owner"].to_pylist()))

    @_rereads_lost_versions
    def owned_chunks(self, user_id: str) -> list[Chunk]:
        """Every chunk `user_id` owns, with vectors, by id."""
        with self._errors("read owned chunks"):
            table = (
                self._chunks.search()
                .where(f"owner = {sql_literal(user_id)}")
                .limit(None)
                .to_arrow()
            )
        return sorted(self._arrow_to_chunks(table), key=lambda c: c.id)

    @_rereads_lost_versions
    def shared_chunks(self) -> list[Chunk]:
        """Every shared (unowned) chunk, with vectors, by id."""
        with self._errors("read shared chunks"):
            table = self._chunks.search().where("owner = ''").limit(None).to_arrow()
        return sorted(self._arrow_to_chunks(table), key=lambda c: c.id)

    @_rereads_lost_versions
    def user_settings_ids(self) -> list[str]:
        """Every user with stored settings (consent), whether or not they have data."""
        with self._errors("list user settings"):
            col = self._users.search().select(["user_id"]).limit(None).to_arrow()["user_id"]
        return sorted(set(col.to_pylist()))

    @_rereads_lost_versions
    def read_user_turns(self, user_id: str) -> list[StoredTurn]:
        """Every turn of every session of `user_id`, oldest first."""
        return self._read_turns(f"user_id = {sql_literal(user_id)}")

    def rewrite_events(self, events: Sequence[StoredEvent]) -> int:
        """Overwrite the events with these ids (a row that is gone is not added back);
        one commit, so a crash leaves each row either old or new."""
        if not events:
            return 0
        vector_matrix([e.vector for e in events], self._dim, "rewrite_events")
        rows = [
            {
                "id": e.id,
                "user_id": e.user_id,
                "kind": e.kind,
                "weight": float(e.weight),
                "ts": e.timestamp.astimezone(timezone.utc),
                "item_id": e.item_id,
                "text": e.text,
                "session_id": e.session_id,
                "model_id": e.model_id,
                "vector": np.asarray(e.vector, dtype=np.float32).tolist(),
            }
            for e in events
        ]
        return self._rewrite(self._events, rows, self._event_schema(), "rewrite events")

    def rewrite_turns(self, turns: Sequence[StoredTurn]) -> int:
        """Overwrite the turns with these ids, like `rewrite_events`."""
        if not turns:
            return 0
        vector_matrix([t.vector for t in turns], self._dim, "rewrite_turns")
        rows = [
            {
                "id": t.id,
                "user_id": t.user_id,
                "session_id": t.session_id,
                "role": t.role,
                "text": t.text,
                "ts": t.timestamp.astimezone(timezone.utc),
                "model_id": t.model_id,
                "vector": np.asarray(t.vector, dtype=np.float32).tolist(),
            }
            for t in turns
        ]
        return self._rewrite(self._turns, rows, self._turn_schema(), "rewrite turns")

    def _rewrite(self, table: Any, rows: list[dict[str, Any]], schema: Any, what: str) -> int:
        data = self._pa.Table.from_pylist(rows, schema=schema)
        with self._lock, self._errors(what):
            table.merge_insert("id").when_matched_update_all().execute(data)
            # The old row versions would otherwise stay on disk and readable by time travel.
            self._compact(table, scrub=True)
        return len(rows)

    def drop_old_versions(self) -> None:
        """Compact every table and delete older versions and unreferenced files, so rows
        that were rewritten (re-sealed, re-embedded) are gone from disk, not just hidden."""
        with self._lock, self._errors("drop old versions"):
            for table in (self._chunks, self._events, self._turns, self._users):
                self._compact(table, scrub=True)
            self._unindexed = 0

    @_rereads_lost_versions
    def known_users(self) -> list[str]:
        with self._errors("list users"):
            users = set(
                self._events.search()
                .select(["user_id"])
                .limit(None)
                .to_arrow()["user_id"]
                .to_pylist()
            )
            users |= set(
                self._turns.search()
                .select(["user_id"])
                .limit(None)
                .to_arrow()["user_id"]
                .to_pylist()
            )
        return sorted(users)

    def delete_user(self, user_id: str) -> Mapping[str, int]:
        """Delete the user's rows, then compact and drop old table versions so LanceDB's
        time travel cannot bring a forgotten user back."""
        lit = sql_literal(user_id)
        counts: dict[str, int] = {}
        self._vector_cache.clear()  # the version check would drop them; do not keep them
        self._row_index = None  # nor their chunk ids
        with self._lock, self._errors("forget user"):
            for name, table, where in (
                ("events", self._events, f"user_id = {lit}"),
                ("turns", self._turns, f"user_id = {lit}"),
                ("owned_chunks", self._chunks, f"owner = {lit}"),
                ("user_settings", self._users, f"user_id = {lit}"),
            ):
                counts[name] = self._delete_and_scrub(table, where)
        return counts

    def _delete_and_scrub(self, table: Any, where: str) -> int:
        """Delete rows, then compact and drop every older table version and unreferenced
        file, so neither time travel nor a stale data file keeps the deleted rows."""
        n = int(table.count_rows(where))
        if n:
            table.delete(where)
            self._compact(table, scrub=True)
        return n

    def purge_before(self, log: str, cutoff: datetime) -> int:
        """Delete log rows (`events` or `turns`) older than `cutoff`, for every user."""
        table = {"events": self._events, "turns": self._turns}.get(log)
        if table is None:
            raise ValueError(f"unknown log {log!r}; expected 'events' or 'turns'")
        ts = cutoff.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
        with self._lock, self._errors("retention"):
            return self._delete_and_scrub(
                table, f"ts < arrow_cast('{ts}', 'Timestamp(Microsecond, Some(\"UTC\"))')"
            )

    @_rereads_lost_versions
    def get_user_settings(self, user_id: str) -> dict[str, Any] | None:
        with self._errors("read user settings"):
            rows = (
                self._users.search()
                .where(f"user_id = {sql_literal(user_id)}")
                .limit(1)
                .to_arrow()
                .to_pylist()
            )
        return json.loads(rows[0]["meta"]) if rows else None

    def put_user_settings(self, user_id: str, settings: Mapping[str, Any]) -> None:
        pa = self._pa
        row = pa.table(
            {
                "user_id": [user_id],
                "meta": [json.dumps(dict(settings), sort_keys=True)],
                "updated": pa.array([datetime.now(timezone.utc)], pa.timestamp("us", tz="UTC")),
            },
            schema=self._user_schema(),
        )
        with self._lock, self._errors("write user settings"):
            (
                self._users.merge_insert("user_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(row)
            )
        # Each write is a version and a small file, like a log append: without
        # compaction, every consent read scanned one file per write ever made.
        self._after_append("users", self._users)

    def close(self) -> None:
        """Stop the search pool and the log writers (after they commit what is queued).
        LanceDB itself holds no connection or lock."""
        self._pool.shutdown(wait=True)  # a search in flight finishes; then no thread stays
        self._vector_cache.clear()
        self._event_writer.close()
        self._turn_writer.close()
