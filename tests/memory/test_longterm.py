"""Long-term memory on the real stack: MiniLM embeddings, LanceDB in a temp dir, tiktoken,
and an OpenAI-compatible extractor faked only at the HTTP boundary (respx)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import httpx
import numpy as np
import pytest
import respx

import pertinent
from pertinent.errors import ConfigurationError, ConsentWithheld, EmptyQuery, InvalidInput
from pertinent.memory.extractors import FactExtractor, OpenAICompatibleLLM
from pertinent.memory.longterm import (
    InvalidTimestamp,
    LongTermMemory,
    MemoryRecord,
    MemorySettings,
    MemoryTurn,
    is_memory,
    normalize_timestamp,
    query_date_windows,
)
from pertinent.stores.base import SearchFilter
from pertinent.types import Budget, Turn

BASE = "https://llm.test/v1"
URL = f"{BASE}/chat/completions"
D1 = datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)
D2 = datetime(2023, 6, 27, 10, 0, tzinfo=timezone.utc)

CONVERSATION = [
    MemoryTurn("Hey Mel! How have you been?", speaker="Caroline", turn_id="D1:1"),
    MemoryTurn("Swamped with the kids and work. Anything new?", speaker="Melanie", turn_id="D1:2"),
    MemoryTurn(
        "I went to an LGBTQ support group yesterday and it was so powerful.",
        speaker="Caroline",
        turn_id="D1:3",
    ),
    MemoryTurn("Where did you move from, by the way?", speaker="Melanie", turn_id="D1:4"),
    MemoryTurn(
        "Sweden, four years ago. I still miss the lakes.", speaker="Caroline", turn_id="D1:5"
    ),
    MemoryTurn("I painted a sunrise over the lake last year.", speaker="Melanie", turn_id="D1:6"),
]


@pytest.fixture
def ltm(px: pertinent.Pertinent) -> LongTermMemory:
    return LongTermMemory(px)


@pytest.fixture
def caroline(ltm: LongTermMemory) -> LongTermMemory:
    ltm.add_conversation("conv-1", CONVERSATION, session_id="session_1", timestamp=D1)
    return ltm


def ids(results: list[pertinent.Result]) -> list[str]:
    return [str(r.chunk.metadata["turn_id"]) for r in results]


# --------------------------------------------------------------------------- writing


def test_turns_are_user_owned_chunks_with_their_metadata(
    caroline: LongTermMemory, px: pertinent.Pertinent
) -> None:
    results = caroline.search("support group", user_id="conv-1", top_k=3)
    top = results[0]
    assert top.chunk.owner == "conv-1"
    assert top.chunk.doc_id == "mem:conv-1:session_1:D1%3A3"
    assert (
        top.text == "Caroline: I went to an LGBTQ support group yesterday and it was so powerful."
    )
    md = top.chunk.metadata
    assert md["kind"] == "turn" and md["speaker"] == "Caroline" and md["role"] == "user"
    assert md["timestamp"] == "2023-05-08T13:56:00+00:00"
    assert md["session_id"] == "session_1" and md["turn_id"] == "D1:3"
    assert md["prev"] == "mem:conv-1:session_1:D1%3A2" and md["seq"] == 2
    assert is_memory(top.chunk)
    rec = MemoryRecord.from_chunk(top.chunk)
    assert rec.line() == "[2023-05-08] " + top.text
    assert px.store.count_chunks() == len(CONVERSATION)


def test_re_adding_turns_is_idempotent(caroline: LongTermMemory, px: pertinent.Pertinent) -> None:
    caroline.add_conversation("conv-1", CONVERSATION, session_id="session_1", timestamp=D1)
    caroline.add_turn(
        "conv-1",
        CONVERSATION[2].text,
        speaker="Caroline",
        session_id="session_1",
        turn_id="D1:3",
        timestamp=D1,
    )
    assert px.store.count_chunks() == len(CONVERSATION)
    # Without turn ids, the id hashes role, speaker, text and time: same turn, same id.
    first = caroline.add_turn("conv-1", "I like tea.", session_id="s2", timestamp=D2)
    again = caroline.add_turn("conv-1", "I like tea.", session_id="s2", timestamp=D2)
    later = caroline.add_turn("conv-1", "I like tea.", session_id="s2", timestamp=D2 + timedelta(1))
    assert first.doc_ids == again.doc_ids != later.doc_ids
    assert px.store.count_chunks() == len(CONVERSATION) + 2


def test_a_huge_turn_is_chunked_and_every_piece_is_findable(
    ltm: LongTermMemory, px: pertinent.Pertinent
) -> None:
    filler = " ".join(f"Paragraph {i} is about the weather and nothing else." for i in range(120))
    text = filler + " The spare key is hidden under the blue flowerpot."
    report = ltm.add_turn("ann", text, speaker="Ann", session_id="s1", timestamp=D1)
    assert len(report.doc_ids) == 1 and report.chunks > 3
    assert px.store.count_chunks() == report.chunks
    hit = ltm.search("where is the spare key hidden?", user_id="ann", top_k=1)[0]
    assert "blue flowerpot" in hit.text and hit.chunk.position > 0
    assert MemoryRecord.from_chunk(hit.chunk).line().startswith("[2023-05-08] Ann (cont.): ")


def test_bad_turns_raise_before_anything_is_written(
    ltm: LongTermMemory, px: pertinent.Pertinent
) -> None:
    good = MemoryTurn("A fine turn.", turn_id="t1")
    with pytest.raises(InvalidInput, match="no text"):
        ltm.add_conversation("ann", [good, MemoryTurn("   ", turn_id="t2")])
    with pytest.raises(InvalidTimestamp, match="ISO 8601"):
        ltm.add_conversation("ann", [good, MemoryTurn("x", timestamp="next Tuesday-ish")])
    with pytest.raises(InvalidInput, match="same turn_id"):
        ltm.add_conversation("ann", [good, MemoryTurn("other", turn_id="t1")])
    with pytest.raises(InvalidInput, match="user_id"):
        ltm.add_turn("", "hello")
    with pytest.raises(InvalidInput, match="MemoryTurn"):
        ltm.add_conversation("ann", [42])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="'text'"):
        ltm.add_conversation("ann", [{"speaker": "Ann"}])
    assert px.store.count_chunks() == 0


def test_timestamps_in_other_formats_and_zones_are_normalised(ltm: LongTermMemory) -> None:
    same = [
        "2023-05-08T15:56:00+02:00",
        "2023-05-08T13:56:00Z",
        "1:56 pm on 8 May, 2023",
        "Mon, 08 May 2023 09:56:00 -0400",
        D1.timestamp(),
        datetime(2023, 5, 8, 13, 56),  # naive: UTC
        datetime(2023, 5, 8, 22, 56, tzinfo=timezone(timedelta(hours=9))),
    ]
    assert {normalize_timestamp(v) for v in same} == {D1}
    assert normalize_timestamp("May 8, 2023") == datetime(2023, 5, 8, tzinfo=timezone.utc)
    for bad in ("", "yesterday-ish", float("nan"), True, object()):
        with pytest.raises(InvalidTimestamp):
            normalize_timestamp(bad)  # type: ignore[arg-type]
    report = ltm.add_conversation(
        "ann",
        [{"text": "Booked the flight.", "timestamp": "2023-05-08T15:56:00+02:00", "id": "a"}],
    )
    assert report.records[0].timestamp == D1


# --------------------------------------------------------------------------- isolation


def test_memory_search_sees_only_the_users_own_items(
    caroline: LongTermMemory, px: pertinent.Pertinent
) -> None:
    caroline.add_turn("bob", "I moved from Sweden to Norway.", speaker="Bob", timestamp=D1)
    px.ingest({"id": "shared", "text": "Sweden is a country with many lakes."})
    mine = caroline.search("moved from Sweden", user_id="conv-1", top_k=20)
    assert mine and {r.chunk.owner for r in mine} == {"conv-1"}
    theirs = caroline.search("moved from Sweden", user_id="bob", top_k=20)
    assert [r.text for r in theirs] == ["Bob: I moved from Sweden to Norway."]
    assert caroline.search("Sweden", user_id="nobody") == []
    # Plain search of another user never sees these memories either.
    assert all(r.chunk.owner in (None, "bob") for r in px.search("Sweden lakes", user_id="bob"))


def test_owned_only_filter_in_the_store(caroline: LongTermMemory, px: pertinent.Pertinent) -> None:
    px.ingest({"id": "shared", "text": "Support groups meet on Tuesdays."})
    vec = px.embedder.embed_query("support group")
    both = px.store.vector_search(vec, k=50, where=SearchFilter(user_id="conv-1"))
    owned = px.store.vector_search(vec, k=50, where=SearchFilter(user_id="conv-1", owned_only=True))
    assert any(h.chunk.owner is None for h in both)
    assert owned and all(h.chunk.owner == "conv-1" for h in owned)
    assert px.store.vector_search(vec, k=50, where=SearchFilter(owned_only=True)) == []
    kw = px.store.keyword_search(
        "support", k=50, where=SearchFilter(user_id="conv-1", owned_only=True)
    )
    assert kw and all(h.chunk.owner == "conv-1" for h in kw)


def test_consent_and_forget(caroline: LongTermMemory, px: pertinent.Pertinent) -> None:
    px.set_consent("conv-1", memory=False)
    with pytest.raises(ConsentWithheld):
        caroline.add_turn("conv-1", "Remember this.")
    assert caroline.search("support group", user_id="conv-1") == []
    px.set_consent("conv-1", memory=True)
    assert caroline.search("support group", user_id="conv-1")
    deleted = caroline.forget("conv-1")
    assert deleted["owned_chunks"] == len(CONVERSATION)
    assert caroline.search("support group", user_id="conv-1") == []


def test_redaction_applies_to_memories(embedder: pertinent.CachedQueryEmbedder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pertinent.privacy.redaction import PatternRedactor

    with pertinent.open(tmp_path / "r", embedder=embedder, redactor=PatternRedactor()) as px:
        ltm = LongTermMemory(px)
        ltm.add_turn("ann", "Mail me at ann@example.com please.", timestamp=D1)
        [hit] = ltm.search("mail me", user_id="ann")
        assert "ann@example.com" not in hit.text
        assert px.redaction_counts["EMAIL"] == 1


# --------------------------------------------------------------------------- ranking


def test_results_carry_a_score_breakdown(caroline: LongTermMemory) -> None:
    results = caroline.search("What did Caroline say about the support group?", user_id="conv-1")
    assert [r.rank for r in results] == list(range(1, len(results) + 1))
    top = results[0]
    assert ids(results)[0] == "D1:3"
    e = top.explain
    assert e.found_by == ("memory",)
    assert 0 <= e.final <= 1 and e.final == top.score
    priors = dict(e.priors)
    assert priors["speaker"] == 1.0  # the query names Caroline, and she said it
    assert set(priors) == {"neighbour", "speaker", "date"}
    assert e.as_dict()["priors"] == priors
    assert pertinent.ScoreBreakdown(**{**e.as_dict(), "found_by": tuple(e.found_by)}) == e
    by_speaker = {r.chunk.metadata["speaker"]: dict(r.explain.priors)["speaker"] for r in results}
    assert by_speaker == {"Caroline": 1.0, "Melanie": 0.0}


def test_an_answer_is_found_through_its_question(caroline: LongTermMemory) -> None:
    # "Sweden, four years ago" shares no word with the question; the turn before it does.
    results = caroline.search("Where did Caroline move from?", user_id="conv-1", top_k=3)
    assert "D1:5" in ids(results)
    answer = next(r for r in results if r.chunk.metadata["turn_id"] == "D1:5")
    assert dict(answer.explain.priors)["neighbour"] > 0


def test_dates_named_in_the_query_and_recency(px: pertinent.Pertinent) -> None:
    # Two identical turns, written in one call and embedded alone, so that search scores
    # them alike and only the date and recency priors can tell them apart.
    ltm = LongTermMemory(px, settings=MemorySettings(contextual_embedding=False))
    may, sept = datetime(2023, 5, 8, tzinfo=timezone.utc), datetime(2023, 9, 2, tzinfo=timezone.utc)
    ltm.add_conversation(
        "ann",
        [
            MemoryTurn("We went hiking at the falls.", speaker="Ann", timestamp=may, turn_id="1"),
            MemoryTurn("We went hiking at the falls.", speaker="Ann", timestamp=sept, turn_id="2"),
        ],
    )
    for query, month in (("Where did Ann hike on 8 May 2023?", 5), ("Ann hiking in September", 9)):
        top = ltm.search(query, user_id="ann", top_k=2)
        assert top[0].chunk.metadata["timestamp"].startswith(f"2023-{month:02d}")
        assert dict(top[0].explain.priors)["date"] == 1.0
        assert dict(top[1].explain.priors)["date"] == 0.0
    # No date named: the newer one wins on recency, relative to `now`.
    plain = ltm.search("hiking at the falls", user_id="ann", now=sept + timedelta(days=1))
    assert plain[0].chunk.metadata["timestamp"].startswith("2023-09")
    assert plain[0].explain.recency > plain[1].explain.recency > 0
    assert (
        query_date_windows("what did I do yesterday", now=sept)[0].start
        == (sept - timedelta(days=1)).date()
    )


def test_search_rejects_bad_requests(caroline: LongTermMemory) -> None:
    with pytest.raises(EmptyQuery):
        caroline.search("  ", user_id="conv-1")
    with pytest.raises(InvalidInput, match="top_k"):
        caroline.search("x", user_id="conv-1", top_k=0)
    with pytest.raises(InvalidInput, match="user_id"):
        caroline.search("x", user_id="")


# --------------------------------------------------------------------------- packing


def test_context_packs_memories_history_and_documents_in_one_budget(
    caroline: LongTermMemory, px: pertinent.Pertinent
) -> None:
    px.ingest({"id": "lakes", "title": "Lakes", "text": "Sweden has about 100,000 lakes."})
    history = [Turn("user", "Tell me about my friend."), Turn("assistant", "Which friend?")]
    budget = Budget(model="gpt-4o", max_tokens=300)
    ctx = caroline.context(
        "Where did Caroline move from? Sweden lakes",
        user_id="conv-1",
        budget=budget,
        history=history,
        instructions="Answer from the context.",
    )
    assert ctx.token_count <= 300
    assert all(ctx.sections[s] > 0 for s in ("instructions", "memory", "history", "passages"))
    assert ctx.text.index("## What I know about the user") < ctx.text.index("## Sources")
    assert "Caroline: Sweden, four years ago." in ctx.text
    assert [c.doc_id for c in ctx.citations] == ["lakes"]  # memories are not passages too
    memory_part = ctx.text.split("## What I know about the user")[1].split("##")[0]
    lines = [ln for ln in memory_part.splitlines() if ln.startswith("- ")]
    order = [next(i for i, t in enumerate(CONVERSATION) if t.text in ln) for ln in lines]
    assert len(lines) > 1 and order == sorted(order)  # shown in the order things were said
    # The day is written once, on its first line.
    assert lines[0].startswith("- [2023-05-08] ") and "[2023" not in "".join(lines[1:])
    # A tight budget still holds: fewer memories, never an overflow.
    small = caroline.context("Sweden", user_id="conv-1", budget=Budget("gpt-4o", 60))
    assert small.token_count <= 60 and small.sections["memory"] > 0


def test_context_without_documents_gives_the_budget_to_memories(
    caroline: LongTermMemory, px: pertinent.Pertinent
) -> None:
    px.ingest({"id": "other", "text": "Support groups are run by volunteers."})
    ctx = caroline.context(
        "support group", user_id="conv-1", documents=False, budget=Budget("gpt-4", 2000)
    )
    assert ctx.sections["passages"] == 0 and ctx.citations == ()
    assert all(f"- {t.speaker}: {t.text}" in ctx.text for t in CONVERSATION[1:])
    assert f"- [2023-05-08] {CONVERSATION[0].speaker}: {CONVERSATION[0].text}" in ctx.text
    caroline.add_turn("conv-1", "Back from the lake.", speaker="Caroline", timestamp=D2)
    later = caroline.context("lake", user_id="conv-1", documents=False)
    assert "- [2023-06-27] Caroline: Back from the lake." in later.text
    assert later.text.count("[2023-05-08]") == 1


# --------------------------------------------------------------------------- extraction


def reply(facts: list[dict[str, str]] | str) -> httpx.Response:
    content = facts if isinstance(facts, str) else json.dumps({"facts": facts})
    return httpx.Response(
        200,
        json={"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]},
    )


@pytest.fixture
def llm_route() -> Iterator[respx.Route]:
    with respx.mock(assert_all_called=False) as router:
        yield router.post(URL)


def test_extraction_adds_updates_and_keeps_history(
    ltm: LongTermMemory, px: pertinent.Pertinent, llm_route: respx.Route
) -> None:
    ltm.extractor = FactExtractor(OpenAICompatibleLLM(BASE, "m", timeout_s=2))
    llm_route.side_effect = [
        reply(
            [
                {"key": "Ann.City", "text": "Ann lives in Rome."},
                {"key": "ann.pet", "text": "Ann has a cat."},
            ]
        ),
        reply(
            [
                {"key": "ann.city", "text": "Ann lives in Oslo since June 2023."},
                {"key": "ann.pet", "text": "Ann has a cat."},
            ]
        ),
    ]
    first = ltm.extract(
        "ann",
        [{"text": "I live in Rome with my cat.", "speaker": "Ann", "turn_id": "1"}],
        session_id="s1",
        timestamp=D1,
    )
    assert first.error is None and set(first.added) == {"ann.city", "ann.pet"}
    second = ltm.extract(
        "ann",
        [{"text": "Big news: I moved to Oslo!", "speaker": "Ann", "turn_id": "1"}],
        session_id="s2",
        timestamp=D2,
    )
    assert second.updated == ("ann.city",) and second.unchanged == ("ann.pet",)
    assert second.added == ()
    # The extractor was shown what is known, so it could update instead of duplicating.
    prompt = json.loads(llm_route.calls[1].request.content)["messages"][-1]["content"]
    assert "ann.city: Ann lives in Rome." in prompt
    assert "[2023-06-27] Ann: Big news: I moved to Oslo!" in prompt

    fact = ltm.get_fact("ann", "ann.city")
    assert fact is not None and fact.text == "Ann lives in Oslo since June 2023."
    assert fact.kind == "fact" and fact.timestamp == D2
    assert [h["text"] for h in fact.history] == ["Ann lives in Rome."]
    assert fact.history[0]["superseded_at"] == D2.isoformat()
    assert fact.chunk.metadata["evidence"] == ["mem:ann:s2:1"]
    # One chunk per fact (no duplicate), plus the two raw turns.
    assert px.store.count_chunks() == 2 + 2
    found = ltm.search("Which city does Ann live in?", user_id="ann", top_k=2)
    assert found[0].text == "Ann lives in Oslo since June 2023."
    assert ltm.get_fact("bob", "ann.city") is None


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("slow"),
        reply("Sorry, I can't help with that."),
        reply('{"facts": [{"key": "x"}]}'),
        httpx.Response(503, text="overloaded"),
    ],
)
def test_failed_extraction_keeps_the_raw_turns(
    ltm: LongTermMemory,
    px: pertinent.Pertinent,
    llm_route: respx.Route,
    failure: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    llm_route.side_effect = [failure]
    ex = FactExtractor(OpenAICompatibleLLM(BASE, "m", timeout_s=1))
    with caplog.at_level(logging.WARNING, logger="pertinent.memory.longterm"):
        report = ltm.extract(
            "ann", [MemoryTurn("My flight to Lima is on Friday.", turn_id="9")], extractor=ex
        )
    assert report.error is not None and report.added == ()
    assert "kept as raw turns" in caplog.text
    assert report.turns.doc_ids == ("mem:ann:default:9",)
    assert [r.text for r in ltm.search("flight to Lima", user_id="ann")] == [
        "user: My flight to Lima is on Friday."
    ]
    assert px.store.count_chunks() == 1


def test_extract_needs_an_extractor(ltm: LongTermMemory, px: pertinent.Pertinent) -> None:
    with pytest.raises(ConfigurationError, match="extractor"):
        ltm.extract("ann", [MemoryTurn("hello")])
    assert px.store.count_chunks() == 0


def test_contextual_vectors_differ_from_plain_ones(
    caroline: LongTermMemory, px: pertinent.Pertinent
) -> None:
    [answer] = [r for r in caroline.search("Sweden", user_id="conv-1") if "Sweden" in r.text]
    plain = px.embedder.embed_documents([answer.text])[0]
    assert answer.chunk.vector is not None
    assert float(np.dot(plain, answer.chunk.vector)) < 0.99  # embedded with its question
