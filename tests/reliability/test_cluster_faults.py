"""The faults issue 9 lists that the store-level fault tests do not cover, through the
protocol-level fake: an overloaded cluster (RESOURCE_EXHAUSTED), the retry schedule
itself (bounded, jittered, capped), a partial batch failure seen from the client (it
is not an outage), answers past the deadline tripping the breaker, and the cluster
coming back (open → half-open → closed)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from conftest import CORPUS
from fake_weaviate import FakeWeaviate

import pertinent
from pertinent.stores.base import SearchFilter
from pertinent.stores.resilience import CircuitBreaker, ResilientStore
from pertinent.stores.weaviate import WeaviateStore

DIM = 8


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake() -> Iterator[FakeWeaviate]:
    with FakeWeaviate() as f:
        yield f


def _store(fake: FakeWeaviate, **kw: float) -> WeaviateStore:
    return WeaviateStore(
        fake.url,
        grpc_port=fake.grpc_port,
        model_id="m",
        dim=DIM,
        timeout_s=kw.pop("timeout_s", 5.0),
        **kw,  # type: ignore[arg-type]
    )


def _open(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder, **kw: object
) -> pertinent.Pertinent:
    settings = pertinent.Settings(weaviate_timeout_s=kw.pop("timeout", 5.0), **kw)  # type: ignore[arg-type]
    return pertinent.open(
        url=fake.url, grpc_port=fake.grpc_port, embedder=embedder, settings=settings
    )


def test_an_overloaded_cluster_is_retried_then_answers(fake: FakeWeaviate) -> None:
    store = _store(fake, retries=3)
    fault = fake.inject("Search", code=grpc.StatusCode.RESOURCE_EXHAUSTED, times=2)
    hits = store.keyword_search("keys", k=3, where=SearchFilter())
    assert hits == [] and fault.seen == 3  # two refusals, then the answer
    store.close()


def test_a_persistently_overloaded_cluster_is_a_typed_error_naming_it(fake: FakeWeaviate) -> None:
    store = _store(fake, retries=2)
    fake.inject(
        "Search", code=grpc.StatusCode.RESOURCE_EXHAUSTED, times=1000, details="rate limited"
    )
    before = len(fake.grpc_calls("Search"))
    with pytest.raises(pertinent.StoreUnavailable) as info:
        store.vector_search(np.ones(DIM, dtype=np.float32), k=3, where=SearchFilter())
    message = str(info.value)
    assert f"Weaviate at {fake.url} is overloaded" in message
    assert "RESOURCE_EXHAUSTED" in message and "rate limited" in message
    assert "after 3 attempts" in message
    assert len(fake.grpc_calls("Search")) - before == 3  # bounded: 1 try + 2 retries
    store.close()


def test_retries_back_off_with_capped_full_jitter(
    fake: FakeWeaviate, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(fake, retries=6, timeout_s=60.0)
    sleeps: list[float] = []
    real_sleep = time.sleep

    def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr("pertinent.stores.weaviate.time.sleep", recording_sleep)
    fake.inject("Aggregate", code=grpc.StatusCode.UNAVAILABLE, times=1000)
    with pytest.raises(pertinent.StoreUnavailable, match="after 7 attempts"):
        store.count_chunks()
    monkeypatch.undo()
    assert len(sleeps) == 6  # one pause between attempts, none after the last
    for attempt, delay in enumerate(sleeps, start=1):
        assert 0.0 <= delay <= min(2.0, 0.1 * 2 ** (attempt - 1))  # exponential cap
    assert len(set(sleeps)) == len(sleeps)  # jittered: no two clients retry in step
    store.close()


def test_rest_5xx_while_creating_collections_is_retried_then_named(fake: FakeWeaviate) -> None:
    fault = fake.inject("POST /v1/schema", http_status=503, times=2)
    _store(fake, retries=3).close()
    assert fault.seen == 2 + 6  # two refusals, then the six collections were created
    assert sorted(fake.collection_names()) == [
        "PertinentChunks",
        "PertinentEvents",
        "PertinentMeta",
        "PertinentSettings",
        "PertinentTurns",
        "PertinentUsers",
    ]
    with FakeWeaviate() as fresh:
        fresh.inject("POST /v1/schema", http_status=500, times=1000, details="raft not ready")
        with pytest.raises(pertinent.StoreUnavailable) as info:
            _store(fresh, retries=1)
        assert f"Weaviate at {fresh.url} failed" in str(info.value)
        assert "HTTP 500" in str(info.value) and "after 2 attempts" in str(info.value)
        assert len(fresh.rest_calls("POST", "/v1/schema")) == 2


def test_a_partial_batch_failure_is_reported_and_is_not_an_outage(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder
) -> None:
    px = _open(fake, embedder, breaker_threshold=2)
    assert isinstance(px.store, ResilientStore)
    fake.reject_objects(lambda uid, props: props.get("doc_id") == "billing", "disk full")
    for _ in range(3):  # more partial failures than the breaker's threshold
        with pytest.raises(pertinent.PartialWrite, match=f"Weaviate at {fake.url}") as info:
            px.ingest(CORPUS, show_progress=False)
        assert set(info.value.failed) == {"billing#0"}
    assert px.store.breaker.state == "closed"  # the cluster answered every time
    fake.clear_faults()
    px.ingest(CORPUS, show_progress=False)  # the retry completes it, without duplicates
    ids = sorted(o["chunk_id"] for o in fake.objects("PertinentChunks"))
    assert ids == sorted(f"{d['id']}#0" for d in CORPUS)
    px.close()


def test_answers_past_the_deadline_trip_the_breaker(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder
) -> None:
    px = _open(fake, embedder, timeout=0.5, breaker_threshold=2, breaker_reset_s=600)
    px.ingest(CORPUS, show_progress=False)
    fake.inject("Search", delay=30.0, times=1000)
    for _ in range(2):
        with pytest.raises(pertinent.StoreUnavailable, match=r"did not answer .* within 0.5 s"):
            px.search("rotate keys")
    calls = len(fake.grpc_calls("Search"))
    with pytest.raises(pertinent.StoreUnavailable, match=f"Weaviate at {fake.url} is marked down"):
        px.search("rotate keys")
    assert len(fake.grpc_calls("Search")) == calls  # a dead cluster costs no call at all
    px.close()


def test_the_cluster_coming_back_closes_the_breaker(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder
) -> None:
    px = _open(fake, embedder, timeout=3.0)
    assert isinstance(px.store, ResilientStore)
    clock = Clock()
    px.store.breaker = CircuitBreaker(threshold=2, reset_after=30, clock=clock)
    px.ingest(CORPUS, show_progress=False)
    expected = [r.id for r in px.search("rotate api keys")]
    fake.stop()
    for _ in range(2):
        with pytest.raises(pertinent.StoreUnavailable, match=fake.url.split("//")[1]):
            px.search("rotate api keys")
    assert px.store.breaker.state == "open"
    fake.start()  # same ports, same data
    # The client's gRPC channel reconnects on its own (backoff capped at 1 s); wait for it
    # so the trial below meets a connected channel rather than a pending reconnect.
    store = px.store.inner
    assert isinstance(store, WeaviateStore)
    grpc.channel_ready_future(store._connected()._connection._grpc_channel).result(timeout=20)
    with pytest.raises(pertinent.StoreUnavailable, match=r"marked down .* Next try in 30\.0 s"):
        px.search("rotate api keys")  # still open: not tried before the reset period
    clock.t = 30
    assert px.store.breaker.state == "half-open"
    assert [r.id for r in px.search("rotate api keys")] == expected  # the trial call
    assert px.store.breaker.state == "closed"
    assert [r.id for r in px.search("rotate api keys")] == expected
    px.close()
