"""A cluster that goes down: the circuit breaker makes a dead cluster cost nothing, and
the opt-in degraded mode serves plain results and says so (never silently)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import CORPUS
from fake_weaviate import FakeWeaviate

import pertinent
from pertinent import Event
from pertinent.stores.resilience import CircuitBreaker, ResilientStore


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_threshold_and_half_opens() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=2, reset_after=10, clock=clock)
    assert b.before() is None
    b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open" and b.before() == pytest.approx(10)
    clock.t = 10
    assert b.state == "half-open"
    assert b.before() is None  # one trial call
    assert b.before() == 0.0  # ... and only one
    b.failure()  # the trial failed: open again for a full period
    assert b.state == "open"
    clock.t = 20
    assert b.before() is None
    b.success()
    assert b.state == "closed" and b.before() is None


@pytest.fixture
def fake() -> Iterator[FakeWeaviate]:
    with FakeWeaviate() as f:
        yield f


def _open(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder, **kw: object
) -> pertinent.Pertinent:
    settings = pertinent.Settings(weaviate_timeout_s=2.0, breaker_reset_s=60, **kw)
    return pertinent.open(
        url=fake.url, grpc_port=fake.grpc_port, embedder=embedder, settings=settings
    )


def test_dead_cluster_trips_the_breaker(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder
) -> None:
    px = _open(fake, embedder)
    assert isinstance(px.store, ResilientStore)
    px.ingest(CORPUS, show_progress=False)
    fake.stop()
    for _ in range(3):
        with pytest.raises(pertinent.StoreUnavailable, match=fake.url.split("//")[1]):
            px.search("rotate keys")
    calls = len(fake.calls)
    with pytest.raises(pertinent.StoreUnavailable, match="marked down after 3 failed calls"):
        px.search("rotate keys")
    assert len(fake.calls) == calls  # not attempted
    assert px.store.breaker.state == "open"


def test_degraded_mode_serves_plain_results_and_says_so(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder, tmp_path: Path
) -> None:
    px = _open(fake, embedder, degraded_mode=True)
    px.ingest(CORPUS, show_progress=False)
    li = px.search("LlamaIndex query engines node postprocessors")[0]
    px.record("deb", [Event(kind="accept", item_id=li.id)] * 4)
    plain = px.search("which framework for retrieval?")

    cold = _open(fake, embedder, degraded_mode=True)  # a new process: nothing cached
    fake.inject("Search PertinentEvents", code=grpc.StatusCode.UNAVAILABLE, times=1000)
    fake.inject("BatchObjects", code=grpc.StatusCode.UNAVAILABLE, times=1000)  # all writes
    ctx = cold.retrieve("which framework for retrieval?", user_id="deb")
    assert [r.id for r in ctx.results] == [r.id for r in plain]
    assert all(r.explain.user_gate == 0 for r in ctx.results)
    assert any(d.startswith("not personalized") for d in ctx.degraded)
    assert any(d.startswith("not remembered") for d in ctx.degraded)

    strict = _open(fake, embedder)  # degraded mode is opt-in: by default the error surfaces
    with pytest.raises(pertinent.StoreUnavailable):
        strict.retrieve("which framework for retrieval?", user_id="deb")

    fake.clear_faults()  # the cluster comes back
    back = cold.retrieve("which framework for retrieval?", user_id="deb", remember=False)
    assert back.degraded == () and back.results[0].explain.user_gate > 0
