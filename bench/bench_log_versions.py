"""Old table versions in the event log (issue 9, part 6; outside CI): disk use and read
time of a log appended to one commit at a time, with pertinent's version retention
(`Settings.lancedb_keep_versions_s`, 60 s) against LanceDB's own (7 days), in one run.

Every append is a LanceDB commit and a table version; the store compacts the log every
200 versions (pertinent/stores/lancedb.py, _COMPACT_EVERY_APPENDS). Compaction writes new
files, and the old versions keep the old ones until they are older than the retention.
Drives `LanceDBStore` directly with random vectors: no embedding model, so the figures
are the store's alone.

Usage: python bench/bench_log_versions.py [--commits 4000] [--samples 4] [--reads 20]
       [--keep 60,604800]
Prints, per retention and sample: commits, versions on disk, data files, MiB on disk,
and the median and p95 of one user's filtered read of the log.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("LANCEDB_LOG", "error")

from pertinent.stores.base import StoredEvent
from pertinent.stores.lancedb import LanceDBStore

DIM = 384
USERS = 100


def _event(i: int, rng: np.random.Generator) -> StoredEvent:
    v = rng.standard_normal(DIM).astype(np.float32)
    return StoredEvent(
        id=f"e{i}",
        user_id=f"u{i % USERS}",
        kind="query",
        weight=1.0,
        timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=i),
        item_id=None,
        text=None,
        session_id=None,
        model_id="bench",
        vector=v / np.linalg.norm(v),
    )


def _disk(table: Path) -> tuple[int, int, float]:
    versions = sum(1 for _ in (table / "_versions").iterdir())
    data = sum(1 for _ in (table / "data").iterdir())
    size = sum(p.stat().st_size for p in table.rglob("*") if p.is_file())
    return versions, data, size / 2**20


def run(keep_s: float, commits: int, samples: int, reads: int) -> list[tuple[float, ...]]:
    rng = np.random.default_rng(0)
    rows: list[tuple[float, ...]] = []
    with tempfile.TemporaryDirectory(prefix="pertinent-bench-versions-") as tmp:
        store = LanceDBStore(
            Path(tmp) / "s", model_id="bench", dim=DIM, keep_versions=timedelta(seconds=keep_s)
        )
        every = max(1, commits // samples)
        start = time.perf_counter()
        for i in range(commits):
            store.append_events([_event(i, rng)])
            if (i + 1) % every == 0:
                elapsed = time.perf_counter() - start
                times = []
                for r in range(reads):
                    t0 = time.perf_counter()
                    store.read_events(f"u{r % USERS}")
                    times.append((time.perf_counter() - t0) * 1000)
                times.sort()
                versions, data, mib = _disk(store.path / "events.lance")
                p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
                row = (i + 1, versions, data, mib, statistics.median(times), p95, elapsed)
                rows.append(row)
                print(
                    f"keep {keep_s:>9.0f} s  commits {i + 1:>6}  versions {versions:>6}  "
                    f"data files {data:>6}  {mib:8.1f} MiB  read p50 {row[4]:6.1f} ms  "
                    f"p95 {p95:6.1f} ms  ({elapsed:.0f} s)",
                    flush=True,
                )
        store.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=4000)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--reads", type=int, default=20)
    ap.add_argument(
        "--keep",
        default="60,604800",
        help="retentions to compare, seconds, comma-separated (604800 = LanceDB's 7 days)",
    )
    args = ap.parse_args()
    if args.commits < 1 or args.samples < 1 or args.reads < 1:
        print("--commits, --samples and --reads must be at least 1", file=sys.stderr)
        return 2
    for keep in (float(k) for k in args.keep.split(",")):
        run(keep, args.commits, args.samples, args.reads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
