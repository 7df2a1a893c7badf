"""Concurrent writers and readers on one embedded store: nothing lost, nothing twice,
and every profile equals the refold of its log. (The 10k-events-per-writer version of
this runs outside CI: bench/stress_concurrency.py.)"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from conftest import CORPUS

import pertinent
from pertinent import Event
from pertinent.memory.profiles import UserProfile

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
USERS = ("u0", "u1", "u2")


def _writer_process(path: str, wid: int, n: int) -> None:
    px = pertinent.open(path)
    for i in range(n):
        px.record(
            USERS[i % 3],
            Event(kind="query", text=f"proc {wid} event {i}", timestamp=T0 + timedelta(minutes=i)),
        )
    px.close()


def test_threads_and_processes_record_while_others_retrieve(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    path = tmp_path / "store"
    px = pertinent.open(path, embedder=embedder)
    px.ingest(CORPUS, show_progress=False)
    ids = [f"{c['id']}#0" for c in CORPUS]
    n, errors = 40, []
    for u in USERS:
        px.profile(u)  # cached before the writes: updates are folded incrementally

    def write(wid: int) -> None:
        try:
            for i in range(n):
                px.record(
                    USERS[(i + wid) % 3],
                    Event(
                        kind="open",
                        item_id=ids[(i * wid) % len(ids)],
                        text=f"thread {wid} event {i}",
                        timestamp=T0 + timedelta(minutes=(i * 7 + wid) % 97),
                    ),
                )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read() -> None:
        try:
            for i in range(n // 2):
                px.search("rotate keys and refunds", user_id=USERS[i % 3])
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(path), w, n)) for w in range(2)]
    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for x in [*procs, *threads]:
        x.start()
    for x in [*procs, *threads]:
        x.join(timeout=600)
    assert errors == []
    assert [p.exitcode for p in procs] == [0, 0]

    texts = [e.text for u in USERS for e in px.store.read_events(u)]
    assert len(texts) == 8 * n + 2 * n
    assert len(set(texts)) == len(texts)  # every event exactly once
    for u in USERS:
        log = px.store.read_events(u)
        refold = UserProfile.rebuild(
            embedder.dim,
            [(e.vector, e.weight, e.timestamp) for e in log],
            half_life_days=px.settings.half_life_days,
        )
        live = px._profiles[u]
        # other processes' events reach this process's profile only through the log
        mine = UserProfile.rebuild(
            embedder.dim,
            [(e.vector, e.weight, e.timestamp) for e in log if e.text.startswith("thread")],
            half_life_days=px.settings.half_life_days,
        )
        np.testing.assert_allclose(live.state()[0], mine.state()[0], rtol=1e-9, atol=1e-12)
        fresh = pertinent.Pertinent(px.store, embedder, px.settings)
        np.testing.assert_allclose(
            fresh._user_profile(u).state()[0],
            refold.state()[0],
            rtol=1e-9,
            atol=1e-12,
        )


def test_async_gather_of_many_retrieves(loaded: pertinent.Pertinent) -> None:
    queries = [f"question {i} about {c['title']}" for i, c in enumerate(CORPUS * 34)][:200]

    async def main() -> list[pertinent.PackedContext]:
        return await asyncio.gather(
            *[
                loaded.aretrieve(q, user_id=f"a{i % 5}", remember=False)
                for i, q in enumerate(queries)
            ]
        )

    out = asyncio.run(main())
    assert len(out) == 200
    assert all(c.results and c.token_count <= c.budget.max_tokens for c in out)
    for q, c in zip(queries, out, strict=True):
        title = q.split(" about ")[1]
        assert any(r.chunk.title == title for r in c.results[:3])
