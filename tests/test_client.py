"""The public API end to end: real MiniLM, real LanceDB, real tiktoken."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pertinent
from pertinent import Budget, Event
from pertinent.prompts.tokenizers import tokenizer_for


def test_ingest_is_idempotent_and_replaces(px: pertinent.Pertinent) -> None:
    r1 = px.ingest(CORPUS, show_progress=False)
    r2 = px.ingest(CORPUS, show_progress=False)
    assert r1.chunks == r2.chunks == px.store.count_chunks() == len(CORPUS)
    assert (
        px.ingest("same text", show_progress=False).doc_ids
        == px.ingest("same text", show_progress=False).doc_ids
    )
    assert px.store.count_chunks() == len(CORPUS) + 1
    long = " ".join(f"Sentence number {i} talks about topic {i}." for i in range(200))
    px.ingest({"id": "long", "text": long}, show_progress=False)
    n_long = len([c for c in px.store.document_ids() if c == "long"])
    assert n_long == 1
    before = px.store.count_chunks()
    px.ingest({"id": "long", "text": "now it is short"}, show_progress=False)
    assert px.store.count_chunks() < before
    assert [c.text for c in px.store.get_chunks(["long#0", "long#1"])] == ["now it is short"]


def test_ingest_files(px: pertinent.Pertinent, tmp_path: Path) -> None:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("# Alpha guide\n\nThe alpha procedure has three steps.\n")
    (d / "b.txt").write_text("Beta notes about the beta release.")
    report = px.ingest(d, show_progress=False)
    assert report.documents == 2
    res = px.search("alpha procedure steps")
    assert res[0].chunk.doc_id == "a.md"
    assert res[0].chunk.title == "Alpha guide"


def test_cold_user_gets_plain_hybrid_search(loaded: pertinent.Pertinent) -> None:
    anon = loaded.search("how do retrievers work?")
    unknown = loaded.search("how do retrievers work?", user_id="never-seen")
    assert [r.id for r in anon] == [r.id for r in unknown]
    for r in unknown:
        assert r.explain.user_gate == 0.0
        assert r.explain.final == pytest.approx(r.explain.hybrid)
        assert r.explain.found_by == ("hybrid",)


def test_history_changes_the_ranking_and_explains_it(loaded: pertinent.Pertinent) -> None:
    q = "which framework should I use for retrieval?"
    base = loaded.search(q, user_id="carol")
    rank_base = {r.chunk.doc_id: r.rank for r in base}
    now = datetime.now(timezone.utc)
    li = loaded.search("LlamaIndex query engines node postprocessors")[0]
    assert li.chunk.doc_id == "li"
    loaded.record(
        "carol",
        [Event(kind="open", item_id=li.id, timestamp=now)] * 3
        + [Event(kind="accept", item_id=li.id, timestamp=now)],
    )
    lc = next(r for r in base if r.chunk.doc_id == "lc")
    loaded.record("carol", Event(kind="reject", item_id=lc.id, timestamp=now))
    after = loaded.search(q, user_id="carol")
    rank_after = {r.chunk.doc_id: r.rank for r in after}
    assert rank_after["li"] <= rank_base["li"]
    assert rank_after["li"] < rank_after["lc"]
    top = after[0].explain
    n0 = loaded.settings.confidence_n0
    assert top.user_gate == pytest.approx(7.0 / (7.0 + n0))  # mass 3+2 positive, 2 negative
    li_res = next(r for r in after if r.chunk.doc_id == "li")
    lc_res = next(r for r in after if r.chunk.doc_id == "lc")
    assert li_res.explain.user > lc_res.explain.user
    assert lc_res.explain.user_negative > 0.9  # the rejected chunk is the negative direction
    for r in after:
        e = r.explain
        assert 0.0 <= e.final <= 1.0
        w = loaded.settings.weights
        expected = (
            w.hybrid * e.hybrid
            + w.user * e.user_gate * e.user
            + w.session * e.session_gate * e.session
        ) / (w.hybrid + w.user * e.user_gate + w.session * e.session_gate)
        assert e.final == pytest.approx(expected)


def test_profile_rebuilt_in_a_new_process_equals_live(
    loaded: pertinent.Pertinent, embedder: pertinent.CachedQueryEmbedder
) -> None:
    t = datetime(2026, 3, 1, tzinfo=timezone.utc)
    ids = [r.id for r in loaded.search("billing refunds invoices", top_k=3)]
    evs = [
        Event(kind="open", item_id=ids[i % 3], timestamp=t + timedelta(days=(7 * i) % 11))
        for i in range(12)
    ] + [Event(kind="query", text="tax on shares", timestamp=t)]
    loaded.profile("dave")  # cache a cold profile so updates are incremental
    loaded.record("dave", evs)
    live = loaded.profile("dave", now=t + timedelta(days=20))
    fresh = pertinent.open(loaded.settings.path, embedder=embedder)
    rebuilt = fresh.profile("dave", now=t + timedelta(days=20))
    assert live.positive is not None and rebuilt.positive is not None
    np.testing.assert_allclose(live.positive, rebuilt.positive, atol=1e-6)
    assert math.isclose(live.positive_mass, rebuilt.positive_mass, rel_tol=1e-9)


def test_session_turns_shape_the_next_answer(loaded: pertinent.Pertinent) -> None:
    q = "what are the rules?"
    loaded.add_turn("erin", "s1", "user", "I am learning Rust and fighting the borrow checker")
    loaded.add_turn("erin", "s1", "assistant", "RefCell gives interior mutability in Rust")
    res = loaded.search(q, user_id="erin", session_id="s1")
    assert res[0].explain.session_gate > 0
    by_doc = {r.chunk.doc_id: r for r in res}
    assert by_doc["rust"].explain.session == pytest.approx(1.0)
    assert by_doc["rust"].rank < by_doc["billing"].rank
    # sessions are per user: the same session id for another user is empty
    assert loaded.session("frank", "s1").turns == 0


def test_retrieve_packs_within_budget_and_remembers(loaded: pertinent.Pertinent) -> None:
    budget = Budget(model="gpt-4o", max_tokens=60)
    ctx = loaded.retrieve(
        "How do I rotate API keys?",
        user_id="gina",
        session_id="s",
        budget=budget,
        instructions="Answer from the sources.",
    )
    tok = tokenizer_for("gpt-4o")
    assert ctx.token_count == tok.count(ctx.text) <= 60
    assert ctx.citations and ctx.citations[0].doc_id == "keys"
    assert "[1]" in ctx.text
    assert ctx.results[0].chunk.doc_id == "keys"
    # remembered: a query event and a session turn now exist
    assert [e.kind for e in loaded.store.read_events("gina")] == ["query"]
    assert [t.text for t in loaded.history("gina", "s")] == ["How do I rotate API keys?"]
    loaded.retrieve("billing", user_id="gina", remember=False)
    assert len(loaded.store.read_events("gina")) == 1


def test_acl_prefilter_in_retrieve(loaded: pertinent.Pertinent) -> None:
    loaded.ingest(
        {
            "id": "root",
            "text": "Root credentials for the payment vault rotate weekly.",
            "acl": ["role:admin"],
        },
        show_progress=False,
    )
    q = "payment vault root credentials"
    assert "root" not in {r.chunk.doc_id for r in loaded.search(q, user_id="u")}
    assert loaded.search(q, user_id="u", principals=["role:admin"])[0].chunk.doc_id == "root"
    loaded.ingest(
        {"id": "hers", "text": "Payment vault notes shared with Hana only.", "acl": ["user:hana"]},
        show_progress=False,
    )
    assert "hers" in {r.chunk.doc_id for r in loaded.search(q, user_id="hana")}
    assert "hers" not in {r.chunk.doc_id for r in loaded.search(q, user_id="ivan")}


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    owners=st.lists(
        st.sampled_from(["ann", "bo", "x' OR owner != '", "O'Brien", "🙂"]),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    reader=st.sampled_from(["ann", "bo", "x' OR owner != '", "O'Brien", "🙂", "zed"]),
)
def test_no_user_receives_another_users_records(
    loaded: pertinent.Pertinent, owners: list[str], reader: str
) -> None:
    for o in owners:
        loaded.ingest(
            {"id": f"note-{o}", "text": f"private note of {o} about api keys rotation"},
            owner=o,
            show_progress=False,
        )
    res = loaded.search("private note about api keys rotation", user_id=reader, top_k=20)
    got_owners = {r.chunk.owner for r in res if r.chunk.owner is not None}
    assert got_owners <= {reader}
    if reader in owners:
        assert reader in got_owners
    anon = loaded.search("private note about api keys rotation", top_k=20)
    assert all(r.chunk.owner is None for r in anon)


def test_forget_user(loaded: pertinent.Pertinent) -> None:
    loaded.ingest(
        {"id": "kim-note", "text": "kim's zanzibar itinerary"}, owner="kim", show_progress=False
    )
    loaded.retrieve("zanzibar itinerary", user_id="kim", session_id="s")
    kid = loaded.search("billing", top_k=1)[0].id
    loaded.record("kim", Event(kind="open", item_id=kid))
    loaded.record("lee", Event(kind="open", item_id=kid))
    receipt = loaded.forget_user("kim")
    assert receipt.deleted["events"] == 2 and receipt.deleted["turns"] == 1
    assert receipt.deleted["owned_chunks"] == 1 and receipt.total >= 4
    assert "query_embeddings" in receipt.caches_cleared
    assert loaded.store.read_events("kim") == []
    assert loaded.history("kim", "s") == []
    assert loaded.profile("kim").is_cold
    assert "kim-note" not in loaded.store.document_ids()
    assert len(loaded.store.read_events("lee")) == 1
    again = loaded.forget_user("kim")
    assert again.deleted["events"] == again.deleted["owned_chunks"] == 0


def test_forgotten_text_is_gone_from_disk(loaded: pertinent.Pertinent) -> None:
    marker = "qxzmarker7731"
    loaded.ingest({"id": "m", "text": f"secret {marker} note"}, owner="mo", show_progress=False)
    loaded.record("mo", Event(kind="query", text=f"where is {marker}"))
    loaded.forget_user("mo")
    hits = [
        p
        for p in Path(loaded.settings.path).rglob("*")
        if p.is_file() and marker.encode() in p.read_bytes()
    ]
    assert hits == []


def test_async_api(loaded: pertinent.Pertinent) -> None:
    async def main() -> list[pertinent.PackedContext]:
        return await asyncio.gather(
            *[
                loaded.aretrieve(q, user_id="amy", budget=Budget("gpt-4", 200), remember=False)
                for q in ["rotate keys", "refunds", "borrow checker", "capital gains"]
            ]
        )

    out = asyncio.run(main())
    assert [c.results[0].chunk.doc_id for c in out] == ["keys", "billing", "rust", "tax"]
    assert all(c.token_count <= 200 and c.tokenizer.endswith("cl100k_base") for c in out)


# ---------------------------------------------------------------- bad input


def test_bad_queries(loaded: pertinent.Pertinent) -> None:
    for q in ["", "   \n\t"]:
        with pytest.raises(pertinent.EmptyQuery, match="empty"):
            loaded.retrieve(q)
    with pytest.raises(pertinent.QueryTooLong, match="Shorten it"):
        loaded.retrieve("word " * 400)
    with pytest.raises(pertinent.QueryTooLong):
        loaded.retrieve("x" * 200_000)
    with pytest.raises(pertinent.InvalidInput, match="session_id needs a user_id"):
        loaded.retrieve("keys", session_id="s")
    with pytest.raises(pertinent.InvalidInput, match="top_k"):
        loaded.search("keys", top_k=0)
    assert loaded.store.count_chunks() == len(CORPUS)


def test_budget_smaller_than_instructions(loaded: pertinent.Pertinent) -> None:
    with pytest.raises(pertinent.BudgetTooSmall):
        loaded.retrieve(
            "keys",
            budget=Budget("gpt-4o", 5),
            instructions="You are a careful assistant. " * 10,
            remember=False,
        )
    with pytest.raises(pertinent.InvalidInput):
        Budget("gpt-4o", 0)


def test_bad_events_write_nothing(loaded: pertinent.Pertinent) -> None:
    with pytest.raises(pertinent.UnknownEventKind, match="Use one of"):
        Event(kind="purchase", item_id="keys#0")
    with pytest.raises(pertinent.InvalidInput):
        Event(kind="open")
    with pytest.raises(pertinent.InvalidInput, match="finite"):
        Event(kind="open", item_id="keys#0", weight=float("nan"))
    good = Event(kind="open", item_id="keys#0")
    with pytest.raises(pertinent.UnknownItem, match="not in the store"):
        loaded.record("pat", [good, Event(kind="open", item_id="no-such-chunk")])
    assert loaded.store.read_events("pat") == []
    with pytest.raises(pertinent.InvalidInput):
        loaded.record("", good)
    with pytest.raises(pertinent.InvalidInput):
        loaded.record("pat", ["open keys#0"])  # type: ignore[list-item]
    # another user's private chunk is an unknown item, not a leak of its vector
    loaded.ingest({"id": "q-note", "text": "quinn private"}, owner="quinn", show_progress=False)
    with pytest.raises(pertinent.UnknownItem):
        loaded.record("pat", Event(kind="open", item_id="q-note#0"))


def test_record_checks_the_text_vectors_it_is_given(loaded: pertinent.Pertinent) -> None:
    """`text_vectors` lets a caller pass embeddings it already has. One of the wrong
    size, NaN or zero is refused before anything is written, as any vector input is;
    a good one is stored (unit length) instead of embedding the text again."""
    dim = loaded.embedder.dim
    events = [Event(kind="like", text="a note on keys"), Event(kind="open", text="doors")]
    doors = loaded.embedder.embed_documents(["doors"])[0]
    for bad, error in (
        ([0.5] * (dim + 8), pertinent.DimensionMismatch),
        ([float("nan")] * dim, pertinent.NonFiniteVector),
        ([0.0] * dim, pertinent.NonFiniteVector),
    ):
        with pytest.raises(error, match="text_vectors entry 'a note on keys'"):
            loaded.record("tess", events, text_vectors={"a note on keys": bad, "doors": doors})
    assert loaded.store.read_events("tess") == []
    given = np.zeros(dim, dtype=np.float32)
    given[:2] = 3.0
    assert loaded.record("tess", events, text_vectors={"a note on keys": given}) == 2
    stored = {e.text: e.vector for e in loaded.store.read_events("tess")}
    np.testing.assert_allclose(stored["a note on keys"], given / np.linalg.norm(given), atol=1e-6)
    np.testing.assert_allclose(stored["doors"], doors, atol=1e-5)  # embedded, not given


def test_wrong_vector_inputs(embedder: pertinent.CachedQueryEmbedder) -> None:
    from pertinent.embeddings import check_vector

    with pytest.raises(pertinent.DimensionMismatch):
        check_vector([1.0, 2.0], embedder.dim)
    with pytest.raises(pertinent.NonFiniteVector):
        check_vector([float("nan")] * embedder.dim, embedder.dim)
    with pytest.raises(pertinent.NonFiniteVector):
        check_vector([0.0] * embedder.dim, embedder.dim)
    v = check_vector([3.0] + [0.0] * (embedder.dim - 1), embedder.dim)
    assert v[0] == 1.0


def test_query_cache(embedder: pertinent.CachedQueryEmbedder) -> None:
    a = embedder.embed_query("cache me please")
    hits = embedder.hits
    b = embedder.embed_query("cache me please")
    assert embedder.hits == hits + 1 and a is b
    with pytest.raises(ValueError):
        a[0] = 5.0  # read-only: a caller cannot corrupt the cache
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5
    assert embedder.model_id == "all-MiniLM-L6-v2@384"


def test_store_directory_problems(tmp_path: Path, embedder: pertinent.CachedQueryEmbedder) -> None:
    f = tmp_path / "a-file"
    f.write_text("not a directory")
    with pytest.raises(pertinent.StoreNotWritable):
        pertinent.open(f, embedder=embedder)


def test_personalize_candidates_from_elsewhere(loaded: pertinent.Pertinent) -> None:
    from pertinent import Chunk

    items = [
        Chunk(id=f"x{i}", doc_id=f"x{i}", text=t, position=0)
        for i, t in enumerate([c["text"] for c in CORPUS])
    ]
    plain = loaded.personalize("how do retrievers work", items, scores=[1, 1, 1, 1, 1, 1])
    assert len(plain) == len(items)
    assert all(r.explain.found_by == ("input",) and r.explain.user_gate == 0 for r in plain)
    li = loaded.search("LlamaIndex query engines node postprocessors")[0]
    loaded.record("ola", [Event(kind="accept", item_id=li.id)] * 4)
    mine = loaded.personalize(
        "how do retrievers work", items, scores=[1, 1, 1, 1, 1, 1], user_id="ola", top_k=3
    )
    assert len(mine) == 3
    assert mine[0].text == li.text  # equal source scores: the user's taste decides
    with pytest.raises(pertinent.InvalidInput, match="one per item"):
        loaded.personalize("q", items, scores=[1.0])
    with pytest.raises(pertinent.InvalidInput, match="finite"):
        loaded.personalize("q", items, scores=[float("nan")] * len(items))
    assert loaded.personalize("q", []) == []


def test_bad_principals(loaded: pertinent.Pertinent) -> None:
    with pytest.raises(pertinent.InvalidInput, match="kind:value"):
        loaded.search("keys", principals=["admin"])


def test_optimize_reaches_every_store_under_the_wrappers(
    tmp_path: Path, px: pertinent.Pertinent
) -> None:
    """`Pertinent.optimize` finds the embedded stores behind encryption, the circuit
    breaker and a replicated pair, and brings their BM25 index up to date."""
    from pertinent.client import _optimize
    from pertinent.privacy.encryption import EncryptedStore, Keyring, Sealer
    from pertinent.stores.lancedb import LanceDBStore
    from pertinent.stores.resilience import CircuitBreaker, ReplicatedStore, ResilientStore
    from pertinent.types import Chunk

    def store(name: str) -> LanceDBStore:
        s = LanceDBStore(tmp_path / name, model_id="m", dim=8)
        for i in range(2):  # the first upsert builds the index, the second is not in it
            v = np.eye(8, dtype=np.float32)[i]
            s.upsert_chunks(
                [
                    Chunk(
                        id=f"c{i}",
                        doc_id=f"d{i}",
                        text=f"note {i}",
                        position=0,
                        model_id="m",
                        vector=v,
                    )
                ]
            )
        return s

    def unindexed(s: LanceDBStore) -> int:
        stats = s._chunks.index_stats("text_idx")
        assert stats is not None
        return int(stats.num_unindexed_rows)

    a, b = store("a"), store("b")
    assert unindexed(a) == unindexed(b) == 1
    sealed = EncryptedStore(a, Sealer(Keyring(bytes(range(32)))))
    wrapped = ReplicatedStore(ResilientStore(sealed, CircuitBreaker(), "a"), b, "b")
    assert _optimize(wrapped, set()) == 2
    assert unindexed(a) == unindexed(b) == 0
    assert _optimize(object(), set()) == 0  # nothing to do for a store without upkeep
    a.close()
    b.close()

    px.ingest({"id": "late", "text": "a note written late"}, show_progress=False)
    assert px.optimize() == 1
