"""Write soak (issue 9, part 6; outside CI): resident memory (RSS) of a process that
records events one commit at a time on the embedded store, with and without pertinent's
malloc settings (`Settings.malloc_mmap_threshold_kib`, `Settings.malloc_arena_max`,
pertinent/stores/allocator.py).

Each `record` of one event is one LanceDB commit, the write pattern of an agent that
records feedback as it comes. With glibc's own malloc settings, freed write buffers
stay in fragmented heaps and RSS grows with every commit; run the settings in separate
processes (they are process-wide) and compare.

Usage: python bench/soak_writes.py [--commits 25000] [--samples 25]
       [--mmap-threshold-kib 1024|none] [--arena-cap none|N] [--index-cache-mib 1024]
Prints one line per sample (commits, seconds, RSS MiB) and the growth over the run and
over its second half.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")

from soak_retrieve import rss_mib

import pertinent
from pertinent import Event


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=25_000)
    ap.add_argument("--samples", type=int, default=25)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument(
        "--mmap-threshold-kib",
        default=str(pertinent.Settings().malloc_mmap_threshold_kib),
        help="Settings.malloc_mmap_threshold_kib: an int, or 'none' for glibc's own",
    )
    ap.add_argument(
        "--arena-cap", default="none", help="Settings.malloc_arena_max: an int, or 'none'"
    )
    ap.add_argument(
        "--index-cache-mib",
        type=int,
        default=pertinent.Settings().lancedb_index_cache_mib,
        help="Settings.lancedb_index_cache_mib",
    )
    args = ap.parse_args()
    cap = None if args.arena_cap.lower() == "none" else int(args.arena_cap)
    mmap = None if args.mmap_threshold_kib.lower() == "none" else int(args.mmap_threshold_kib)
    for env in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        if os.environ.get(env):
            print(f"{env} is set in the environment: it decides, not the option")
    rng = random.Random(0)
    settings = pertinent.Settings(
        show_progress=False,
        malloc_mmap_threshold_kib=mmap,
        malloc_arena_max=cap,
        lancedb_index_cache_mib=args.index_cache_mib,
    )
    with tempfile.TemporaryDirectory(prefix="pertinent-soak-writes-") as tmp:
        px = pertinent.open(Path(tmp) / "store", settings=settings)
        report = px.ingest([f"passage {i} about topic {i % 17}" for i in range(200)])
        ids = [r.id for r in px.search("passage topic", top_k=50)]
        print(
            f"mmap threshold: {mmap} KiB; arena cap: {cap}; "
            f"index cache {args.index_cache_mib} MiB; "
            f"corpus {report.chunks} chunks"
        )
        print(f"{'commits':>8} {'seconds':>8} {'RSS MiB':>8}")
        every = max(1, args.commits // args.samples)
        samples: list[tuple[int, float, float]] = []
        t0 = time.perf_counter()
        for i in range(1, args.commits + 1):
            px.record(f"u{rng.randrange(args.users)}", Event(kind="open", item_id=rng.choice(ids)))
            if i % every == 0 or i == 1:
                samples.append((i, time.perf_counter() - t0, rss_mib()))
                print(f"{i:>8} {samples[-1][1]:>8.0f} {samples[-1][2]:>8.0f}", flush=True)
        px.close()
    first, middle, last = samples[1], samples[len(samples) // 2], samples[-1]
    print()
    print(f"commits: {args.commits} in {last[1]:.0f} s ({args.commits / last[1]:.0f}/s)")
    print(
        f"RSS MiB: start {first[2]:.0f} (after {first[0]}), middle {middle[2]:.0f}, "
        f"end {last[2]:.0f}; growth {last[2] - first[2]:+.0f}, "
        f"over the second half {last[2] - middle[2]:+.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
