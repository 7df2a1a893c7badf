"""LanceDB alone, no pertinent: RSS of a process appending one row per commit.

The reproducer behind pertinent/stores/allocator.py: run it under different glibc malloc
settings (environment variables, read at start-up) and compare, e.g.

    python bench/probe_lancedb_rss.py --commits 8000
    MALLOC_MMAP_THRESHOLD_=1048576 python bench/probe_lancedb_rss.py --commits 8000
    MALLOC_ARENA_MAX=2 python bench/probe_lancedb_rss.py --commits 8000

Rows are like pertinent's session turns (two strings and a 384-d vector); the table is
compacted every 200 commits, with old versions removed (`--keep-versions` keeps them).
LanceDB's caches are bounded at `--cache-mib` each (its metadata cache keeps every
committed version's metadata until the bound evicts it, so RSS rises until the cache is
full: compare `--cache-mib 64` with `--cache-mib 16`).
Prints commits, RSS growth since the start in MiB, seconds, and the MiB LanceDB's caches
hold.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from datetime import timedelta

os.environ.setdefault("LANCEDB_LOG", "error")

import lancedb
import numpy as np
import pyarrow as pa


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=8000)
    ap.add_argument("--every", type=int, default=500, help="print a sample every N commits")
    ap.add_argument("--keep-versions", action="store_true")
    ap.add_argument("--cache-mib", type=int, default=64, help="LanceDB's two caches, MiB each")
    args = ap.parse_args()
    # "cleanup_older_than=0 removes every version": intended, nothing else reads it.
    warnings.simplefilter("ignore", UserWarning)
    env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    print(f"malloc environment: {env or 'glibc defaults'}")
    schema = pa.schema(
        [("id", pa.string()), ("user_id", pa.string()), ("vector", pa.list_(pa.float32(), 384))]
    )
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="lancedb-rss-") as tmp:
        session = lancedb.Session(
            index_cache_size_bytes=args.cache_mib << 20,
            metadata_cache_size_bytes=args.cache_mib << 20,
        )
        db = lancedb.connect(tmp, read_consistency_interval=timedelta(0), session=session)
        table = db.create_table("turns", schema=schema)
        cleanup = None if args.keep_versions else timedelta(0)
        start, t0 = rss_mib(), time.perf_counter()
        print(f"{'commits':>8} {'RSS +MiB':>9} {'seconds':>8} {'cache MiB':>9}")
        for i in range(1, args.commits + 1):
            vector = rng.standard_normal(384).astype(np.float32)
            row = pa.table(
                {
                    "id": [f"t{i}"],
                    "user_id": [f"u{i % 50}"],
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vector), 384),
                },
                schema=schema,
            )
            table.add(row)
            if i % 200 == 0:
                table.optimize(cleanup_older_than=cleanup)
            if i % args.every == 0:
                held = session.size_bytes / 2**20
                seconds = time.perf_counter() - t0
                print(f"{i:>8} {rss_mib() - start:>9.1f} {seconds:>8.1f} {held:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
