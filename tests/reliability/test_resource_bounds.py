"""Resource bounds: every in-memory cache has a size in Settings and stays under it (an
evicted profile is refolded, not lost), and opening and closing pertinent many times
leaks no file descriptors, threads or connections. (100k retrieves with an RSS curve
run outside CI: bench/soak_retrieve.py.)"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CORPUS
from fake_weaviate import FakeWeaviate

import pertinent
from pertinent import Event
from pertinent.stores.resilience import LRUDict


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_lru_dict_keeps_the_most_recently_used() -> None:
    d: LRUDict[str, int] = LRUDict(3)
    for i, k in enumerate("abc"):
        d[k] = i
    assert d.get("a") == 0  # read: now the most recent
    d["d"] = 3
    assert sorted(d) == ["a", "c", "d"]  # b, least recently used, went
    d["c"] = 9  # rewrite: most recent
    d["e"] = 4
    assert sorted(d) == ["c", "d", "e"]
    assert d.pop("c") == 9 and d.get("zz", -1) == -1 and len(d) == 2
    with pytest.raises(ValueError):
        LRUDict(0)


def test_profile_session_and_query_caches_stay_within_their_sizes(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    settings = pertinent.Settings(profile_cache_size=4, session_cache_size=3, query_cache_size=8)
    with pertinent.open(tmp_path / "s", embedder=embedder.inner, settings=settings) as px:
        assert isinstance(px.embedder, pertinent.CachedQueryEmbedder)
        px.ingest(CORPUS, show_progress=False)
        keys = px.search("rotate api keys")[0].id
        px.record("first", [Event(kind="accept", item_id=keys)] * 3)
        before = px.profile("first")
        for i in range(12):
            px.retrieve(f"question number {i} about refunds", user_id=f"u{i}", session_id="s")
            assert len(px._profiles) <= 4
            assert len(px._sessions) <= 3
            assert len(px._consents) <= 4
            assert len(px.embedder._cache) <= 8
        assert "first" not in px._profiles  # evicted ...
        after = px.profile("first")  # ... and refolded from the log, identically
        assert after.gate == pytest.approx(before.gate)
        assert after.positive is not None and before.positive is not None
        assert float(after.positive @ before.positive) == pytest.approx(1.0, abs=1e-5)


def _cycle_embedded(path: Path, embedder: pertinent.CachedQueryEmbedder, i: int) -> None:
    with pertinent.open(path, embedder=embedder) as px:
        if i == 0:
            px.ingest(CORPUS, show_progress=False)
        px.retrieve("rotate api keys", user_id=f"u{i % 3}", session_id="s")
        px.record(f"u{i % 3}", Event(kind="query", text="refunds"))


def test_open_close_cycles_release_file_handles_and_threads(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    path = tmp_path / "store"
    for i in range(3):  # warm-up: lazy imports, LanceDB's runtime threads
        _cycle_embedded(path, embedder, i)
    fds, threads = open_fds(), threading.active_count()
    for i in range(3, 15):
        _cycle_embedded(path, embedder, i)
    # one descriptor or thread kept per open would show as +12
    assert open_fds() - fds <= 3, sorted(os.listdir("/proc/self/fd"))
    assert threading.active_count() - threads <= 3


@pytest.fixture
def fake() -> Iterator[FakeWeaviate]:
    with FakeWeaviate() as f:
        yield f


def test_weaviate_clients_are_closed_with_pertinent(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder
) -> None:
    def cycle() -> None:
        with pertinent.open(url=fake.url, grpc_port=fake.grpc_port, embedder=embedder) as px:
            px.search("rotate api keys")

    for _ in range(2):
        cycle()
    fds = open_fds()
    for _ in range(15):
        cycle()
    # each open makes a REST connection pool and a gRPC channel (sockets): all closed
    assert open_fds() - fds <= 3


def test_lancedb_cache_bytes_are_reported_and_within_their_bounds(tmp_path: Path) -> None:
    from factories import one_hot, stored_event

    from pertinent.stores.base import StoredEvent
    from pertinent.stores.lancedb import LanceDBStore

    def event(i: int) -> StoredEvent:
        return stored_event(f"e{i}", f"u{i % 3}", one_hot(i, 8))

    bounded = LanceDBStore(tmp_path / "a", model_id="m", dim=8, cache_bytes=1 << 20)
    before = bounded.cache_bytes()
    for i in range(50):
        bounded.append_events([event(i)])
        bounded.read_events(f"u{i % 3}")
    held = bounded.cache_bytes()
    assert before is not None and held is not None
    assert held > before  # the reads filled the caches ...
    assert held <= 4 << 20  # ... within 2 connections x (index + metadata) x 1 MiB
    bounded.close()
    unbounded = LanceDBStore(tmp_path / "b", model_id="m", dim=8, cache_bytes=None)
    assert unbounded.cache_bytes() is None  # LanceDB's own defaults: not measured
    unbounded.close()


def test_the_logs_have_their_own_cache_bound(tmp_path: Path) -> None:
    """Every append to a log caches a new version's metadata (≈ 80 KiB each here) until
    the bound evicts it; the logs' bound keeps that from growing with the log while the
    chunks keep a large one."""
    from factories import one_hot, stored_event

    from pertinent.stores.lancedb import LanceDBStore

    def fill(log_cache_bytes: int) -> int:
        store = LanceDBStore(
            tmp_path / str(log_cache_bytes),
            model_id="m",
            dim=8,
            cache_bytes=64 << 20,
            log_cache_bytes=log_cache_bytes,
        )
        for i in range(120):
            store.append_events([stored_event(f"e{i}", f"u{i % 3}", one_hot(i, 8))])
            assert len(store.read_events(f"u{i % 3}")) == i // 3 + 1
        held = store.cache_bytes()
        store.close()
        assert held is not None
        return held

    small, large = fill(256 << 10), fill(64 << 20)
    # chunk and user-settings caches (nearly empty here) + 2 x 256 KiB for the logs
    assert small <= (2 << 20)
    assert large > small + (2 << 20)  # the same appends under the chunks' bound


def test_close_waits_for_every_thread_it_started(
    tmp_path: Path, embedder: pertinent.CachedQueryEmbedder
) -> None:
    """Closing joins the log writers and both executors: none of pertinent's threads
    outlives `close` (with shutdown(wait=False) they lingered on a loaded machine, and a
    process opening and closing stores counted them)."""
    before = set(threading.enumerate())
    with pertinent.open(tmp_path / "store", embedder=embedder) as px:
        px.ingest(CORPUS, show_progress=False)
        px.retrieve("rotate api keys", user_id="u1", session_id="s")
        px.record("u1", Event(kind="query", text="refunds"))
        started = [t.name for t in set(threading.enumerate()) - before]
    assert any(name.startswith("pertinent") for name in started), started
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert [name for name in left if name.startswith("pertinent")] == []
