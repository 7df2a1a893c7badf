"""Soak test (issue 9, part 6; outside CI): many retrieves in one process, measuring
resident memory (RSS), open file descriptors and threads over time, then checking that
closing pertinent gives back its descriptors and threads.

The store is embedded (LanceDB) with the project's README and docs/ as the corpus.
Each retrieve is for one of `--users` users, in one of five sessions each; every 10th
(`--remember-every`) remembers the query (an event and a session turn: the logs grow)
and every 20th (`--record-every`) records an `accept`. The profile and session caches
are set smaller than the number of users (`--cache`), so eviction and refolding run all
the time. Queries come from a pool of `--queries` texts (the query-embedding LRU holds
them after the first round).

Usage: python bench/soak_retrieve.py [--retrieves 100000] [--users 1000] [--cache 200]
       [--samples 20] [--queries 2000] [--remember-every 10] [--record-every 20]
       [--threads 1] [--lancedb-cache-mib 64] [--lancedb-log-cache-mib 16]
Prints one line per sample (retrieves, seconds, RSS MiB, fds, threads, the bytes
LanceDB's bounded caches hold, which RSS includes until they are full, glibc malloc's
bytes in use and free-but-kept, Python's allocated blocks, and the part of RSS not
backed by files) and the summary
(RSS at start/middle/end, growth over the second half). Exits 1 if descriptors or
threads are not released on close.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pertinent
from pertinent import Event
from pertinent.demo import find_project_root

WORDS = tuple(
    [
        "keys",
        "rotate",
        "budget",
        "tokens",
        "session",
        "profile",
        "store",
        "weaviate",
        "lancedb",
        "hybrid",
        "search",
        "rerank",
        "memory",
        "forget",
        "consent",
        "events",
        "packing",
        "citations",
        "retention",
        "audit",
        "encryption",
        "latency",
        "cache",
        "breaker",
        "degraded",
        "fallback",
        "langchain",
        "llamaindex",
        "chunk",
        "overlap",
    ]
)


def rss_mib(field: str = "VmRSS") -> float:
    """Resident memory from /proc/self/status: VmRSS in all, or RssAnon, its part not
    backed by a file. The rest (RssFile) is pages of mapped files: the shared libraries
    (LanceDB's and pylance's are 180-190 MiB each, torch's 414 MiB) and the model, paged
    in as code paths first run, bounded by their sizes and given back under pressure."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _MallInfo2(ctypes.Structure):
    # glibc's struct mallinfo2 (malloc.h, glibc >= 2.33), every field a size_t
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def malloc_mib() -> tuple[float, float]:
    """glibc malloc's bytes in use (heap and mmapped) and bytes free but kept in its
    heaps, over every arena; NaN where glibc's mallinfo2 is missing. Rust's allocations
    (LanceDB, pylance, tokenizers) go through it too, so this splits a rise in RSS into
    memory held by live objects and memory freed but not given back."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return float("nan"), float("nan")
    fn.restype = _MallInfo2
    m = fn()
    return (m.uordblks + m.hblkhd) / 2**20, m.fordblks / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrieves", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--cache", type=int, default=200, help="profile and session cache sizes")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="worker threads sharing the client")
    ap.add_argument("--remember-every", type=int, default=10, help="0: never remember")
    ap.add_argument("--record-every", type=int, default=20, help="0: never record")
    ap.add_argument(
        "--lancedb-cache-mib",
        type=int,
        default=64,
        help="Settings.lancedb_cache_mib: the chunks' LanceDB metadata cache, MiB; "
        "0: LanceDB's own defaults (gigabytes)",
    )
    ap.add_argument(
        "--lancedb-log-cache-mib",
        type=int,
        default=pertinent.Settings().lancedb_log_cache_mib,
        help="Settings.lancedb_log_cache_mib: the event and turn logs' LanceDB caches, MiB "
        "each; 0: LanceDB's own defaults",
    )
    args = ap.parse_args()
    rng = random.Random(args.seed)
    queries = [
        f"how does {rng.choice(WORDS)} work with {rng.choice(WORDS)} and {rng.choice(WORDS)}?"
        for _ in range(args.queries)
    ]

    root = find_project_root()
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    tmp = tempfile.TemporaryDirectory(prefix="pertinent-soak-")
    settings = pertinent.Settings(
        lancedb_cache_mib=args.lancedb_cache_mib,
        lancedb_log_cache_mib=args.lancedb_log_cache_mib,
        profile_cache_size=args.cache,
        session_cache_size=args.cache,
        show_progress=False,
    )
    # the model is loaded (and run once) first: its files and torch's threads are not
    # the store's, and stay for the life of the process
    embedder = pertinent.CachedQueryEmbedder(pertinent.SentenceTransformerEmbedder(), 4096)
    embedder.embed_documents(["warm up"])
    embedder.embed_query("warm up")
    # LanceDB starts its runtime (threads, epoll and event descriptors) on first use and
    # keeps it for the process: one open/close first, so the baseline includes it
    # (and so does pylance's, which the store's compactions start: optimize runs one)
    with pertinent.open(Path(tmp.name) / "warm", settings=settings, embedder=embedder) as warm:
        warm.ingest("warm up")
        warm.retrieve("warm up", user_id="w", session_id="w")
        getattr(warm.store, "optimize", lambda: None)()
    time.sleep(1.0)
    fds_before, threads_before = fds(), threading.active_count()
    px = pertinent.open(Path(tmp.name) / "store", settings=settings, embedder=embedder)
    report = px.ingest(docs)
    print(f"corpus: {report.documents} documents, {report.chunks} chunks")
    chunk_ids = [r.id for r in px.search("pertinent", top_k=10)]

    every = max(1, args.retrieves // args.samples)
    # retrieves, seconds, RSS MiB, fds, threads, RSS anon MiB
    samples: list[tuple[int, float, float, int, int, float]] = []
    counter = itertools.count(1)  # next() on it is atomic under the GIL
    t0 = time.perf_counter()
    print(
        f"{'retrieves':>9} {'seconds':>8} {'RSS MiB':>8} {'fds':>5} {'threads':>7} "
        f"{'LanceDB cache MiB':>17} {'malloc used MiB':>15} {'malloc free MiB':>15} "
        f"{'Python blocks k':>15} {'RSS anon MiB':>12}"
    )
    cache_bytes = getattr(px.store, "cache_bytes", lambda: None)

    def work(seed: int) -> None:
        r = random.Random(seed)
        while (i := next(counter)) <= args.retrieves:
            user = f"u{r.randrange(args.users)}"
            ctx = px.retrieve(
                queries[i % len(queries)],
                user_id=user,
                session_id=f"s{i % 5}",
                remember=args.remember_every > 0 and i % args.remember_every == 0,
            )
            if args.record_every > 0 and i % args.record_every == 0 and ctx.results:
                px.record(user, Event(kind="accept", item_id=r.choice(chunk_ids)))
            if i % every == 0 or i == 1:
                s = (
                    i,
                    time.perf_counter() - t0,
                    rss_mib(),
                    fds(),
                    threading.active_count(),
                    rss_mib("RssAnon"),
                )
                samples.append(s)
                held = cache_bytes()
                cache = "-" if held is None else f"{held / 2**20:.1f}"
                used, free = malloc_mib()
                blocks = sys.getallocatedblocks() / 1000
                print(
                    f"{s[0]:>9} {s[1]:>8.0f} {s[2]:>8.0f} {s[3]:>5} {s[4]:>7} {cache:>17} "
                    f"{used:>15.0f} {free:>15.0f} {blocks:>15.0f} {s[5]:>12.0f}",
                    flush=True,
                )

    # Worker threads share one client, as a server's request threads do.
    with ThreadPoolExecutor(args.threads, thread_name_prefix="soak") as pool:
        for job in [pool.submit(work, args.seed + n) for n in range(args.threads)]:
            job.result()
    samples.sort()
    cached = (len(px._profiles), len(px._sessions), len(px._consents))
    px.close()
    time.sleep(1.0)  # the executor's threads exit after shutdown(wait=False)
    fds_after, threads_after = fds(), threading.active_count()
    tmp.cleanup()

    first = samples[1] if len(samples) > 1 else samples[0]
    middle, last = samples[len(samples) // 2], samples[-1]
    print()
    print(f"retrieves: {args.retrieves} in {last[1]:.0f} s ({args.retrieves / last[1]:.0f}/s)")
    print(
        f"RSS MiB: start {first[2]:.0f} (after {first[0]}), middle {middle[2]:.0f} "
        f"(after {middle[0]}), end {last[2]:.0f} (after {last[0]})"
    )
    print(f"RSS growth over the second half: {last[2] - middle[2]:+.0f} MiB")
    print(f"RSS anon growth over the second half: {last[5] - middle[5]:+.0f} MiB")
    print(f"cached profiles, sessions, consents at the end: {cached} (--cache {args.cache})")
    top = max(s[3] for s in samples)
    print(f"fds: before open {fds_before}, during (max) {top}, after close {fds_after}")
    print(f"threads: before open {threads_before}, after close {threads_after}")
    leaked = fds_after > fds_before + 3 or threads_after > threads_before + 3
    print("LEAK" if leaked else "released on close: OK")
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
