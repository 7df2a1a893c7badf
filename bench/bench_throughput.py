"""Throughput and footprint: profile updates, ingest, packing, Weaviate round trips, memory.

Each part is a function returning a dict, so `run_all.py` and the smoke test call them
with small sizes. Usage:
    python bench/bench_throughput.py [--events 10000] [--ingest-docs 256] [--only record ...]

- record: events/s for `record` one event per call and in batches; the time to refold
  a profile from a 10k-event log (store read + fold, and the fold alone).
- ingest: chunks/s of `ingest` (chunk, embed, write, index) against the embedder's own
  chunks/s on the very same chunk texts, rounds interleaved; the ratio is the overhead.
- packing: passages/s of `pack` with token counts cached (a warm `tokenizer_for`) and
  uncached (the bare tiktoken encoder).
- weaviate: requests per `retrieve` against the protocol-level fake (tests/fake_weaviate.py).
- memory: resident set size of a child process serving N chunks and M users.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
from bench_scale import chunk_objects, open_px, query_embedder, shared_embedder  # noqa: E402

import pertinent  # noqa: E402
from pertinent.memory.profiles import UserProfile  # noqa: E402
from pertinent.prompts.packing import pack  # noqa: E402
from pertinent.prompts.tokenizers import TiktokenTokenizer, tokenizer_for  # noqa: E402
from pertinent.stores.base import StoredEvent  # noqa: E402

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _open(tmp: Path, name: str) -> pertinent.Pertinent:
    return open_px(tmp / name)


def _small_store(
    px: pertinent.Pertinent, n_chunks: int, embed_missing: bool = True
) -> tuple[int, np.ndarray]:
    """The first `n_chunks` corpus chunks; returns how many have real vectors, and all."""
    emb = query_embedder(px.embedder)
    texts = corpus.chunk_texts(n_chunks)
    vectors, n_real = corpus.vectors_for(texts, emb, embed_missing=embed_missing)
    for start in range(0, n_chunks, 5000):
        end = start + 5000
        px.store.upsert_chunks(
            chunk_objects(texts[start:end], vectors[start:end], emb.model_id, start)
        )
    return n_real, vectors


# --------------------------------------------------------------------------- record


def bench_record(
    tmp: Path, *, n_chunks: int = 2000, singles: int = 300, batch: int = 1000, log: int = 10_000
) -> dict[str, Any]:
    px = _open(tmp, "record")
    _small_store(px, n_chunks)
    kinds = ("open", "like", "accept", "dislike")

    def events(n: int, seed: int) -> list[pertinent.Event]:
        rng = np.random.default_rng(seed)
        return [
            pertinent.Event(
                kind=kinds[int(rng.integers(0, 4))],
                item_id=f"c{int(rng.integers(0, n_chunks))}",
                timestamp=NOW - timedelta(minutes=int(rng.integers(0, 60 * 24 * 90))),
            )
            for _ in range(n)
        ]

    px.record("warmup", events(20, 0))
    px.profile("single")  # the profile is in memory: each event is folded in as well
    singles_ev = events(singles, 1)
    t = time.perf_counter()
    for e in singles_ev:
        px.record("single", e)
    single_s = time.perf_counter() - t

    px.profile("batched")
    batch_rates = []
    total_batched = 0
    for r in range(max(1, log // batch)):
        ev = events(batch, 100 + r)
        t = time.perf_counter()
        total_batched += px.record("batched", ev)
        batch_rates.append(batch / (time.perf_counter() - t))
    px.store.optimize()  # type: ignore[attr-defined]

    # Rebuild: the whole log read back from the store and refolded (a cache miss), and
    # the fold alone on the same columns, as the rebuild folds them (`from_arrays`).
    rebuild_ms, fold_ms = [], []
    log = px.store.read_event_arrays("batched")
    s = px.settings
    for _ in range(5):
        px._profiles.pop("batched", None)  # the in-memory profile, as after a restart
        t = time.perf_counter()
        px.profile("batched")
        rebuild_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        UserProfile.from_arrays(
            px.embedder.dim,
            log.vectors,
            log.weights,
            log.times,
            half_life_days=s.half_life_days,
            interests=s.interests,
            interest_threshold=s.interest_threshold,
        )
        fold_ms.append((time.perf_counter() - t) * 1000)
    px.close()
    return {
        "single_events_per_s": singles / single_s,
        "batch_size": batch,
        "batched_events_per_s": statistics.median(batch_rates),
        "log_events": len(log.weights),
        "rebuild_ms": statistics.median(rebuild_ms),
        "fold_only_ms": statistics.median(fold_ms),
    }


# --------------------------------------------------------------------------- ingest


def bench_ingest(tmp: Path, *, docs: int = 256, rounds: int = 2) -> dict[str, Any]:
    """Documents of one corpus chunk each (80–150 words; the chunker may split a long one)."""
    texts = [corpus.chunk_text(900_000 + i) for i in range(docs)]
    probe = _open(tmp, "probe")  # its chunker, as `ingest` uses it
    chunk_texts = [
        c.text
        for i, t in enumerate(texts)
        for c in probe._chunker.split(pertinent.Document(id=f"doc{i}", text=t))
    ]
    emb = query_embedder(probe.embedder)
    emb.embed_documents(chunk_texts[:32])  # warm-up
    probe.close()
    embed_rates, ingest_rates = [], []
    for r in range(rounds):
        t = time.perf_counter()
        emb.embed_documents(chunk_texts)
        embed_rates.append(len(chunk_texts) / (time.perf_counter() - t))
        px = pertinent.open(
            tmp / f"ingest{r}",
            settings=pertinent.Settings(show_progress=False, query_cache_size=0),
            embedder=emb,
        )
        t = time.perf_counter()
        report = px.ingest([{"id": f"doc{i}", "text": x} for i, x in enumerate(texts)])
        ingest_rates.append(report.chunks / (time.perf_counter() - t))
        px.close()
    return {
        "documents": docs,
        "chunks": len(chunk_texts),
        "embedder_chunks_per_s": statistics.median(embed_rates),
        "ingest_chunks_per_s": statistics.median(ingest_rates),
        "ratio": statistics.median(ingest_rates) / statistics.median(embed_rates),
        "rounds": {"embed": embed_rates, "ingest": ingest_rates},
    }


# --------------------------------------------------------------------------- packing


def bench_packing(tmp: Path, *, n_chunks: int = 2000, queries: int = 30) -> dict[str, Any]:
    px = _open(tmp, "packing")
    _small_store(px, n_chunks)
    budget = pertinent.Budget("gpt-4o", 2000)
    result_lists = [px.search(q, top_k=50) for q in corpus.queries(queries, seed=5)]
    px.close()
    cached = tokenizer_for("gpt-4o")
    for rs in result_lists:  # fill the count cache, as a serving process has
        pack(rs, budget, tokenizer=cached)
    bare = TiktokenTokenizer("o200k_base")
    out: dict[str, Any] = {}
    for name, tok in (("cached", cached), ("uncached", bare)):
        passages, calls_ms = 0, []
        t0 = time.perf_counter()
        for rs in result_lists:
            t = time.perf_counter()
            packed = pack(rs, budget, tokenizer=tok)
            calls_ms.append((time.perf_counter() - t) * 1000)
            passages += len(packed.citations)
        dt = time.perf_counter() - t0
        out[name] = {
            "passages_per_s": passages / dt,
            "candidates_per_s": sum(len(r) for r in result_lists) / dt,
            "pack_ms_median": statistics.median(calls_ms),
        }
    out["speedup"] = out["cached"]["passages_per_s"] / out["uncached"]["passages_per_s"]
    return out


# --------------------------------------------------------------------------- weaviate


def bench_weaviate(tmp: Path, *, n_chunks: int = 200, queries: int = 10) -> dict[str, Any]:
    """Requests reaching the cluster per `retrieve`, by kind, at steady state (the
    user's profile and consent already cached, as in a serving process), with the
    user-blended leg as its own search (`user_leg="separate"`) and folded into the
    hybrid search (`"fused"`, labelled so)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from fake_weaviate import FakeWeaviate

    out: dict[str, Any] = {}
    with FakeWeaviate() as fake:
        for user_leg in ("separate", "fused"):
            px = pertinent.open(
                url=fake.url,
                grpc_port=fake.grpc_port,
                settings=pertinent.Settings(show_progress=False, user_leg=user_leg),
                embedder=shared_embedder(),
            )
            if user_leg == "separate":
                emb = query_embedder(px.embedder)
                texts = corpus.chunk_texts(n_chunks)
                vectors = corpus.load_vectors(
                    texts, emb, model_id=emb.model_id, dim=emb.dim, progress=False
                )
                px.store.upsert_chunks(chunk_objects(texts, vectors, emb.model_id))
                px.record(
                    "warm",
                    [
                        pertinent.Event(kind="open", item_id=f"c{i}", timestamp=NOW)
                        for i in range(0, 40, 2)
                    ],
                )
            out.update(_count_requests(px, fake, queries, user_leg))
            px.close()
    return out


def _count_requests(
    px: pertinent.Pertinent, fake: Any, queries: int, user_leg: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cases: dict[str, dict[str, Any]] = {
        "anonymous": {},
        "cold user": {"user_id": "cold"},
        "warm user": {"user_id": "warm"},
        "warm user + session": {"user_id": "warm", "session_id": "s1"},
    }
    if user_leg != "separate":  # the mode changes nothing for users without a profile
        cases = {f"{k}, {user_leg}": v for k, v in cases.items() if "warm" in k}
    qs = corpus.queries(queries * len(cases) * 2 + 4, seed=9)
    for kw in cases.values():  # warm-up: consent, profile and session cached
        px.retrieve(qs.pop(), remember=False, **kw)
    for name, kw in cases.items():
        for remember in (False, True):
            counts: list[dict[str, int]] = []
            for _ in range(queries):
                before = len(fake.calls)
                px.retrieve(qs.pop(), remember=remember, **kw)
                by: dict[str, int] = {}
                for c in fake.calls[before:]:
                    key = f"{c.kind}:{c.method}"
                    by[key] = by.get(key, 0) + 1
                counts.append(by)
            keys = sorted({k for c in counts for k in c})
            label = name + (" (remember)" if remember else "")
            out[label] = {
                "per_retrieve": {k: statistics.mean(c.get(k, 0) for c in counts) for k in keys},
                "total": statistics.mean(sum(c.values()) for c in counts),
                "search_calls": statistics.mean(c.get("grpc:Search", 0) for c in counts),
            }
    return out


# --------------------------------------------------------------------------- memory


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def memory_child(n_chunks: int, users: int, events_per_user: int) -> dict[str, Any]:
    """Runs in a fresh process: RSS after loading the model, the store, and after every
    user has been served once (profiles held in memory)."""
    tmp = Path(tempfile.mkdtemp(prefix="pertinent-bench-mem-"))
    base = _rss_mb()
    px = _open(tmp, "mem")
    emb = query_embedder(px.embedder)
    emb.embed_query("warm up")
    after_model = _rss_mb()
    n_real, all_vectors = _small_store(px, n_chunks, embed_missing=n_chunks <= 1000)
    px.store.optimize()  # type: ignore[attr-defined]
    # Events name the first 1,000 chunks; the corpus's own copy of every vector is the
    # benchmark's, not the server's, so it is dropped before measuring.
    vectors = all_vectors[:1000].copy()
    del all_vectors
    gc.collect()
    rng = np.random.default_rng(3)
    batch: list[StoredEvent] = []
    for u in range(users):
        for _ in range(events_per_user):
            i = int(rng.integers(0, len(vectors)))
            batch.append(
                StoredEvent(
                    id=uuid.uuid4().hex,
                    user_id=f"m{u}",
                    kind="open",
                    weight=1.0,
                    timestamp=NOW - timedelta(hours=int(rng.integers(0, 2000))),
                    item_id=f"c{i}",
                    text=None,
                    session_id=None,
                    model_id=emb.model_id,
                    vector=vectors[i],
                )
            )
        if len(batch) >= 20_000:
            px.store.append_events(batch)
            batch = []
    px.store.append_events(batch)
    px.store.optimize()  # type: ignore[attr-defined]
    after_store = _rss_mb()
    qs = corpus.queries(50, seed=4)
    for j in range(users):
        px.profile(f"m{j}")
    for j, q in enumerate(qs):
        px.retrieve(q, user_id=f"m{j}", remember=False)
    served = _rss_mb()
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    px.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "chunks": n_chunks,
        "real_vectors": n_real,
        "users": users,
        "events_per_user": events_per_user,
        "rss_start_mb": base,
        "rss_model_mb": after_model,
        "rss_store_mb": after_store,
        "rss_serving_mb": served,
        "peak_rss_mb": peak,
    }


def bench_memory(*, n_chunks: int, users: int, events_per_user: int = 20) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--memory-child",
            json.dumps([n_chunks, users, events_per_user]),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------- main

PARTS = ("record", "ingest", "packing", "weaviate", "memory")


def run(
    parts: Sequence[str] = PARTS,
    *,
    events: int = 10_000,
    ingest_docs: int = 256,
    memory_chunks: int = 100_000,
    memory_users: int = 10_000,
    small: bool = False,
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pertinent-bench-tp-"))
    n = 200 if small else 2000
    out: dict[str, Any] = {}
    if "record" in parts:
        out["record"] = bench_record(
            tmp, n_chunks=n, singles=20 if small else 300, batch=min(1000, events), log=events
        )
    if "ingest" in parts:
        # Five rounds: with bfloat16 weights one embedding pass of 128 chunks takes
        # ~1.5 s and varies ±30% run to run here, so two rounds gave 87% or 110% at will.
        out["ingest"] = bench_ingest(tmp, docs=ingest_docs, rounds=1 if small else 5)
    if "packing" in parts:
        out["packing"] = bench_packing(tmp, n_chunks=n, queries=5 if small else 30)
    if "weaviate" in parts:
        out["weaviate"] = bench_weaviate(tmp, n_chunks=min(n, 200), queries=2 if small else 10)
    if "memory" in parts:
        out["memory"] = bench_memory(n_chunks=memory_chunks, users=memory_users)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--ingest-docs", type=int, default=256)
    ap.add_argument("--memory-chunks", type=int, default=100_000)
    ap.add_argument("--memory-users", type=int, default=10_000)
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(*json.loads(args.memory_child))))
        return 0
    out = run(
        args.only,
        events=args.events,
        ingest_docs=args.ingest_docs,
        memory_chunks=args.memory_chunks,
        memory_users=args.memory_users,
    )
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
