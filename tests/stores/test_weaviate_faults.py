"""The Weaviate store under faults, made by the fake cluster: down at start, going down
mid-batch, refusing objects, wrong credentials, transient UNAVAILABLE / HTTP 500,
answers later than the deadline, foreign collections, and a closed client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from fake_weaviate import FakeWeaviate

import pertinent
from pertinent.embeddings import CachedQueryEmbedder
from pertinent.errors import (
    ConfigurationError,
    PartialWrite,
    StoreCorrupted,
    StoreError,
    StoreUnavailable,
)
from pertinent.stores.base import SearchFilter
from pertinent.stores.resilience import ResilientStore
from pertinent.stores.weaviate import WeaviateStore
from pertinent.types import Chunk

DIM = 8


@pytest.fixture
def fake() -> Iterator[FakeWeaviate]:
    with FakeWeaviate() as f:
        yield f


def open_store(fake: FakeWeaviate, **kw: Any) -> WeaviateStore:
    kw.setdefault("timeout_s", 5.0)
    return WeaviateStore(fake.url, grpc_port=fake.grpc_port, model_id="m", dim=DIM, **kw)


def chunks(doc_id: str, n: int) -> list[Chunk]:
    rng = np.random.default_rng(len(doc_id) + n)
    out = []
    for i in range(n):
        v = rng.normal(size=DIM).astype(np.float32)
        out.append(
            Chunk(
                id=f"{doc_id}#{i}",
                doc_id=doc_id,
                text=f"passage {i} about keys",
                position=i,
                model_id="m",
                vector=v / np.linalg.norm(v),
            )
        )
    return out


def test_cluster_down_at_start_names_the_url(fake: FakeWeaviate) -> None:
    url = fake.url
    fake.stop()
    with pytest.raises(StoreUnavailable, match=f"Weaviate at {url} cannot be reached") as info:
        WeaviateStore(url, grpc_port=fake.grpc_port, model_id="m", dim=DIM, timeout_s=2.0)
    assert "attempts" in str(info.value)


def test_wrong_api_key_is_a_clear_auth_error() -> None:
    with FakeWeaviate(api_key="right-key") as fake:
        with pytest.raises(ConfigurationError, match="check the API key"):
            open_store(fake, api_key="wrong-key")
        with pytest.raises(ConfigurationError, match="needs an API key"):
            open_store(fake)
        store = open_store(fake, api_key="right-key")
        store.upsert_chunks(chunks("d", 2))
        store.close()
        grpc_calls = [c for c in fake.calls if c.kind == "grpc"]
        assert grpc_calls
        assert {c.metadata.get("authorization") for c in grpc_calls} == {"Bearer right-key"}


def test_grpc_auth_failure_maps_to_configuration_error(fake: FakeWeaviate) -> None:
    store = open_store(fake)
    fake.inject("Search", code=grpc.StatusCode.UNAUTHENTICATED, details="token expired")
    with pytest.raises(ConfigurationError, match="rejected the credentials"):
        store.vector_search(np.ones(DIM, dtype=np.float32), k=3, where=SearchFilter())
    store.close()


def test_transient_unavailable_is_retried(fake: FakeWeaviate) -> None:
    store = open_store(fake, retries=3)
    store.upsert_chunks(chunks("d", 3))
    fault = fake.inject("Search", code=grpc.StatusCode.UNAVAILABLE, times=2)
    before = len(fake.grpc_calls("Search"))
    hits = store.hybrid_search(
        "keys", chunks("d", 3)[0].vector, k=3, alpha=0.5, where=SearchFilter()
    )
    assert len(hits) == 3
    assert fault.seen == 3 and len(fake.grpc_calls("Search")) - before == 3
    store.close()


def test_retries_are_bounded(fake: FakeWeaviate) -> None:
    store = open_store(fake, retries=2)
    fake.inject("Search", code=grpc.StatusCode.UNAVAILABLE, times=1000, details="node down")
    before = len(fake.grpc_calls("Search"))
    with pytest.raises(StoreUnavailable, match=rf"Weaviate at {fake.url} .*node down") as info:
        store.keyword_search("keys", k=3, where=SearchFilter())
    assert len(fake.grpc_calls("Search")) - before == 3  # 1 try + 2 retries
    assert "after 3 attempts" in str(info.value)
    store.close()


def test_an_answer_past_the_deadline_is_an_error_not_a_hang(fake: FakeWeaviate) -> None:
    store = open_store(fake, timeout_s=0.5)
    fake.inject("Search", delay=30.0)
    with pytest.raises(StoreUnavailable, match=r"did not answer \(vector search\) within 0.5 s"):
        store.vector_search(np.ones(DIM, dtype=np.float32), k=3, where=SearchFilter())
    store.close()


def test_deadline_exceeded_from_the_server_is_retried(fake: FakeWeaviate) -> None:
    store = open_store(fake)
    fake.inject("Aggregate", code=grpc.StatusCode.DEADLINE_EXCEEDED, times=1)
    assert store.count_chunks() == 0
    assert len(fake.grpc_calls("Aggregate")) == 2
    store.close()


def test_http_500_is_retried_then_reported(fake: FakeWeaviate) -> None:
    fake.inject("GET /v1/schema/PertinentChunks", http_status=500, times=1)
    store = open_store(fake)
    assert len(fake.rest_calls("GET", "/v1/schema/PertinentChunks")) == 2
    store.close()
    fake.inject("GET /v1/schema/PertinentMeta", http_status=503, times=1000)
    with pytest.raises(StoreUnavailable, match="HTTP 503"):
        open_store(fake, retries=1)


def test_rejected_objects_are_listed_and_nothing_else_is_dropped(fake: FakeWeaviate) -> None:
    store = open_store(fake)
    store.upsert_chunks(chunks("d", 4))
    fake.calls.clear()
    fake.reject_objects(lambda uid, props: props.get("chunk_id") == "d#1", "disk full")
    new = chunks("d", 2)
    with pytest.raises(
        PartialWrite, match=r"did not write 1 of 2 objects .*d#1: disk full"
    ) as info:
        store.upsert_chunks(new)
    assert info.value.failed == {"d#1": "disk full"}
    # the write that failed does not delete the document's other chunks: d#2 and d#3 of the
    # old version stay until a successful re-ingest replaces them
    assert fake.grpc_calls("BatchDelete") == []
    assert sorted(o["chunk_id"] for o in fake.objects("PertinentChunks")) == [
        "d#0",
        "d#1",
        "d#2",
        "d#3",
    ]
    fake.clear_faults()
    store.upsert_chunks(new)
    assert sorted(o["chunk_id"] for o in fake.objects("PertinentChunks")) == ["d#0", "d#1"]
    store.close()


def test_cluster_going_down_mid_batch_reports_every_unwritten_object(fake: FakeWeaviate) -> None:
    store = open_store(fake, batch_size=2, retries=1)
    fake.inject("BatchObjects", code=grpc.StatusCode.UNAVAILABLE, skip=1, times=1000)
    with pytest.raises(PartialWrite) as info:
        store.upsert_chunks(chunks("big", 5))
    assert sorted(info.value.failed) == ["big#2", "big#3", "big#4"]
    assert isinstance(info.value, StoreError)
    assert isinstance(info.value.__cause__, StoreUnavailable)
    assert fake.url in str(info.value)
    written = sorted(o["chunk_id"] for o in fake.objects("PertinentChunks"))
    assert written == ["big#0", "big#1"]


def test_collections_written_by_something_else_are_refused(fake: FakeWeaviate) -> None:
    store = open_store(fake)
    store.upsert_chunks(chunks("d", 2))
    store.close()
    # the model record disappears, the chunks stay: pertinent cannot vouch for them
    fake._rest("DELETE", "/v1/schema/PertinentMeta", None, None)
    with pytest.raises(StoreCorrupted, match="no PertinentMeta record"):
        open_store(fake)


def test_a_store_of_another_schema_version_is_refused(fake: FakeWeaviate) -> None:
    open_store(fake).close()
    fake.set_property("PertinentMeta", "value", '{"dim": 8, "model_id": "m", "schema": "0"}')
    with pytest.raises(StoreCorrupted, match="schema version '0'"):
        open_store(fake)


def test_invalid_settings_are_configuration_errors(fake: FakeWeaviate) -> None:
    with pytest.raises(ConfigurationError, match="not an http"):
        WeaviateStore("localhost:8080", model_id="m", dim=DIM)
    with pytest.raises(ConfigurationError, match="prefix"):
        open_store(fake, prefix="lower-case")
    with pytest.raises(ConfigurationError, match="Unknown backend"):
        pertinent.open(backend="qdrant", embedder=object())


def test_too_old_a_cluster_is_refused() -> None:
    with FakeWeaviate(version="1.27.3") as fake:
        with pytest.raises(ConfigurationError, match=r"runs 1\.27\.3; pertinent needs .* 1\.29"):
            open_store(fake)
        assert fake.rest_calls("POST", "/v1/schema") == []  # nothing was created


def test_close_closes_the_client(fake: FakeWeaviate, embedder: CachedQueryEmbedder) -> None:
    with pertinent.open(url=fake.url, grpc_port=fake.grpc_port, embedder=embedder) as px:
        assert isinstance(px.store, ResilientStore)  # the circuit breaker wraps the cluster
        store = px.store.inner
        assert isinstance(store, WeaviateStore)
        assert store.count_chunks() == 0
    with pytest.raises(StoreError, match="is closed"):
        store.count_chunks()
    store.close()  # idempotent
