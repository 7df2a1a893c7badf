"""Embedding versions on a Weaviate cluster (the in-process fake speaking its REST and
gRPC protocol): re-embed into a second set of collections, switch, roll back to exactly
the original results; the registry lives in the cluster, so a new client follows the
switch; forgetting, retention and key rotation reach the inactive version.

The second model is `Truncated` from test_versions.py (MiniLM cut to 192 dimensions):
a genuinely different embedding space, built offline from the one model on disk."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CORPUS
from fake_weaviate import FakeWeaviate
from test_versions import MARKER, NOW, QUERIES, Truncated, _populate

import pertinent
from pertinent.stores.weaviate import WeaviateStore
from pertinent.versions import REGISTRY_KEY, WeaviateHome

SEALED = re.compile(r"pxe1\.[A-Za-z0-9_=-]+")


@pytest.fixture
def fake() -> Iterator[FakeWeaviate]:
    with FakeWeaviate() as f:
        yield f


def _open(fake: FakeWeaviate, embedder: pertinent.Embedder, **kw: Any) -> pertinent.Pertinent:
    return pertinent.open(url=fake.url, grpc_port=fake.grpc_port, embedder=embedder, **kw)


def _results(px: pertinent.Pertinent) -> list[list[tuple[str, float]]]:
    return [
        [(r.id, r.score) for r in px.search(q, user_id="ann", session_id="s", now=NOW)]
        for q in QUERIES
    ]


def _registry(fake: FakeWeaviate) -> dict[str, Any]:
    [record] = [o for o in fake.objects("PertinentMeta") if o["key"] == REGISTRY_KEY]
    value: dict[str, Any] = json.loads(record["value"])
    return value


def _everything(fake: FakeWeaviate) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(collection, tenant, properties) of every object in the cluster."""
    for name in fake.collection_names():
        for tenant in fake.tenants(name) or [""]:
            for obj in fake.objects(name, tenant):
                yield name, tenant, obj


def _query_vectors(fake: FakeWeaviate) -> list[tuple[str, int]]:
    """(collection, query vector length) of every vector or hybrid Search captured."""
    out = []
    for s in fake.grpc_calls("Search"):
        data = b""
        if s.HasField("hybrid_search"):
            data = s.hybrid_search.vector_bytes
        elif s.HasField("near_vector"):
            data = s.near_vector.vector_bytes
        if data:
            out.append((s.collection, len(np.frombuffer(data, dtype="<f4"))))
    return out


def test_reembed_switches_in_the_cluster_and_rollback_gives_the_original_results(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder
) -> None:
    truncated = Truncated(embedder)
    with _open(fake, embedder) as px:
        _populate(px)
        before = _results(px)
        assert px.embedding_versions().versions[0].prefix == "Pertinent"

        report = px.reembed(truncated)
        assert (report.version, report.previous) == ("v2", "v1")
        assert report.shared_chunks == len(CORPUS) and report.owned_chunks == 3
        assert (report.events, report.turns, report.dropped_events) == (4, 1, 0)
        # a complete second set of collections, every vector of the new model
        assert {"PertinentV2Chunks", "PertinentV2Events", "PertinentV2Turns"} <= set(
            fake.collection_names()
        )
        v2_chunks = fake.objects("PertinentV2Chunks")
        assert len(v2_chunks) == len(fake.objects("PertinentChunks"))
        assert {o["model_id"] for o in v2_chunks} == {truncated.model_id}
        assert {len(v) for v in fake.vectors("PertinentV2Chunks")} == {192}
        assert {len(v) for v in fake.vectors("PertinentV2Events", "u-ann")} == {192}
        assert {len(v) for v in fake.vectors("PertinentChunks")} == {384}  # v1 kept as it was
        registry = _registry(fake)
        assert (registry["active"], registry["previous"]) == ("v2", "v1")
        assert [(v["id"], v["prefix"], v["dim"]) for v in registry["versions"]] == [
            ("v1", "Pertinent", 384),
            ("v2", "PertinentV2", 192),
        ]

        # a query after the switch reads only the new version, with the new model
        fake.calls.clear()
        after = _results(px)
        assert after != before and all(after)
        used = _query_vectors(fake)
        assert used and {c for c, _ in used} == {"PertinentV2Chunks"}
        assert {n for _, n in used} == {192}
        assert all(s.collection.startswith("PertinentV2") for s in fake.grpc_calls("Search"))
        assert px.profile("ann").gate > 0  # refolded from the re-embedded event log
        assert (
            pertinent.Pertinent(px.store, px.embedder, px.settings).consent("olaf").personalization
            is False
        )

        # a new client on the same cluster opens the active version
        with _open(fake, truncated) as other:
            assert other.embedding_versions().active == "v2"
            assert _results(other) == after
        with pytest.raises(pertinent.EmbeddingModelMismatch):
            _open(fake, embedder)

        assert px.rollback() == "v1"
        assert _results(px) == before  # identical ids and scores
        assert (_registry(fake)["active"], _registry(fake)["previous"]) == ("v1", "v2")
    with _open(fake, embedder) as px:
        assert px.embedding_versions().active == "v1"
        assert _results(px) == before
        # roll forward from another process: the version's embedder is passed in
        assert px.rollback(embedder=truncated) == "v2"
        assert _results(px) == after


def test_forget_retention_and_key_rotation_reach_the_inactive_version(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder
) -> None:
    truncated = Truncated(embedder)
    old_key, new_key = bytes(range(32)), bytes(range(1, 33))
    with _open(fake, embedder, encryption_key=old_key) as px:
        _populate(px, "zoe")
        _populate(px, "ann")
        px.reembed(truncated)

        def owners(user: str) -> set[str]:
            return {
                name
                for name, tenant, obj in _everything(fake)
                if tenant.endswith(user) or user in (obj.get("owner"), obj.get("user_id"))
            }

        assert {"PertinentEvents", "PertinentV2Events", "PertinentChunks"} <= owners("zoe")
        assert "PertinentV2Chunks" in owners("zoe")
        receipt = px.forget_user("zoe")
        assert receipt.deleted["other_versions"] >= 5
        assert owners("zoe") == set()
        # (sealed values are random base64: "zoe" may occur in one by chance)
        clear = [SEALED.sub("", json.dumps(o)) for _, _, o in _everything(fake)]
        assert not [c for c in clear if "zoe" in c]
        assert px.forget_user("zoe").total == 0
        assert owners("ann")  # nobody else was touched

        px.settings = px.settings.model_copy(update={"retention_events_days": 1.0})
        report = px.apply_retention(now=NOW + timedelta(days=30))
        assert report.deleted["events"] == 4
        assert fake.objects("PertinentEvents", "u-ann") == []  # the inactive v1 too
        assert len(fake.objects("PertinentTurns", "u-ann")) == 1

        px.rotate_key(new_key)
    # v1, inactive during the rotation, opens with the new key only
    with _open(fake, truncated, encryption_key=new_key) as px:
        assert px.rollback(embedder=embedder) == "v1"
        assert MARKER in px.history("ann", "s")[0].text
    with pytest.raises(pertinent.DecryptionFailed):
        _open(fake, embedder, encryption_key=old_key)


def test_version_errors(fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder) -> None:
    with _open(fake, embedder) as px:
        px.ingest(CORPUS[:2], show_progress=False)
        with pytest.raises(pertinent.InvalidInput, match="no previous embedding version"):
            px.rollback()
        with pytest.raises(pertinent.InvalidInput, match="already the active"):
            px.reembed(embedder)
        assert not any(o["key"] == REGISTRY_KEY for o in fake.objects("PertinentMeta"))

        # collections of another store at the derived prefix are never dropped
        foreign = WeaviateStore(
            fake.url, grpc_port=fake.grpc_port, model_id="other", dim=3, prefix="PertinentV2"
        )
        foreign.close()
        with pytest.raises(pertinent.ConfigurationError, match="not a version of the store"):
            px.reembed(Truncated(embedder))
        assert len(fake.objects("PertinentV2Meta")) == 1
        assert px.embedding_versions().active == "v1"


def test_a_failed_build_leaves_nothing_behind(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder
) -> None:
    class Failing(Truncated):
        """Fails on its second batch of documents: the build stops half-way."""

        calls = 0

        def embed_documents(self, texts: Any) -> np.ndarray:
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("model crashed")
            return super().embed_documents(texts)

    with _open(fake, embedder) as px:
        px.ingest(CORPUS, show_progress=False)
        px.ingest({"id": "note", "text": "my own notes on retrieval"}, owner="ann")
        before = [(r.id, r.score) for r in px.search(QUERIES[1], user_id="ann")]
        with pytest.raises(RuntimeError, match="model crashed"):
            px.reembed(Failing(embedder))
        assert not [n for n in fake.collection_names() if n.startswith("PertinentV2")]
        assert not any(o["key"] == REGISTRY_KEY for o in fake.objects("PertinentMeta"))
        assert [(r.id, r.score) for r in px.search(QUERIES[1], user_id="ann")] == before
        # and a re-embed after it succeeds at the same place
        assert px.reembed(Truncated(embedder)).version == "v2"


def test_corrupt_registry_and_long_prefix_are_typed_errors(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder
) -> None:
    with _open(fake, embedder) as px:
        px.ingest(CORPUS[:1], show_progress=False)
        px.reembed(Truncated(embedder))
    fake.set_property("PertinentMeta", "value", "{not json")  # also the model record
    home = WeaviateHome(fake.url, prefix="Pertinent", grpc_port=fake.grpc_port)
    try:
        with pytest.raises(pertinent.StoreCorrupted, match="embedding-version registry"):
            home.load()
    finally:
        home.close()
    long = WeaviateHome(fake.url, prefix="P" * 40, grpc_port=fake.grpc_port)
    with pytest.raises(pertinent.ConfigurationError, match="at most 38 characters"):
        long.place(2)
    assert long.place(1) == {"prefix": "P" * 40}


def test_a_degraded_mode_replica_is_kept_per_version(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder, tmp_path: Path
) -> None:
    settings = pertinent.Settings(degraded_mode=True, degraded_fallback_path=tmp_path / "rep")
    with _open(fake, embedder, settings=settings) as px:
        px.ingest(CORPUS[:2], show_progress=False)
        with pytest.raises(pertinent.ConfigurationError, match="degraded-mode replica"):
            px.reembed(Truncated(embedder))
        assert "PertinentV2Chunks" not in fake.collection_names()
    with _open(fake, embedder) as px:
        px.reembed(Truncated(embedder))
    # reopened with the replica, version v2 gets its own (the v1 replica holds 384-dim
    # vectors and would refuse the new model)
    with _open(fake, Truncated(embedder), settings=settings) as px:
        px.ingest(CORPUS[2:3], show_progress=False)
        assert (tmp_path / "rep" / "versions" / "v2").is_dir()
        assert px.embedding_versions().active == "v2"
        with pytest.raises(pertinent.ConfigurationError, match="degraded-mode replica"):
            px.rollback(embedder=embedder)


def test_cli_rollback_on_the_cluster(
    fake: FakeWeaviate, embedder: pertinent.CachedQueryEmbedder, capsys: pytest.CaptureFixture[str]
) -> None:
    from pertinent.cli import main

    cluster = ["--url", fake.url, "--grpc-port", str(fake.grpc_port)]
    with _open(fake, embedder) as px:
        px.ingest(CORPUS[:3], show_progress=False)
        assert main(["rollback", *cluster]) == 2  # nothing to roll back to
        assert "no previous embedding" in capsys.readouterr().err  # (the CLI wraps lines)
        before = _results(px)
        px.reembed(Truncated(embedder))
    assert main(["rollback", *cluster]) == 0
    assert "active embedding version: v1" in capsys.readouterr().out
    assert (_registry(fake)["active"], _registry(fake)["previous"]) == ("v1", "v2")
    with _open(fake, embedder) as px:  # the next process opens the version rolled back to
        assert _results(px) == before
