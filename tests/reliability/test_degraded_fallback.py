"""Degraded mode with a local replica: while the Weaviate cluster is down, searches are
served from an embedded LanceDB copy of the documents, with ACLs and ownership intact,
and every answer says where it came from. Never silent, never on by accident."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import CORPUS
from fake_weaviate import FakeWeaviate

import pertinent
from pertinent import Event
from pertinent.stores.lancedb import LanceDBStore
from pertinent.stores.resilience import CircuitBreaker, ReplicatedStore, ResilientStore
from pertinent.stores.weaviate import WeaviateStore

SUPPORT_ONLY = {
    "id": "runbook",
    "title": "Runbook",
    "text": "Support runbook: to rotate a customer's API keys, open the admin console and "
    "confirm the owner's identity first.",
}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake() -> Iterator[FakeWeaviate]:
    with FakeWeaviate() as f:
        yield f


def _open(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder, replica: Path, **kw: object
) -> pertinent.Pertinent:
    settings = pertinent.Settings(
        weaviate_timeout_s=3.0,
        degraded_fallback_path=replica,
        **kw,  # type: ignore[arg-type]
    )
    return pertinent.open(
        url=fake.url, grpc_port=fake.grpc_port, embedder=embedder, settings=settings
    )


def _ids(ctx: pertinent.PackedContext) -> set[str]:
    return {r.chunk.doc_id for r in ctx.results}


def test_a_down_cluster_is_served_from_the_replica_and_says_so(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder, tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    px = _open(fake, embedder, replica, degraded_mode=True)
    assert isinstance(px.store, ReplicatedStore)
    px.ingest(CORPUS, show_progress=False)
    px.ingest(SUPPORT_ONLY, acl=["role:support"], show_progress=False)
    px.ingest(
        {"id": "deb-note", "text": "Deb keeps her API keys in the team password vault."},
        owner="deb",
        show_progress=False,
    )
    px.delete_documents(["tax"])  # deletes are mirrored too
    keys = px.search("rotate api keys")[0]
    px.record("deb", [Event(kind="accept", item_id=keys.id)] * 4)
    up = px.retrieve("how do I rotate api keys?", user_id="deb", remember=False)
    assert up.degraded == () and up.results[0].explain.user_gate > 0

    # the replica is a real LanceDB store holding exactly the documents
    local = LanceDBStore(replica, model_id=embedder.model_id, dim=embedder.dim)
    assert sorted(local.document_ids()) == sorted(
        [d["id"] for d in CORPUS if d["id"] != "tax"] + ["runbook", "deb-note"]
    )
    local.close()

    fake.stop()
    calls = len(fake.calls)
    for _ in range(4):  # through the breaker opening: every answer is declared
        ctx = px.retrieve("how do I rotate api keys?", user_id="deb", remember=False)
        assert ctx.results and ctx.results[0].chunk.doc_id in ("keys", "deb-note")
        # deb's profile was folded before the outage and is held in memory: still used
        assert ctx.results[0].explain.user_gate > 0
        assert ctx.degraded == (
            f"served from the local replica at {replica}, which may lag the cluster: the "
            f"cluster is unavailable ({ctx.degraded[0].split('unavailable (', 1)[1]}",
        )
        assert px.last_degraded == ctx.degraded
    # a user whose profile is not in memory cannot be personalized: declared as well
    cold = px.retrieve("how do I rotate api keys?", user_id="eve", remember=False)
    assert all(r.explain.user_gate == 0 for r in cold.results)
    assert [d.split(":")[0] for d in cold.degraded] == [
        "not personalized",
        f"served from the local replica at {replica}, which may lag the cluster",
    ]
    assert isinstance(px.store.primary, ResilientStore)
    assert px.store.primary.breaker.state == "open"
    assert len(fake.calls) == calls  # the fake is down: nothing reached it

    # ACLs and ownership hold on the replica exactly as on the cluster
    q = "rotate a customer's api keys runbook"
    assert "runbook" not in _ids(px.retrieve(q, user_id="eve", remember=False, top_k=10))
    assert "runbook" in _ids(
        px.retrieve(q, user_id="eve", principals=["role:support"], remember=False, top_k=10)
    )
    vault = "where are the API keys kept, password vault?"
    assert "deb-note" in _ids(px.retrieve(vault, user_id="deb", remember=False, top_k=10))
    assert "deb-note" not in _ids(px.retrieve(vault, user_id="eve", remember=False, top_k=10))
    assert "tax" not in _ids(px.retrieve("capital gains tax", remember=False, top_k=10))

    # remembering the turn needs the cluster: declared too, not raised (degraded mode)
    ctx = px.retrieve("how do I rotate api keys?", user_id="deb")
    assert any(d.startswith("not remembered") for d in ctx.degraded)

    # forgetting while the cluster is down: the local copy goes at once, and the call
    # still fails so the caller knows the cluster's copy is not gone yet
    with pytest.raises(pertinent.StoreUnavailable):
        px.forget_user("deb")
    assert "deb-note" not in _ids(px.retrieve(vault, user_id="deb", remember=False, top_k=10))
    px.close()


def test_the_cluster_coming_back_ends_the_degradation(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder, tmp_path: Path
) -> None:
    px = _open(fake, embedder, tmp_path / "replica", degraded_mode=True)
    assert isinstance(px.store, ReplicatedStore) and isinstance(px.store.primary, ResilientStore)
    clock = Clock()
    px.store.primary.breaker = CircuitBreaker(threshold=1, reset_after=5, clock=clock)
    px.ingest(CORPUS, show_progress=False)
    fake.stop()
    assert px.retrieve("refunds to the card", remember=False).degraded
    fake.start()
    inner = px.store.primary.inner
    assert isinstance(inner, WeaviateStore)
    grpc.channel_ready_future(inner._connected()._connection._grpc_channel).result(timeout=20)
    assert px.retrieve("refunds to the card", remember=False).degraded  # breaker still open
    clock.t = 5
    back = px.retrieve("refunds to the card", remember=False)
    assert back.degraded == () and px.last_degraded == ()
    assert back.results[0].chunk.doc_id == "billing"
    px.close()


def test_without_degraded_mode_the_outage_surfaces(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder, tmp_path: Path
) -> None:
    with pytest.raises(pertinent.ConfigurationError, match="set degraded_mode=True"):
        _open(fake, embedder, tmp_path / "replica")
    with pytest.raises(pertinent.ConfigurationError, match="embedded backend needs none"):
        pertinent.open(
            tmp_path / "store",
            embedder=embedder,
            settings=pertinent.Settings(degraded_fallback_path=tmp_path / "replica"),
        )
    px = _open(fake, embedder, tmp_path / "replica", degraded_mode=True)
    px.ingest(CORPUS, show_progress=False)
    strict = pertinent.open(
        url=fake.url,
        grpc_port=fake.grpc_port,
        embedder=embedder,
        settings=pertinent.Settings(weaviate_timeout_s=3.0),
    )
    fake.stop()
    with pytest.raises(pertinent.StoreUnavailable, match=fake.url.split("//")[1]):
        strict.retrieve("refunds to the card", remember=False)
    strict.close()
    px.close()


def test_with_encryption_the_replica_is_sealed_and_read_through_the_key(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder, tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    settings = pertinent.Settings(
        weaviate_timeout_s=3.0, degraded_mode=True, degraded_fallback_path=replica
    )
    px = pertinent.open(
        url=fake.url,
        grpc_port=fake.grpc_port,
        embedder=embedder,
        settings=settings,
        encryption_key=bytes(range(32)),
    )
    px.ingest(CORPUS, show_progress=False)
    note = "Deb keeps her API keys in the qzxvault password manager."
    px.ingest({"id": "deb-note", "text": note}, owner="deb", show_progress=False)
    local = LanceDBStore(replica, model_id=embedder.model_id, dim=embedder.dim)
    stored = local.get_chunks(["deb-note#0"], user_id="deb")
    local.close()
    assert stored and "qzxvault" not in stored[0].text  # sealed at rest in the replica too
    fake.stop()
    ctx = px.retrieve("where are the API keys kept?", user_id="deb", remember=False, top_k=10)
    assert any(d.startswith("served from the local replica") for d in ctx.degraded)
    assert note in [r.chunk.text for r in ctx.results]  # opened with the key
    assert "deb-note" not in _ids(
        px.retrieve("where are the API keys kept?", user_id="eve", remember=False, top_k=10)
    )
    px.close()
