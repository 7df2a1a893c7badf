"""Bytes written by the event log's compactions (issue 9, part 6; outside CI): LanceDB's
own `optimize`, which merges every fragment under a million rows into one (so each
compaction rewrites the whole log), against pertinent's compaction of the logs, whose
fragments stop at `_LOG_FRAGMENT_ROWS` (pertinent/stores/lancedb.py, `_compact`).

Drives `LanceDBStore` directly with random 384-d vectors, `--batch` events per append,
a compaction each time the log's version crosses a multiple of `--every` (about every
`--every` appends; the store's own interval is 200 versions, of single-event appends
in a typical agent; a smaller one reaches a large log sooner with the same pattern). Bytes written
are the process's own (`wchar` in /proc/self/io: bytes passed to write calls, whatever
the file system), so they count everything the store wrote: the appends, the
compactions and the index updates.

Usage: python bench/bench_log_compaction.py [--rows 50000] [--batch 100] [--every 20]
Prints, per method and per tenth of the run: rows, MiB written so far, seconds so far,
and at the end the fragments of the log and the MiB on disk.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("LANCEDB_LOG", "error")

from pertinent.stores import lancedb as lancedb_store
from pertinent.stores.base import StoredEvent
from pertinent.stores.lancedb import LanceDBStore

DIM = 384


def _written() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def _events(start: int, n: int, rng: np.random.Generator) -> list[StoredEvent]:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return [
        StoredEvent(
            id=f"e{start + i}",
            user_id=f"u{(start + i) % 100}",
            kind="query",
            weight=1.0,
            timestamp=t0 + timedelta(seconds=start + i),
            item_id=None,
            text=None,
            session_id=None,
            model_id="bench",
            vector=vectors[i],
        )
        for i in range(n)
    ]


def _lancedb_optimize(self: LanceDBStore, table: Any) -> None:
    """The baseline: LanceDB's own compaction, with the same version retention."""
    table.optimize(cleanup_older_than=self._keep_versions)


def run(method: str, rows: int, batch: int, every: int) -> None:
    rng = np.random.default_rng(0)
    lancedb_store._COMPACT_EVERY_APPENDS = every
    original = LanceDBStore._compact
    if method == "lancedb-optimize":
        LanceDBStore._compact = _lancedb_optimize  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory(prefix="pertinent-bench-compaction-") as tmp:
            store = LanceDBStore(Path(tmp) / "s", model_id="bench", dim=DIM)
            w0, t0 = _written(), time.perf_counter()
            step = max(batch, rows // 10)
            done = 0
            while done < rows:
                n = min(batch, rows - done)
                store.append_events(_events(done, n, rng))
                done += n
                if done % step < batch or done == rows:
                    print(
                        f"{method:>17}  rows {done:>8}  written {(_written() - w0) / 2**20:9.1f}"
                        f" MiB  {time.perf_counter() - t0:7.1f} s",
                        flush=True,
                    )
            frags = store._events.stats()["fragment_stats"]["num_fragments"]
            disk = sum(
                p.stat().st_size for p in (store.path / "events.lance").rglob("*") if p.is_file()
            )
            print(f"{method:>17}  fragments {frags}  on disk {disk / 2**20:.1f} MiB", flush=True)
            store.close()
    finally:
        LanceDBStore._compact = original  # type: ignore[method-assign]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--methods", default="lancedb-optimize,pertinent")
    args = ap.parse_args()
    if min(args.rows, args.batch, args.every) < 1:
        print("--rows, --batch and --every must be at least 1", file=sys.stderr)
        return 2
    for method in args.methods.split(","):
        if method not in ("lancedb-optimize", "pertinent"):
            print(f"unknown method {method!r}: lancedb-optimize or pertinent", file=sys.stderr)
            return 2
        run(method, args.rows, args.batch, args.every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
