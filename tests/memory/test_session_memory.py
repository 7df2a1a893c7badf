"""Session memory: a token-limited window over the real client (MiniLM, LanceDB, tiktoken),
with the summarising LLM faked only at the HTTP boundary (respx)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import respx

import pertinent
from pertinent.errors import InvalidInput
from pertinent.memory.extractors import OpenAICompatibleLLM
from pertinent.memory.longterm import LongTermMemory
from pertinent.memory.session_memory import SUMMARY_ROLE, SessionMemory
from pertinent.prompts.tokenizers import tokenizer_for
from pertinent.types import Budget

BASE = "https://llm.test/v1"
URL = f"{BASE}/chat/completions"
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
TURNS = [
    ("user", "I'm planning a trip to Japan in April with my sister."),
    ("assistant", "Lovely! Cherry blossoms peak in early April in Tokyo."),
    ("user", "We want to visit Kyoto temples and eat ramen in Osaka."),
    ("assistant", "Kyoto and Osaka are 15 minutes apart by shinkansen."),
    ("user", "My sister is vegetarian, so ramen may be tricky."),
    ("assistant", "Many Kyoto shops serve vegetable broth ramen."),
    ("user", "Budget is about 3000 euros for both of us."),
    ("assistant", "That covers flights from Europe and mid-range hotels."),
]


def completion(content: str) -> httpx.Response:
    return httpx.Response(
        200,
        json={"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]},
    )


def feed(session: SessionMemory, turns: list[tuple[str, str]] = TURNS) -> None:
    for i, (role, text) in enumerate(turns):
        session.add(role, text, timestamp=T0 + timedelta(minutes=i))


def test_window_drops_oldest_first_without_a_summarizer(px: pertinent.Pertinent) -> None:
    session = SessionMemory(px, "ann", "s1", max_tokens=60, model="gpt-4o")
    feed(session)
    tok = tokenizer_for("gpt-4o")
    assert session.token_count() <= 60
    assert tok.count("\n".join(f"{t.role}: {t.text}" for t in session.history())) <= 60
    kept = [t.text for t in session.turns]
    assert kept and kept == [text for _, text in TURNS][-len(kept) :]  # a contiguous tail
    assert session.dropped == len(TURNS) - len(kept) > 0 and session.summary == ""
    # Every turn, dropped or not, was logged and fed the session embedding.
    assert px.session("ann", "s1").turns == len(TURNS)
    assert len(px.history("ann", "s1")) == len(TURNS)


@respx.mock
def test_evicted_turns_are_summarised_by_the_llm(px: pertinent.Pertinent) -> None:
    route = respx.post(URL).mock(
        side_effect=lambda request: completion(
            "Ann plans an April trip to Japan with her vegetarian sister: Kyoto temples, "
            "Osaka food."
        )
    )
    llm = OpenAICompatibleLLM(BASE, "m")
    session = SessionMemory(px, "ann", "s1", max_tokens=90, summarizer=llm, summary_tokens=40)
    feed(session)
    history = session.history()
    assert history[0].role == SUMMARY_ROLE and "vegetarian sister" in history[0].text
    assert session.token_count() <= 90
    assert session.summarised > 0 and route.called
    prompt = json.loads(route.calls[0].request.content)["messages"][-1]["content"]
    assert "[2024-03-01] user: I'm planning a trip to Japan in April" in prompt
    assert "Summary so far:\n(nothing yet)" in prompt
    if route.call_count > 1:  # a later fold builds on the summary so far
        later = json.loads(route.calls[1].request.content)["messages"][-1]["content"]
        assert "vegetarian sister" in later


@respx.mock
def test_an_overlong_summary_is_cut_to_its_token_limit(px: pertinent.Pertinent) -> None:
    respx.post(URL).mock(return_value=completion("word " * 500))
    session = SessionMemory(
        px, "ann", "s1", max_tokens=80, summarizer=OpenAICompatibleLLM(BASE, "m"), summary_tokens=20
    )
    feed(session)
    assert tokenizer_for("gpt-4o").count(session.summary) <= 20
    assert session.token_count() <= 80


@respx.mock
def test_a_failing_summarizer_falls_back_to_dropping(
    px: pertinent.Pertinent, caplog: pytest.LogCaptureFixture
) -> None:
    respx.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    session = SessionMemory(
        px, "ann", "s1", max_tokens=60, summarizer=OpenAICompatibleLLM(BASE, "m", timeout_s=1)
    )
    with caplog.at_level(logging.WARNING, logger="pertinent.memory.session_memory"):
        feed(session)
    assert session.summary == "" and session.dropped > 0
    assert session.token_count() <= 60
    assert "LLMTimeout" in caplog.text
    assert len(px.history("ann", "s1")) == len(TURNS)  # nothing lost from the log


def test_an_existing_session_is_loaded_from_the_store(px: pertinent.Pertinent) -> None:
    first = SessionMemory(px, "ann", "s1", max_tokens=1000)
    feed(first, TURNS[:4])
    again = SessionMemory(px, "ann", "s1", max_tokens=1000)
    assert [t.text for t in again.turns] == [text for _, text in TURNS[:4]]
    tight = SessionMemory(px, "ann", "s1", max_tokens=40)
    assert tight.token_count() <= 40 and tight.turns[-1].text == TURNS[3][1]


def test_turns_also_go_to_long_term_memory_and_pack_beside_it(px: pertinent.Pertinent) -> None:
    ltm = LongTermMemory(px)
    ltm.add_turn("ann", "My sister's name is Lea.", timestamp=T0 - timedelta(days=30))
    session = SessionMemory(px, "ann", "s1", max_tokens=200, longterm=ltm)
    feed(session, TURNS[:4])
    found = ltm.search("Kyoto temples", user_id="ann", top_k=1)
    assert found[0].chunk.metadata["session_id"] == "s1"
    ctx = ltm.context(
        "What is my sister called?",
        user_id="ann",
        session_id="s1",
        history=session.history(),
        documents=False,
        budget=Budget("gpt-4o", 400),
    )
    assert ctx.sections["memory"] > 0 and ctx.sections["history"] > 0
    assert ctx.token_count <= 400
    assert "Lea" in ctx.text.split("## Conversation so far")[0]
    # A turn that is already in the packed history is not repeated as a memory.
    assert ctx.text.count("Kyoto and Osaka are 15 minutes apart") == 1


def test_opted_out_users_keep_a_window_but_nothing_is_stored(px: pertinent.Pertinent) -> None:
    px.set_consent("ann", personalization=False, memory=False)
    ltm = LongTermMemory(px)
    session = SessionMemory(px, "ann", "s1", max_tokens=500, longterm=ltm)
    feed(session, TURNS[:2])
    assert len(session.turns) == 2
    assert px.history("ann", "s1") == [] and px.store.count_chunks() == 0


def test_bad_arguments(px: pertinent.Pertinent) -> None:
    with pytest.raises(InvalidInput, match="max_tokens"):
        SessionMemory(px, "ann", "s1", max_tokens=0)
    with pytest.raises(InvalidInput, match="summary_tokens"):
        SessionMemory(px, "ann", "s1", max_tokens=50, summary_tokens=50)
    with pytest.raises(InvalidInput, match="session_id"):
        SessionMemory(px, "ann", " ")
    session = SessionMemory(px, "ann", "s1")
    with pytest.raises(InvalidInput, match="non-empty text"):
        session.add("user", "   ")
    with pytest.raises(InvalidInput, match="role"):
        session.add("", "hi")
    assert px.history("ann", "s1") == []
