"""The `Store` contract, run on every backend: the embedded LanceDB store, Weaviate
through the in-process fake (`fake_weaviate`), and a real Weaviate cluster when
WEAVIATE_URL is set (marked `live`)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from factories import one_hot, stored_event
from fake_weaviate import FakeWeaviate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pertinent.embeddings import CachedQueryEmbedder
from pertinent.errors import (
    DimensionMismatch,
    EmbeddingModelMismatch,
    StoreCorrupted,
    StoreNotWritable,
)
from pertinent.stores.base import SearchFilter, Store, StoredEvent, StoredTurn
from pertinent.stores.lancedb import LanceDBStore
from pertinent.stores.weaviate import WeaviateStore
from pertinent.types import Chunk

StoreFactory = Callable[[Path], Store]
ModelStoreFactory = Callable[[Path, str, int], Store]


def _lancedb(path: Path, model_id: str, dim: int) -> Store:
    return LanceDBStore(path, model_id=model_id, dim=dim)


def _prefix(path: Path) -> str:
    """One set of collections per store path, so tests sharing a cluster never meet."""
    return "T" + hashlib.sha1(str(path).encode()).hexdigest()[:12]


@pytest.fixture(scope="session")
def weaviate_fake() -> Iterator[FakeWeaviate]:
    with FakeWeaviate() as fake:
        yield fake


@pytest.fixture(
    params=["lancedb", "weaviate", pytest.param("weaviate-live", marks=pytest.mark.live)]
)
def make_store_for_model(request: pytest.FixtureRequest) -> Iterator[ModelStoreFactory]:
    if request.param == "lancedb":
        yield _lancedb
        return
    if request.param == "weaviate":
        fake: FakeWeaviate = request.getfixturevalue("weaviate_fake")
        url, grpc_port, api_key = fake.url, fake.grpc_port, None
    else:
        url = os.environ.get("WEAVIATE_URL", "")
        if not url:
            pytest.skip("set WEAVIATE_URL (and WEAVIATE_GRPC_PORT, WEAVIATE_API_KEY) to run")
        grpc_port = int(os.environ.get("WEAVIATE_GRPC_PORT", "50051"))
        api_key = os.environ.get("WEAVIATE_API_KEY")
    prefixes: list[str] = []

    def factory(path: Path, model_id: str, dim: int) -> Store:
        prefixes.append(_prefix(path))
        return WeaviateStore(
            url,
            model_id=model_id,
            dim=dim,
            api_key=api_key,
            grpc_port=grpc_port,
            prefix=_prefix(path),
            timeout_s=20,
        )

    yield factory
    if request.param == "weaviate-live":
        _drop_collections(url, grpc_port, api_key, prefixes)


def _drop_collections(url: str, grpc_port: int, api_key: str | None, prefixes: list[str]) -> None:
    """Leave the live cluster as it was: drop the collections this test created."""
    from urllib.parse import urlsplit

    import weaviate

    parts = urlsplit(url)
    secure = parts.scheme == "https"
    with weaviate.connect_to_custom(
        http_host=parts.hostname or "",
        http_port=parts.port or (443 if secure else 80),
        http_secure=secure,
        grpc_host=parts.hostname or "",
        grpc_port=grpc_port,
        grpc_secure=secure,
        auth_credentials=api_key,
        skip_init_checks=True,
    ) as client:
        for name in client.collections.list_all(simple=True):
            if any(name.startswith(p) for p in prefixes):
                client.collections.delete(name)


@pytest.fixture
def make_store(
    make_store_for_model: ModelStoreFactory, embedder: CachedQueryEmbedder
) -> Callable[[Path], Store]:
    return lambda path: make_store_for_model(path, embedder.model_id, embedder.dim)


@pytest.fixture
def store(tmp_path: Path, make_store: StoreFactory) -> Iterator[Store]:
    s = make_store(tmp_path / "s")
    yield s
    s.close()


def chunks_for(
    embedder: CachedQueryEmbedder, doc_id: str, texts: list[str], **kw: object
) -> list[Chunk]:
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
        )  # type: ignore[arg-type]
        for i, t in enumerate(texts)
    ]


def test_upsert_replaces_whole_document(store: Store, embedder: CachedQueryEmbedder) -> None:
    store.upsert_chunks(chunks_for(embedder, "d", ["one alpha", "two beta", "three gamma"]))
    store.upsert_chunks(chunks_for(embedder, "e", ["other doc"]))
    assert store.count_chunks() == 4
    store.upsert_chunks(chunks_for(embedder, "d", ["only delta now"]))
    assert store.count_chunks() == 2
    got = store.get_chunks(["d#0", "d#1", "e#0"])
    assert [c.id for c in got] == ["d#0", "e#0"]
    assert got[0].text == "only delta now"
    assert got[0].vector is not None and got[0].vector.shape == (embedder.dim,)
    assert store.document_ids() == ["d", "e"]


def test_delete_documents(store: Store, embedder: CachedQueryEmbedder) -> None:
    store.upsert_chunks(chunks_for(embedder, "d", ["a", "b"]) + chunks_for(embedder, "e", ["c"]))
    assert store.delete_documents(["d", "missing"]) == 2
    assert store.document_ids() == ["e"]
    assert store.delete_documents([]) == 0


def test_hybrid_search_fuses_both_legs(store: Store, embedder: CachedQueryEmbedder) -> None:
    texts = [
        "rotate the API keys monthly",
        "bananas are yellow fruit",
        "credential rotation policy for secrets",
        "zebra crossing rules",
    ]
    store.upsert_chunks(chunks_for(embedder, "d", texts))
    q = embedder.embed_query("rotate API keys")
    hits = store.hybrid_search("rotate API keys", q, k=4, alpha=0.5, where=SearchFilter())
    assert hits[0].id == "d#0"
    assert hits[0].hybrid == pytest.approx(1.0)
    assert all(0.0 <= h.hybrid <= 1.0 for h in hits)
    assert [h.hybrid for h in hits] == sorted((h.hybrid for h in hits), reverse=True)
    for h in hits:
        assert h.chunk.vector is not None
        assert h.vector_cosine == pytest.approx(float(h.chunk.vector @ q), abs=1e-5)
    # alpha=1 is pure vector order; alpha=0 only returns keyword matches
    vec_only = store.hybrid_search("rotate API keys", q, k=4, alpha=1.0, where=SearchFilter())
    cosines = [h.vector_cosine for h in vec_only]
    assert cosines == sorted(cosines, reverse=True)  # type: ignore[type-var]
    kw_only = store.hybrid_search("bananas", q, k=4, alpha=0.0, where=SearchFilter())
    assert [h.id for h in kw_only] == ["d#1"]


def test_visibility_owner_acl_exclude(store: Store, embedder: CachedQueryEmbedder) -> None:
    store.upsert_chunks(
        chunks_for(embedder, "public", ["shared handbook on keys"])
        + chunks_for(embedder, "alice-note", ["alice private note on keys"], owner="alice")
        + chunks_for(embedder, "admin", ["admin runbook on keys"], acl=("role:admin",))
    )
    q = embedder.embed_query("keys")

    def ids(where: SearchFilter) -> set[str]:
        return {h.id for h in store.hybrid_search("keys", q, k=10, alpha=0.5, where=where)}

    assert ids(SearchFilter()) == {"public#0"}
    assert ids(SearchFilter(user_id="alice")) == {"public#0", "alice-note#0"}
    assert ids(SearchFilter(user_id="bob")) == {"public#0"}
    assert ids(SearchFilter(user_id="bob", principals=("role:admin",))) == {"public#0", "admin#0"}
    assert ids(SearchFilter(principals=("role:admin",), exclude_ids=("public#0",))) == {"admin#0"}
    assert store.get_chunks(["alice-note#0"], user_id="bob") == []
    assert [c.id for c in store.get_chunks(["alice-note#0"], user_id="alice")] == ["alice-note#0"]


def test_get_vectors_is_get_chunks_narrowed(store: Store, embedder: CachedQueryEmbedder) -> None:
    store.upsert_chunks(
        chunks_for(embedder, "public", ["shared handbook on keys", "second page"])
        + chunks_for(embedder, "alice-note", ["alice private note on keys"], owner="alice")
    )
    ids = ["alice-note#0", "public#1", "missing#0", "public#0", "public#1"]
    for user in (None, "alice", "bob"):
        chunks = {c.id: c.vector for c in store.get_chunks(ids, user_id=user)}
        vectors = store.get_vectors(ids, user_id=user)
        assert set(vectors) == set(chunks)
        for i, v in vectors.items():
            assert v.dtype == np.float32 and v.shape == (embedder.dim,)
            assert np.array_equal(v, chunks[i])
    assert "alice-note#0" in store.get_vectors(["alice-note#0"], user_id="alice")
    assert store.get_vectors(["alice-note#0"], user_id="bob") == {}
    assert store.get_vectors([]) == {}
    texts = ["shared handbook on keys", "second page"]
    assert np.allclose(
        np.stack([store.get_vectors(["public#0", "public#1"])[f"public#{i}"] for i in (0, 1)]),
        embedder.embed_documents(texts),
        atol=1e-6,
    )


def test_persists_across_reopen(
    tmp_path: Path, make_store: StoreFactory, embedder: CachedQueryEmbedder
) -> None:
    s = make_store(tmp_path / "p")
    s.upsert_chunks(chunks_for(embedder, "d", ["persisted text"]))
    s.close()
    s2 = make_store(tmp_path / "p")
    assert s2.count_chunks() == 1
    q = embedder.embed_query("persisted")
    assert s2.hybrid_search("persisted", q, k=1, alpha=0.5, where=SearchFilter())[0].id == "d#0"


def test_reopen_with_other_model_is_refused(
    tmp_path: Path, make_store_for_model: ModelStoreFactory, embedder: CachedQueryEmbedder
) -> None:
    make_store_for_model(tmp_path / "m", embedder.model_id, embedder.dim).close()
    with pytest.raises(EmbeddingModelMismatch, match="Open it with the same model"):
        make_store_for_model(tmp_path / "m", "other-model@768", 768)


def test_wrong_dimension_is_refused(store: Store, embedder: CachedQueryEmbedder) -> None:
    with pytest.raises(DimensionMismatch):
        store.vector_search(np.ones(7, dtype=np.float32), k=3, where=SearchFilter())
    bad = Chunk(
        id="x#0",
        doc_id="x",
        text="t",
        position=0,
        model_id=embedder.model_id,
        vector=np.ones(7, dtype=np.float32),
    )
    with pytest.raises(DimensionMismatch):
        store.upsert_chunks([bad])
    assert store.count_chunks() == 0


def test_rows_of_different_lengths_are_refused_and_nothing_is_written(
    store: Store, embedder: CachedQueryEmbedder
) -> None:
    good, short = chunks_for(embedder, "r", ["first text", "second text"])
    short = replace(short, vector=np.ones(7, dtype=np.float32))
    with pytest.raises(DimensionMismatch, match=str(embedder.dim)):
        store.upsert_chunks([good, short])
    assert store.count_chunks() == 0
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    events = [_event("u", 0, embedder.dim, when), _event("u", 1, 7, when)]
    with pytest.raises(DimensionMismatch, match=str(embedder.dim)):
        store.append_events(events)
    assert store.read_events("u") == []


def _event(user: str, i: int, dim: int, when: datetime) -> StoredEvent:
    return stored_event(f"{user}-{i}", user, one_hot(i, dim), text=f"event {i}", at=when)


def test_read_events_in_time_then_id_order(store: Store, embedder: CachedQueryEmbedder) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    hours = {3: 2, 0: 5, 4: 0, 1: 2, 2: 1}  # event index -> hours after t0; 1 and 3 tie
    store.append_events(
        [_event("u", i, embedder.dim, t0 + timedelta(hours=h)) for i, h in hours.items()]
    )
    store.append_events([_event("u", 5, embedder.dim, t0 - timedelta(hours=1))])
    events = store.read_events("u")
    assert [e.id for e in events] == ["u-5", "u-4", "u-2", "u-1", "u-3", "u-0"]
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    for e in events:
        assert np.array_equal(e.vector, _event("u", int(e.id[2:]), embedder.dim, t0).vector)
    log = store.read_event_arrays("u")
    assert len(log) == 6 and log.vectors.shape == (6, embedder.dim)
    assert np.array_equal(log.vectors, np.stack([e.vector for e in events]))
    assert log.weights.tolist() == [e.weight for e in events]
    assert log.times.tolist() == [e.timestamp.timestamp() for e in events]
    empty = store.read_event_arrays("nobody")
    assert len(empty) == 0 and empty.vectors.shape == (0, embedder.dim)


def test_event_log_and_delete_user(store: Store, embedder: CachedQueryEmbedder) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    store.append_events(
        [_event("alice", i, embedder.dim, t0 + timedelta(hours=i)) for i in range(5)]
    )
    store.append_events([_event("bob", 1, embedder.dim, t0)])
    store.append_turns(
        [
            StoredTurn(
                id="t1",
                user_id="alice",
                session_id="s",
                role="user",
                text="hi",
                timestamp=t0,
                model_id="m",
                vector=np.ones(embedder.dim, dtype=np.float32),
            )
        ]
    )
    store.upsert_chunks(chunks_for(embedder, "note", ["alice note"], owner="alice"))
    store.put_user_settings("alice", {"consent": {"personalization": False}})
    store.put_user_settings("bob", {"consent": {"memory": False}})
    events = store.read_events("alice")
    assert [e.id for e in events] == [f"alice-{i}" for i in range(5)]
    assert [e.text for e in events] == [f"event {i}" for i in range(5)]
    assert all(e.vector.shape == (embedder.dim,) and e.weight == 1.0 for e in events)
    assert events[0].timestamp == t0
    assert np.array_equal(events[2].vector, _event("a", 2, embedder.dim, t0).vector)
    assert [t.text for t in store.read_turns("alice", "s")] == ["hi"]
    assert store.read_turns("alice", "other") == []
    assert store.known_users() == ["alice", "bob"]

    counts = store.delete_user("alice")
    assert dict(counts) == {"events": 5, "turns": 1, "owned_chunks": 1, "user_settings": 1}
    assert store.read_events("alice") == []
    assert store.get_user_settings("alice") is None
    assert [e.id for e in store.read_events("bob")] == ["bob-1"]
    assert store.get_user_settings("bob") == {"consent": {"memory": False}}
    assert dict(store.delete_user("alice")) == {
        "events": 0,
        "turns": 0,
        "owned_chunks": 0,
        "user_settings": 0,
    }


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(user=st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s))
def test_hostile_user_ids_only_reach_their_own_rows(
    store: Store, embedder: CachedQueryEmbedder, user: str
) -> None:
    """Ids are spliced into SQL filters: quotes and SQL fragments must stay literal."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    store.append_events([_event("victim", 0, embedder.dim, t0)])
    store.append_events([_event(user, 1, embedder.dim, t0)])
    assert {e.user_id for e in store.read_events(user)} == {user}
    if user != "victim":
        assert all(e.user_id == "victim" for e in store.read_events("victim"))
        store.delete_user(user)
        assert len(store.read_events("victim")) >= 1
    store.delete_user("victim")
    store.delete_user(user)


def test_not_writable_directory(tmp_path: Path, embedder: CachedQueryEmbedder) -> None:
    if os.geteuid() == 0:
        # root ignores permission bits; a file in place of the directory is refused for all
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(StoreNotWritable, match=r"not a directory|Cannot create"):
            LanceDBStore(blocker / "store", model_id=embedder.model_id, dim=embedder.dim)
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(StoreNotWritable):
        LanceDBStore(ro / "store", model_id=embedder.model_id, dim=embedder.dim)


def test_corrupted_store_is_reported(tmp_path: Path, embedder: CachedQueryEmbedder) -> None:
    path = tmp_path / "c"
    s = LanceDBStore(path, model_id=embedder.model_id, dim=embedder.dim)
    s.upsert_chunks(chunks_for(embedder, "d", ["some text"]))
    s.close()
    for manifest in (path / "meta.lance" / "_versions").iterdir():
        manifest.write_bytes(b"garbage")
    with pytest.raises(StoreCorrupted, match="restore them from a backup"):
        LanceDBStore(path, model_id=embedder.model_id, dim=embedder.dim)
    # the chunk data itself was not touched by the failed open
    assert any((path / "chunks.lance" / "data").iterdir())


def test_reingest_is_idempotent(store: Store, embedder: CachedQueryEmbedder) -> None:
    texts = ["rotate the API keys monthly", "refunds take five business days"]
    store.upsert_chunks(chunks_for(embedder, "d", texts))
    q = embedder.embed_query("rotate keys")
    before = store.hybrid_search("rotate keys", q, k=5, alpha=0.5, where=SearchFilter())
    store.upsert_chunks(chunks_for(embedder, "d", texts))
    after = store.hybrid_search("rotate keys", q, k=5, alpha=0.5, where=SearchFilter())
    assert store.count_chunks() == 2
    assert [h.id for h in after] == [h.id for h in before] == ["d#0", "d#1"]
    assert [h.hybrid for h in after] == pytest.approx([h.hybrid for h in before])


def test_every_search_returns_stored_vectors(store: Store, embedder: CachedQueryEmbedder) -> None:
    chunks = chunks_for(embedder, "d", ["rotate the API keys", "capital gains tax"])
    store.upsert_chunks(chunks)
    q = embedder.embed_query("API keys")
    stored = {c.id: c.vector for c in chunks}
    for hits in (
        store.vector_search(q, k=2, where=SearchFilter()),
        store.keyword_search("keys", k=2, where=SearchFilter()),
        store.hybrid_search("keys", q, k=2, alpha=0.5, where=SearchFilter()),
    ):
        assert hits
        for h in hits:
            assert h.chunk.vector is not None
            np.testing.assert_allclose(h.chunk.vector, stored[h.id], atol=1e-6)
    assert store.keyword_search("keys", k=2, where=SearchFilter())[0].bm25 > 0  # type: ignore[operator]


def test_users_without_records_read_empty(store: Store, embedder: CachedQueryEmbedder) -> None:
    """A user who never wrote anything (no tenant on Weaviate) is not an error."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert store.read_events("nobody") == []
    assert store.read_turns("nobody", "s") == []
    assert store.known_users() == []
    assert dict(store.delete_user("nobody")) == {
        "events": 0,
        "turns": 0,
        "owned_chunks": 0,
        "user_settings": 0,
    }
    store.append_events([_event("alice", 0, embedder.dim, t0)])
    assert store.read_events("bob") == []
    assert store.known_users() == ["alice"]


def test_purge_before_and_user_settings(store: Store, embedder: CachedQueryEmbedder) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for user in ("alice", "Bob O'Neil"):
        store.append_events(
            [_event(user, i, embedder.dim, t0 + timedelta(days=i)) for i in range(4)]
        )
    assert store.purge_before("events", t0 + timedelta(days=2)) == 4  # days 0 and 1, both users
    assert [e.id for e in store.read_events("alice")] == ["alice-2", "alice-3"]
    assert store.purge_before("turns", t0) == 0
    with pytest.raises(ValueError):
        store.purge_before("chunks", t0)

    assert store.get_user_settings("alice") is None
    store.put_user_settings("alice", {"consent": {"personalization": False}})
    store.put_user_settings("alice", {"consent": {"personalization": True}, "x": 1})
    assert store.get_user_settings("alice") == {"consent": {"personalization": True}, "x": 1}
    assert store.get_user_settings("Bob O'Neil") is None


def test_owned_only_and_doc_restrictions(store: Store, embedder: CachedQueryEmbedder) -> None:
    store.upsert_chunks(
        chunks_for(embedder, "shared", ["shared notes on keys"])
        + chunks_for(embedder, "a-mem", ["alice memory on keys"], owner="alice")
        + chunks_for(embedder, "b-mem", ["bob memory on keys"], owner="bob")
    )
    q = embedder.embed_query("keys")

    def ids(where: SearchFilter) -> set[str]:
        return {h.id for h in store.hybrid_search("keys", q, k=10, alpha=0.5, where=where)}

    assert ids(SearchFilter(user_id="alice", owned_only=True)) == {"a-mem#0"}
    assert ids(SearchFilter(owned_only=True)) == set()
    assert ids(SearchFilter(user_id="alice", doc_ids=("shared",))) == {"shared#0"}
    assert ids(SearchFilter(user_id="alice", doc_ids=())) == set()
    assert {
        h.id
        for h in store.vector_search(q, k=10, where=SearchFilter(user_id="bob", owned_only=True))
    } == {"b-mem#0"}
