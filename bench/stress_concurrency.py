"""Stress test of concurrent writers on one embedded store (issue 9, part 1; outside CI,
tests/reliability/test_concurrency.py is the small version that runs in CI).

8 threads in this process and 4 other processes record `--events` events each (in
`record` calls of `--batch` events; 1 = one call per event) for overlapping users,
while reader threads retrieve for the same users until the writers finish. Then it checks:
- exactly-once: every event acknowledged is in the log once (a unique marker per event);
- profile == refold: each live, incrementally folded profile equals the fold of its
  log's events written through this process, and a fresh client's profile equals the
  fold of the whole log.

Usage: python bench/stress_concurrency.py [--events 10000] [--threads 8] [--procs 4]
       [--users 6] [--readers 2] [--batch 1]
Prints the figures (wall time, events, duplicates, missing, mismatches) and exits 1 if
any check fails.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

import pertinent
from pertinent import Event
from pertinent.memory.profiles import UserProfile

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DOCS = [
    ("keys", "Rotate API keys every 90 days from the admin console."),
    ("billing", "Invoices are issued on the first day of each month."),
    ("refunds", "Refunds take five business days to reach the card."),
    ("lc", "LangChain retrievers wrap a vector store and a document compressor."),
    ("li", "LlamaIndex query engines call a retriever, then node postprocessors."),
    ("rust", "The Rust borrow checker rejects two mutable references to one value."),
    ("tax", "Capital gains tax applies to shares held for less than a year."),
    ("tls", "Renew TLS certificates thirty days before they expire."),
]
KINDS = ("open", "click", "accept", "skip", "like", "reject")
QUERIES = ("rotate keys", "refund to my card", "which retriever?", "tax on shares", "tls renew")


def _event(wid: int, i: int, users: int) -> tuple[str, Event]:
    """The i-th event of writer `wid`: overlapping users, a unique marker text, a
    unique timestamp (order-independent folds must still agree)."""
    doc = DOCS[(i * 7 + wid) % len(DOCS)][0]
    user = f"u{(i + wid) % users}"
    return user, Event(
        kind=KINDS[(i + wid) % len(KINDS)],
        item_id=f"{doc}#0",
        text=f"w{wid}-{i}",
        timestamp=T0 + timedelta(seconds=wid * 1_000_000 + i),
    )


def _record_all(px: pertinent.Pertinent, wid: int, n: int, users: int, batch: int) -> int:
    """Writer `wid`'s n events, `batch` per call (each call is for one user)."""
    acked = 0
    pending: dict[str, list[Event]] = {}
    for i in range(n):
        user, event = _event(wid, i, users)
        pending.setdefault(user, []).append(event)
        if len(pending[user]) >= batch:
            acked += px.record(user, pending.pop(user))
    for user, events in pending.items():
        acked += px.record(user, events)
    return acked


def _writer_process(path: str, wid: int, n: int, users: int, batch: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    px = pertinent.open(path)
    acked = 0
    try:
        acked = _record_all(px, wid, n, users, batch)
    finally:
        px.close()
        out.put((wid, acked))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000, help="events per writer")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="events per record() call")
    args = ap.parse_args()
    n = args.events

    tmp = tempfile.TemporaryDirectory(prefix="pertinent-stress-")
    path = Path(tmp.name) / "store"
    px = pertinent.open(path)
    px.ingest([{"id": d, "text": t} for d, t in DOCS], show_progress=False)
    users = [f"u{k}" for k in range(args.users)]
    for u in users:
        px.profile(u)  # cached before the writes: folded incrementally from here on

    errors: list[BaseException] = []
    acked_threads = [0] * args.threads
    done = threading.Event()
    retrieves = [0] * args.readers

    def write(t: int) -> None:
        wid = 100 + t  # thread writers: ids 100.., processes: 0..
        try:
            acked_threads[t] = _record_all(px, wid, n, args.users, args.batch)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def read(r: int) -> None:
        try:
            while not done.is_set():
                q = QUERIES[retrieves[r] % len(QUERIES)]
                ctx = px.retrieve(q, user_id=users[retrieves[r] % len(users)], remember=False)
                assert ctx.results
                retrieves[r] += 1
        except BaseException as exc:
            errors.append(exc)

    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(target=_writer_process, args=(str(path), w, n, args.users, args.batch, results))
        for w in range(args.procs)
    ]
    writers = [threading.Thread(target=write, args=(t,)) for t in range(args.threads)]
    readers = [threading.Thread(target=read, args=(r,)) for r in range(args.readers)]
    t0 = time.perf_counter()
    for x in [*procs, *writers, *readers]:
        x.start()
    for w in writers:
        w.join()
    acked_procs = dict(results.get() for _ in procs)
    for p in procs:
        p.join()
    done.set()
    for r in readers:
        r.join()
    wall = time.perf_counter() - t0

    expected = {f"w{100 + t}-{i}" for t in range(args.threads) for i in range(n)}
    expected |= {f"w{w}-{i}" for w in range(args.procs) for i in range(n)}
    logs = {u: px.store.read_events(u) for u in users}
    texts = [e.text for log in logs.values() for e in log]
    duplicates = len(texts) - len(set(texts))
    missing = len(expected - set(texts))
    extra = len(set(texts) - expected)

    mismatches = 0
    fresh = pertinent.Pertinent(px.store, px.embedder, px.settings)
    for u in users:
        log = logs[u]
        own = [e for e in log if e.text and int(e.text[1:].split("-")[0]) >= 100]
        live = px._profiles[u].state()[0]
        mine = UserProfile.rebuild(
            px.embedder.dim,
            [(e.vector, e.weight, e.timestamp) for e in own],
            half_life_days=px.settings.half_life_days,
        ).state()[0]
        whole = UserProfile.rebuild(
            px.embedder.dim,
            [(e.vector, e.weight, e.timestamp) for e in log],
            half_life_days=px.settings.half_life_days,
        ).state()[0]
        if not np.allclose(live, mine, rtol=1e-9, atol=1e-12):
            mismatches += 1
        if not np.allclose(fresh._user_profile(u).state()[0], whole, rtol=1e-9, atol=1e-12):
            mismatches += 1
    px.close()

    total_acked = sum(acked_threads) + sum(acked_procs.values())
    print(
        f"writers: {args.threads} threads + {args.procs} processes, {n} events each, "
        f"{args.batch} per record() call"
    )
    print(f"users: {args.users}, readers: {args.readers} threads")
    print(f"wall time: {wall:.1f} s")
    print(f"events acknowledged: {total_acked} (expected {len(expected)})")
    print(f"events in the logs: {len(texts)}")
    print(f"events/s (all writers): {total_acked / wall:.0f}")
    print(f"retrieves during the writes: {sum(retrieves)}")
    print(f"duplicates: {duplicates}  missing: {missing}  unexpected: {extra}")
    print(f"profile mismatches (live vs refold, fresh vs refold): {mismatches}")
    print(f"errors: {len(errors)} {[repr(e) for e in errors[:3]]}")
    ok = not errors and total_acked == len(expected) == len(texts)
    ok = ok and duplicates == missing == extra == mismatches == 0
    print("OK" if ok else "FAILED")
    tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
