"""What the Weaviate store puts on the wire, read from the fake's captured requests:
schema bodies, hybrid requests (tenant, alpha, fusion, vector bytes, filters, limit),
tenant routing of user logs, forgetting as tenant deletion, the calls one `retrieve`
makes, and the CLI driving a cluster."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CORPUS
from factories import one_hot, stored_event
from fake_weaviate import FakeWeaviate
from weaviate.proto.v1 import base_pb2, base_search_pb2

import pertinent
from pertinent.cli import main
from pertinent.embeddings import CachedQueryEmbedder
from pertinent.stores.base import SearchFilter, StoredEvent
from pertinent.stores.lancedb import LanceDBStore
from pertinent.stores.resilience import ResilientStore
from pertinent.stores.weaviate import WeaviateStore, tenant_for
from pertinent.types import Chunk

Op = base_pb2.Filters.Operator


@pytest.fixture
def fake() -> Iterator[FakeWeaviate]:
    with FakeWeaviate() as f:
        yield f


@pytest.fixture
def store(fake: FakeWeaviate, embedder: CachedQueryEmbedder) -> Iterator[WeaviateStore]:
    s = WeaviateStore(
        fake.url, grpc_port=fake.grpc_port, model_id=embedder.model_id, dim=embedder.dim
    )
    yield s
    s.close()


def chunks(embedder: CachedQueryEmbedder, doc_id: str, texts: list[str], **kw: Any) -> list[Chunk]:
    vecs = embedder.embed_documents(texts)
    return [
        Chunk(
            id=f"{doc_id}#{i}",
            doc_id=doc_id,
            text=t,
            position=i,
            model_id=embedder.model_id,
            vector=vecs[i],
            **kw,
        )
        for i, t in enumerate(texts)
    ]


def flatten(f: base_pb2.Filters) -> list[tuple[str, str, list[str]]]:
    """An AND tree of leaf filters as (property, operator, values)."""
    if f.operator == Op.OPERATOR_AND:
        return [leaf for child in f.filters for leaf in flatten(child)]
    values = list(f.value_text_array.values) if f.HasField("value_text_array") else [f.value_text]
    return [(f.target.property, Op.Name(f.operator), values)]


def test_schema_bodies(fake: FakeWeaviate, store: WeaviateStore) -> None:
    bodies = {c.body["class"]: c.body for c in fake.rest_calls("POST", "/v1/schema")}
    assert set(bodies) == {
        "PertinentMeta",
        "PertinentChunks",
        "PertinentEvents",
        "PertinentTurns",
        "PertinentUsers",
        "PertinentSettings",
    }
    for body in bodies.values():
        # self-provided vectors only: the cluster never vectorizes pertinent's objects
        assert body["vectorConfig"]["default"]["vectorizer"] == {"none": {}}
        assert body["vectorConfig"]["default"]["vectorIndexConfig"]["distance"] == "cosine"
    chunks_body = bodies["PertinentChunks"]
    assert chunks_body["vectorConfig"]["default"]["vectorIndexType"] == "hnsw"
    assert chunks_body.get("multiTenancyConfig", {"enabled": False})["enabled"] is False
    assert chunks_body["invertedIndexConfig"]["bm25"] == {"k1": 1.2, "b": 0.75}
    assert chunks_body["invertedIndexConfig"]["stopwords"]["preset"] == "none"
    props = {p["name"]: p for p in chunks_body["properties"]}
    assert props["text"]["tokenization"] == "word" and props["text"]["indexSearchable"] is True
    for key in ("owner_key", "acl_keys", "doc_key", "generation"):
        assert props[key]["tokenization"] == "field", key
        assert props[key]["indexFilterable"] is True and props[key]["indexSearchable"] is False
    assert props["acl_keys"]["dataType"] == ["text[]"]
    for name in ("PertinentEvents", "PertinentTurns"):
        mt = bodies[name]["multiTenancyConfig"]
        assert mt == {"enabled": True, "autoTenantCreation": True, "autoTenantActivation": True}
        assert bodies[name]["vectorConfig"]["default"]["vectorIndexType"] == "flat"
    # the model the store was built with is recorded in the cluster
    meta = fake.objects("PertinentMeta")
    assert len(meta) == 1 and '"dim": 384' in meta[0]["value"]


def test_hybrid_search_is_one_request_with_everything(
    fake: FakeWeaviate, store: WeaviateStore, embedder: CachedQueryEmbedder
) -> None:
    store.upsert_chunks(
        chunks(embedder, "pub", ["rotate API keys every 90 days", "refunds take five days"])
        + chunks(embedder, "mine", ["alice rotates her keys weekly"], owner="alice")
    )
    q = embedder.embed_query("rotate keys")
    fake.calls.clear()
    where = SearchFilter(
        user_id="alice", principals=("role:admin", "user:alice"), exclude_ids=("pub#1",)
    )
    hits = store.hybrid_search("rotate keys", q, k=7, alpha=0.3, where=where)

    searches = fake.grpc_calls("Search")
    assert len(fake.calls) == len(searches) == 1
    req = searches[0]
    assert req.collection == "PertinentChunks" and req.tenant == ""
    assert req.limit == 7
    h = req.hybrid_search
    assert h.query == "rotate keys" and list(h.properties) == ["text"]
    assert h.alpha == pytest.approx(0.3)
    assert h.fusion_type == base_search_pb2.Hybrid.FUSION_TYPE_RELATIVE_SCORE
    assert list(h.targets.target_vectors) == ["default"]
    np.testing.assert_array_equal(np.frombuffer(h.vector_bytes, dtype="<f4"), q)
    assert req.metadata.vector and list(req.metadata.vectors) == ["default"]
    assert req.metadata.score and req.metadata.explain_score
    leaves = flatten(req.filters)
    assert ("owner_key", "OPERATOR_CONTAINS_ANY", ["shared", "u-alice"]) in leaves
    assert (
        "acl_keys",
        "OPERATOR_CONTAINS_ANY",
        ["*", "<role:admin>", "<user:alice>"],
    ) in leaves
    excluded = str(uuid.uuid5(uuid.UUID("5b0f3c8e-4a57-4c1e-9d59-6f2f1d0b7a11"), "chunk:pub#1"))
    assert ("_id", "OPERATOR_NOT_EQUAL", [excluded]) in leaves

    # vectors came back in the same response; bm25 is read from Weaviate's explainScore
    assert [x.id for x in hits][:2] == ["pub#0", "mine#0"]
    assert "pub#1" not in {x.id for x in hits}
    for x in hits:
        assert x.chunk.vector is not None and x.chunk.vector.shape == (embedder.dim,)
        assert x.vector_cosine == pytest.approx(float(x.chunk.vector @ q), abs=1e-6)
    keyword = {x.id: x.bm25 for x in store.keyword_search("rotate keys", k=7, where=where)}
    assert {x.id for x in hits if x.bm25 is not None} == set(keyword) == {"pub#0", "mine#0"}
    for x in hits:
        if x.bm25 is not None:
            assert x.bm25 == pytest.approx(keyword[x.id], rel=1e-5)


def test_anonymous_search_sees_only_shared_public_chunks(
    fake: FakeWeaviate, store: WeaviateStore, embedder: CachedQueryEmbedder
) -> None:
    q = embedder.embed_query("keys")
    fake.calls.clear()
    store.vector_search(q, k=3, where=SearchFilter())
    leaves = flatten(fake.grpc_calls("Search")[0].filters)
    assert ("owner_key", "OPERATOR_CONTAINS_ANY", ["shared"]) in leaves
    assert ("acl_keys", "OPERATOR_CONTAINS_ANY", ["*"]) in leaves
    nv = fake.grpc_calls("Search")[0].near_vector
    np.testing.assert_array_equal(np.frombuffer(nv.vector_bytes, dtype="<f4"), q)


def _event(user: str, i: int, dim: int) -> StoredEvent:
    return stored_event(f"{user}-{i}", user, one_hot(i, dim))


def test_user_logs_live_in_one_tenant_per_user(
    fake: FakeWeaviate, store: WeaviateStore, embedder: CachedQueryEmbedder
) -> None:
    odd = "Bob O'Neil; DROP TABLE"
    fake.calls.clear()
    store.append_events([_event("alice", 0, embedder.dim), _event(odd, 1, embedder.dim)])
    (batch,) = fake.grpc_calls("BatchObjects")
    routed = Counter((o.collection, o.tenant) for o in batch.objects)
    assert routed == {
        ("PertinentEvents", "u-alice"): 1,
        ("PertinentEvents", tenant_for(odd)): 1,
        ("PertinentUsers", ""): 2,  # the registry rides in the same request
    }
    assert tenant_for(odd).startswith("h-") and len(tenant_for(odd)) <= 64
    vec = next(o for o in batch.objects if o.tenant == "u-alice").vectors[0]
    assert vec.name == "default"
    np.testing.assert_array_equal(
        np.frombuffer(vec.vector_bytes, dtype="<f4"), _event("a", 0, embedder.dim).vector
    )
    assert fake.tenants("PertinentEvents") == sorted(["u-alice", tenant_for(odd)])

    fake.calls.clear()
    assert [e.id for e in store.read_events(odd)] == [f"{odd}-1"]
    (req,) = fake.grpc_calls("Search")
    assert req.collection == "PertinentEvents" and req.tenant == tenant_for(odd)
    assert not req.HasField("filters")  # isolation is the tenant, not a filter


def test_forget_user_drops_the_users_tenants(
    fake: FakeWeaviate, store: WeaviateStore, embedder: CachedQueryEmbedder
) -> None:
    store.append_events([_event("alice", i, embedder.dim) for i in range(3)])
    store.append_events([_event("bob", 0, embedder.dim)])
    store.upsert_chunks(chunks(embedder, "note", ["alice's note"], owner="alice"))
    fake.calls.clear()
    assert dict(store.delete_user("alice")) == {
        "events": 3,
        "turns": 0,
        "owned_chunks": 1,
        "user_settings": 0,
    }
    (drop,) = fake.rest_calls("DELETE", "/v1/schema/PertinentEvents/tenants")
    assert drop.body == ["u-alice"]
    assert fake.tenants("PertinentEvents") == ["u-bob"]
    deletes = fake.grpc_calls("BatchDelete")
    assert flatten(deletes[0].filters) == [("owner_key", "OPERATOR_EQUAL", ["u-alice"])]
    assert store.known_users() == ["bob"]


def test_ranking_matches_the_embedded_store(
    tmp_path: Path, store: WeaviateStore, embedder: CachedQueryEmbedder
) -> None:
    """Same chunks, same query: the vector leg and the visibility rules agree exactly
    across backends (BM25 tokenizers differ, so alpha=1 compares the fusion itself)."""
    lance = LanceDBStore(tmp_path / "l", model_id=embedder.model_id, dim=embedder.dim)
    data = [
        c
        for i, d in enumerate(CORPUS)
        for c in chunks(
            embedder,
            str(d["id"]),
            [str(d["text"])],
            acl=("role:admin",) if i % 3 == 0 else (),
            owner="alice" if i % 4 == 1 else None,
        )
    ]
    lance.upsert_chunks(data)
    store.upsert_chunks(data)
    q = embedder.embed_query("how do I rotate API keys?")
    for where in (
        SearchFilter(),
        SearchFilter(user_id="alice"),
        SearchFilter(user_id="bob", principals=("role:admin",)),
        SearchFilter(user_id="alice", principals=("role:admin",), exclude_ids=("billing#0",)),
    ):
        a = lance.hybrid_search("rotate keys", q, k=10, alpha=1.0, where=where)
        b = store.hybrid_search("rotate keys", q, k=10, alpha=1.0, where=where)
        assert [h.id for h in b] == [h.id for h in a]
        assert [h.hybrid for h in b] == pytest.approx([h.hybrid for h in a], abs=1e-5)
        kw_a = {h.id for h in lance.keyword_search("rotate keys", k=10, where=where)}
        kw_b = {h.id for h in store.keyword_search("rotate keys", k=10, where=where)}
        assert kw_b == kw_a
    lance.close()


def test_calls_of_one_retrieve(fake: FakeWeaviate, embedder: CachedQueryEmbedder) -> None:
    """The steady state of `retrieve` for a known user in a session: one hybrid Search,
    one vector Search (the user-blended leg), then the turn and the query event, each one
    BatchObjects. No REST call; the profile and session are read once per process, the
    user's consent at most every few seconds (a Search on PertinentSettings, left out of
    the counts below because whether it falls in a given call depends on the clock)."""

    def calls() -> list[tuple[str, str]]:
        return [
            (c.kind, c.method)
            for c in fake.calls
            if not (c.method == "Search" and c.message.collection == "PertinentSettings")
        ]

    with pertinent.open(url=fake.url, grpc_port=fake.grpc_port, embedder=embedder) as px:
        px.ingest(CORPUS, show_progress=False)
        px.record("ana", [pertinent.Event(kind="open", item_id="keys#0")] * 3)
        fake.calls.clear()
        px.retrieve("rotate API keys", user_id="ana", session_id="s1")
        first = calls()
        fake.calls.clear()
        ctx = px.retrieve("how often do keys rotate?", user_id="ana", session_id="s1")
        steady = calls()
        assert ctx.results and ctx.results[0].id == "keys#0"

    assert Counter(steady) == {("grpc", "Search"): 2, ("grpc", "BatchObjects"): 2}
    searches = [s for s in fake.grpc_calls("Search") if s.collection != "PertinentSettings"]
    assert {s.HasField("hybrid_search") for s in searches} == {True, False}
    assert all(s.collection == "PertinentChunks" for s in searches)
    writes = fake.grpc_calls("BatchObjects")[-2:]
    assert sorted(o.collection for w in writes for o in w.objects) == [
        "PertinentEvents",
        "PertinentTurns",
        "PertinentUsers",
        "PertinentUsers",
    ]
    # the first retrieve in this process also reads the user's event log (to build the
    # profile) and the session's turn log, once each
    assert Counter(first) == {("grpc", "Search"): 4, ("grpc", "BatchObjects"): 2}


def test_fused_user_leg_is_one_search_per_retrieve(
    fake: FakeWeaviate, embedder: CachedQueryEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`user_leg="fused"`: a warm user's retrieve is one hybrid Search whose vector is the
    user-blended query, and every score it explains is still about the query itself.

    The consent cache is held for the test: a consent re-read still loading when the
    search starts sends it down the two-search path, on purpose (test_client.py)."""
    monkeypatch.setattr("pertinent.client._CONSENT_TTL_S", 3600.0)
    settings = pertinent.Settings(user_leg="fused", weaviate_url=fake.url)
    with pertinent.open(
        settings=settings, url=fake.url, grpc_port=fake.grpc_port, embedder=embedder
    ) as px:
        px.ingest(CORPUS, show_progress=False)
        px.record("ana", [pertinent.Event(kind="open", item_id="keys#0")] * 3)
        px.retrieve("rotate API keys", user_id="ana", session_id="s1")
        fake.calls.clear()
        query = "how often do keys rotate?"
        ctx = px.retrieve(query, user_id="ana", session_id="s1")
        steady = Counter(
            (c.kind, c.method)
            for c in fake.calls
            if not (c.method == "Search" and c.message.collection == "PertinentSettings")
        )
        q = embedder.embed_query(query)
        k = settings.candidates + settings.user_candidates

    assert steady == {("grpc", "Search"): 1, ("grpc", "BatchObjects"): 2}
    search = fake.grpc_calls("Search")[-1]
    assert search.HasField("hybrid_search") and search.limit == k
    sent = np.frombuffer(search.hybrid_search.vector_bytes, dtype="<f4")
    assert float(np.linalg.norm(sent)) == pytest.approx(1.0, abs=1e-5)
    assert 0.5 < float(sent @ q) < 0.9999  # pulled toward the user, not the query itself
    assert ctx.results and ctx.results[0].id == "keys#0"
    for r in ctx.results:
        assert r.chunk.vector is not None
        assert r.explain.vector == pytest.approx(float(r.chunk.vector @ q), abs=1e-5)
        assert 0.0 <= r.explain.hybrid <= 1.0
        assert r.explain.user_gate > 0


def test_settings_from_env_select_weaviate(
    fake: FakeWeaviate, embedder: CachedQueryEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERTINENT_BACKEND", "weaviate")
    monkeypatch.setenv("PERTINENT_WEAVIATE_URL", fake.url)
    monkeypatch.setenv("PERTINENT_WEAVIATE_GRPC_PORT", str(fake.grpc_port))
    monkeypatch.setenv("PERTINENT_WEAVIATE_COLLECTION_PREFIX", "Env")
    with pertinent.open(embedder=embedder) as px:
        assert isinstance(px.store, ResilientStore)
        assert isinstance(px.store.inner, WeaviateStore)
        px.ingest("Refunds take five business days.", show_progress=False)
    assert "EnvChunks" in fake.collection_names()
    assert len(fake.objects("EnvChunks")) == 1


def test_cli_ingest_ask_forget_on_a_cluster(
    fake: FakeWeaviate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keys.md").write_text("# Keys\n\nRotate API keys every 90 days in the console.\n")
    (docs / "tax.txt").write_text("Capital gains tax applies to shares sold within a year.")
    remote = ["--backend", "weaviate", "--url", fake.url, "--grpc-port", str(fake.grpc_port)]
    assert main(["ingest", str(docs), *remote]) == 0
    assert f"ingested 2 documents as 2 chunks into {fake.url}" in capsys.readouterr().out
    assert len(fake.objects("PertinentChunks")) == 2

    args = ["ask", "how often do I rotate keys?", "--user", "ana", "--session", "s1"]
    assert main([*args, *remote, "--max-tokens", "120"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("#1 keys.md#0")
    assert "/120 tokens (tiktoken:o200k_base)" in out
    assert fake.tenants("PertinentTurns") == ["u-ana"]

    assert main(["forget", "ana", *remote]) == 0
    out = capsys.readouterr().out
    assert "forgot user 'ana'" in out and "events: 1" in out and "turns: 1" in out
    assert fake.tenants("PertinentTurns") == [] and fake.tenants("PertinentEvents") == []


@pytest.mark.parametrize("version", ["1.32.4", "1.40.3"])
def test_alpha_zero_reaches_the_server_as_zero(version: str, embedder: CachedQueryEmbedder) -> None:
    """alpha=0 is pure BM25, not "unset": servers from 1.36.6 read `alpha_param`."""
    with FakeWeaviate(version=version) as fake:
        store = WeaviateStore(
            fake.url, grpc_port=fake.grpc_port, model_id=embedder.model_id, dim=embedder.dim
        )
        store.upsert_chunks(chunks(embedder, "d", ["bananas are yellow", "rotate API keys"]))
        q = embedder.embed_query("bananas")
        hits = store.hybrid_search("keys", q, k=2, alpha=0.0, where=SearchFilter())
        store.close()
    h = fake.grpc_calls("Search")[-1].hybrid_search
    if version == "1.40.3":
        assert h.use_alpha_param and h.HasField("alpha_param") and h.alpha_param == 0.0
    else:
        assert not h.use_alpha_param and h.alpha == 0.0
    assert [x.id for x in hits] == ["d#1"]  # the vector leg (bananas) did not take part


def test_cli_retention_on_a_cluster(fake: FakeWeaviate, capsys: pytest.CaptureFixture[str]) -> None:
    remote = ["--url", fake.url, "--grpc-port", str(fake.grpc_port)]
    assert main(["ask", "rotate keys", "--user", "ana", "--session", "s1", *remote]) == 0
    assert len(fake.objects("PertinentEvents", "u-ana")) == 1
    later = "2100-01-01T00:00:00+00:00"
    assert main(["retention", "apply", "--events-days", "1", "--now", later, *remote]) == 0
    assert "events: purged 1 rows older than 2099-12-31" in capsys.readouterr().out
    assert fake.objects("PertinentEvents", "u-ana") == []
    assert len(fake.objects("PertinentTurns", "u-ana")) == 1  # no turns window was set
    (purge,) = [d for d in fake.grpc_calls("BatchDelete") if d.collection == "PertinentEvents"]
    assert purge.tenant == "u-ana"
    assert flatten(purge.filters) == [("ts", "OPERATOR_LESS_THAN", ["2099-12-31T00:00:00.000000Z"])]


def test_cli_demo_on_a_cluster(
    fake: FakeWeaviate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "proj"
    (root / "docs").mkdir(parents=True)
    (root / "README.md").write_text("# Proj\n\nA project about keeping and forgetting data.")
    (root / "docs" / "privacy.md").write_text(
        "# Privacy\n\nForget a user and delete their events, retention windows, isolation."
    )
    (root / "docs" / "scoring.md").write_text(
        "# Scoring\n\nHybrid BM25 and vector fusion, decay half-life, MMR diversity."
    )
    demo = ["demo", "--root", str(root), "--data", str(tmp_path / "demo")]
    remote = ["--backend", "weaviate", "--url", fake.url, "--grpc-port", str(fake.grpc_port)]
    assert main([*demo, *remote]) == 0
    out = capsys.readouterr().out
    assert f"pertinent demo: Weaviate at {fake.url}" in out
    assert "priya (privacy officer): packed" in out and "sam (search engineer): packed" in out
    assert "top-5 overlap between the two users" in out and "× gate" in out
    assert fake.tenants("PertinentDemoEvents") == ["u-priya", "u-sam"]
    assert len(fake.objects("PertinentDemoChunks")) == 3
    assert not (tmp_path / "demo").exists()  # nothing local
    history = len(fake.objects("PertinentDemoEvents", "u-sam"))
    assert main([*demo, *remote]) == 0  # a fresh run starts the personas over
    assert len(fake.objects("PertinentDemoEvents", "u-sam")) == history
