"""Packing keeps its budget promise and picks the right pieces, counted with real tiktoken."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pertinent.errors import BudgetTooSmall, InvalidInput
from pertinent.prompts.packing import (
    HISTORY_HEADER,
    MEMORY_HEADER,
    SOURCES_HEADER,
    format_passage,
    pack,
)
from pertinent.prompts.tokenizers import tokenizer_for
from pertinent.types import Budget, Chunk, Result, ScoreBreakdown, Turn


def make_result(
    chunk_id: str,
    text: str,
    *,
    rank: int = 1,
    doc_id: str | None = None,
    title: str | None = None,
    source: str | None = None,
    vector: list[float] | None = None,
) -> Result:
    score = 1.0 / rank
    chunk = Chunk(
        id=chunk_id,
        doc_id=doc_id or f"doc-{chunk_id}",
        text=text,
        position=0,
        title=title,
        source=source,
        model_id="all-MiniLM-L6-v2",
        vector=None if vector is None else np.asarray(vector, dtype=np.float32),
    )
    explain = ScoreBreakdown(
        bm25=1.0,
        vector=score,
        hybrid=score,
        user=0.0,
        user_negative=0.0,
        user_gate=0.0,
        session=0.0,
        session_gate=0.0,
        personalized=score,
        rerank=None,
        final=score,
        mmr=score,
        found_by=("bm25", "vector"),
    )
    return Result(chunk=chunk, rank=rank, score=score, explain=explain)


def sentences(n: int, topic: str = "retrieval") -> str:
    return " ".join(f"Sentence {i} explains {topic} in plain words." for i in range(n))


def tokens(model: str, text: str) -> int:
    return tokenizer_for(model).count(text)


# ---------------------------------------------------------------- the budget promise

_roles = st.sampled_from(["user", "assistant", "system", " weird role "])


@settings(max_examples=150, deadline=None)
@given(
    model=st.sampled_from(["gpt-4o", "gpt-4"]),
    texts=st.lists(st.text(max_size=300), max_size=8),
    max_tokens=st.integers(20, 800),
    instructions=st.text(max_size=120),
    memories=st.lists(st.text(max_size=80), max_size=5),
    history=st.lists(st.tuples(_roles, st.text(max_size=120)), max_size=6),
    min_partial=st.integers(0, 60),
    shares=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_packed_text_never_exceeds_the_budget(
    model: str,
    texts: list[str],
    max_tokens: int,
    instructions: str,
    memories: list[str],
    history: list[tuple[str, str]],
    min_partial: int,
    shares: tuple[float, float],
) -> None:
    tok = tokenizer_for(model)
    budget = Budget(model=model, max_tokens=max_tokens)
    results = [make_result(f"c{i}", t, rank=i + 1) for i, t in enumerate(texts)]
    kwargs = dict(
        instructions=instructions,
        memories=memories,
        history=[Turn(role=r, text=t) for r, t in history],
        memory_share=shares[0],
        history_share=shares[1],
        min_partial_tokens=min_partial,
    )
    if tok.count(instructions.strip()) > max_tokens:
        with pytest.raises(BudgetTooSmall):
            pack(results, budget, **kwargs)  # type: ignore[arg-type]
        return
    packed = pack(results, budget, **kwargs)  # type: ignore[arg-type]

    assert packed.token_count == tok.count(packed.text) <= max_tokens
    assert packed.tokenizer == tok.name
    assert packed.results == tuple(results)
    assert set(packed.sections) == {"instructions", "memory", "history", "passages"}
    assert [c.marker for c in packed.citations] == list(range(1, len(packed.citations) + 1))
    for c in packed.citations:
        assert f"[{c.marker}]" in packed.text
    assert all(not c.truncated for c in packed.citations[:-1])
    packed_or_skipped = (
        len(packed.citations) + packed.skipped["near_duplicate"] + packed.skipped["over_budget"]
    )
    assert packed_or_skipped == sum(1 for t in texts if t.strip())


def test_instructions_alone_over_budget_raise() -> None:
    instructions = "Answer only from the sources below and cite them. " * 20
    n = tokens("gpt-4o", instructions.strip())
    with pytest.raises(BudgetTooSmall, match=rf"{n} tokens.*budget is 50"):
        pack([], Budget("gpt-4o", 50), instructions=instructions)


def test_instructions_that_exactly_fill_the_budget_are_kept_whole() -> None:
    instructions = "Answer only from the sources below."
    n = tokens("gpt-4o", instructions)
    packed = pack(
        [make_result("a", "Some passage.")],
        Budget("gpt-4o", n),
        instructions=instructions,
        memories=["likes Rust"],
    )
    assert packed.text == instructions
    assert packed.token_count == n
    assert packed.skipped["over_budget"] == 1
    assert packed.skipped["memory_over_budget"] == 1


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_out_of_range_shares_are_rejected(share: float) -> None:
    with pytest.raises(InvalidInput, match="memory_share"):
        pack([], Budget(), memory_share=share)


# ---------------------------------------------------------------- layout and citations


def test_layout_headers_and_citations() -> None:
    results = [
        make_result("a1", "Rust has no garbage collector.", rank=1, title="Rust FAQ"),
        make_result(
            "b2",
            "Ownership rules are checked at compile time.",
            rank=2,
            source="https://doc.rust-lang.org/book",
        ),
        make_result("c3", "The borrow checker rejects dangling references.", rank=3),
    ]
    packed = pack(
        results,
        Budget("gpt-4o", 1000),
        instructions="Answer from the sources.",
        memories=["Writes Rust at work", "Prefers short answers"],
        history=[Turn("user", "What is ownership?"), Turn("assistant", "A set of rules.")],
    )
    assert packed.text == (
        "Answer from the sources.\n\n"
        f"{MEMORY_HEADER}\n- Writes Rust at work\n- Prefers short answers\n\n"
        f"{HISTORY_HEADER}\nuser: What is ownership?\nassistant: A set of rules.\n\n"
        f"{SOURCES_HEADER}\n\n"
        "[1] (Rust FAQ) Rust has no garbage collector.\n\n"
        "[2] (https://doc.rust-lang.org/book) Ownership rules are checked at compile time.\n\n"
        "[3] The borrow checker rejects dangling references."
    )
    assert [(c.marker, c.chunk_id, c.doc_id) for c in packed.citations] == [
        (1, "a1", "doc-a1"),
        (2, "b2", "doc-b2"),
        (3, "c3", "doc-c3"),
    ]
    assert packed.citations[0].title == "Rust FAQ"
    assert packed.citations[1].source == "https://doc.rust-lang.org/book"
    for citation, result in zip(packed.citations, results, strict=True):
        assert format_passage(result, citation.marker) in packed.text
    # Each marker is followed by its own chunk's text.
    for m in re.finditer(r"^\[(\d+)\] (?:\([^)]*\) )?(.*)$", packed.text, re.MULTILINE):
        citation = packed.citations[int(m.group(1)) - 1]
        chunk = next(r.chunk for r in results if r.id == citation.chunk_id)
        assert m.group(2) == chunk.text
    tok = tokenizer_for("gpt-4o")
    assert packed.sections["instructions"] == tok.count("Answer from the sources.")
    assert packed.sections["passages"] == tok.count(
        packed.text[packed.text.index(SOURCES_HEADER) :]
    )
    assert packed.skipped == {
        "near_duplicate": 0,
        "over_budget": 0,
        "memory_over_budget": 0,
        "history_over_budget": 0,
    }


def test_empty_sections_have_no_header() -> None:
    packed = pack([], Budget("gpt-4o", 100), instructions="Be brief.")
    assert packed.text == "Be brief."
    assert packed.sections == {"instructions": 3, "memory": 0, "history": 0, "passages": 0}
    assert pack([], Budget("gpt-4o", 100)).text == ""
    only_passage = pack([make_result("x", "Just this.")], Budget("gpt-4o", 100))
    assert only_passage.text == f"{SOURCES_HEADER}\n\n[1] Just this."


def test_estimate_model_packs_with_the_estimate() -> None:
    packed = pack([make_result("a", sentences(3))], Budget("claude-3-5-sonnet", 500))
    assert packed.tokenizer == "estimate:claude-3-5-sonnet"
    assert packed.token_count == math.ceil(1.3 * tokenizer_for("gpt-4").count(packed.text))


# ---------------------------------------------------------------- near-duplicates


def test_same_text_twice_is_packed_once() -> None:
    results = [
        make_result("a", "Tax returns are due in April.", rank=1),
        make_result("b", "  tax RETURNS are due\n in april.  ", rank=2),
        make_result("c", "Extensions move the deadline to October.", rank=3),
    ]
    packed = pack(results, Budget("gpt-4o", 500))
    assert [c.chunk_id for c in packed.citations] == ["a", "c"]
    assert packed.skipped["near_duplicate"] == 1


def test_identical_vectors_are_near_duplicates_but_orthogonal_ones_are_not() -> None:
    results = [
        make_result("a", "Tax returns are due in April.", vector=[1.0, 0.0, 0.0]),
        make_result("b", "The filing deadline is the fifteenth of April.", vector=[2.0, 0.0, 0.0]),
        make_result("c", "Extensions move it to October.", vector=[0.0, 1.0, 0.0]),
        make_result("d", "Penalties start the day after.", vector=None),
        make_result("e", "Almost the same as the first.", vector=[0.99, 0.1, 0.0]),
    ]
    packed = pack(results, Budget("gpt-4o", 500), near_duplicate_cosine=0.97)
    # cos(a, e) ≈ 0.995 >= 0.97
    assert [c.chunk_id for c in packed.citations] == ["a", "c", "d"]
    assert packed.skipped["near_duplicate"] == 2
    strict = pack(results, Budget("gpt-4o", 500), near_duplicate_cosine=1.0)
    assert [c.chunk_id for c in strict.citations] == ["a", "c", "d", "e"]


def test_vectors_of_other_lengths_or_not_finite_are_never_called_duplicates() -> None:
    inf = float("inf")
    results = [
        make_result("a", "Tax returns are due in April.", vector=[1.0, 0.0, 0.0]),
        make_result("b", "The filing deadline is in spring.", vector=[1.0, 0.0]),
        make_result("c", "Extensions move it to October.", vector=[inf, 1.0, 0.0]),
        make_result("d", "Penalties start the day after.", vector=[0.0, 0.0, 0.0]),
        make_result("e", "Interest accrues monthly.", vector=[1.0, 0.01]),  # repeats b
        make_result("f", "Refunds take three weeks.", vector=[3.0, 0.0, 0.0]),  # repeats a
    ]
    packed = pack(results, Budget("gpt-4o", 500))
    assert [c.chunk_id for c in packed.citations] == ["a", "b", "c", "d"]
    assert packed.skipped["near_duplicate"] == 2


# ---------------------------------------------------------------- passages over budget


def test_last_passage_is_cut_at_a_sentence_boundary_and_flagged() -> None:
    first = make_result("a", sentences(3, "budgets"), rank=1)
    long = make_result("b", sentences(40, "tokens"), rank=2)
    tail = make_result("c", "A short one.", rank=3)
    whole_first = pack([first], Budget("gpt-4o", 1000)).token_count
    budget = Budget("gpt-4o", whole_first + 120)
    packed = pack([first, long, tail], budget, min_partial_tokens=40)

    assert [c.chunk_id for c in packed.citations] == ["a", "b"]
    assert [c.truncated for c in packed.citations] == [False, True]
    cut = packed.text.split("[2] ", 1)[1]
    assert long.text.startswith(cut)
    assert cut.endswith("plain words.")
    assert len(cut) < len(long.text)
    assert tokens("gpt-4o", cut) >= 40
    assert packed.token_count <= budget.max_tokens
    # Stopped after the cut passage, though "A short one." would have fitted.
    assert packed.skipped["over_budget"] == 1


def test_a_shorter_later_passage_fills_the_room_a_long_one_could_not() -> None:
    results = [
        make_result("a", sentences(3, "budgets"), rank=1),
        make_result("b", sentences(40, "tokens"), rank=2),
        make_result("c", "A short one.", rank=3),
    ]
    budget = Budget("gpt-4o", pack(results[:1], Budget("gpt-4o", 1000)).token_count + 30)
    packed = pack(results, budget, min_partial_tokens=40)  # 30 left < 40: no cut
    assert [c.chunk_id for c in packed.citations] == ["a", "c"]
    assert not any(c.truncated for c in packed.citations)
    assert packed.skipped["over_budget"] == 1
    assert "[2] A short one." in packed.text


def test_passage_without_sentence_boundary_is_skipped_not_cut() -> None:
    results = [
        make_result("a", " ".join(["word"] * 400), rank=1),
        make_result("b", "A short one.", rank=2),
    ]
    packed = pack(results, Budget("gpt-4o", 100), min_partial_tokens=10)
    assert [c.chunk_id for c in packed.citations] == ["b"]
    assert packed.skipped["over_budget"] == 1


# ---------------------------------------------------------------- section shares


def test_shares_cap_memory_and_history() -> None:
    memories = [f"Fact number {i} about the user's long-running projects." for i in range(40)]
    history = [
        Turn("user" if i % 2 == 0 else "assistant", f"Message {i} of the chat.") for i in range(40)
    ]
    results = [make_result(f"p{i}", sentences(2, f"topic {i}"), rank=i + 1) for i in range(40)]
    instructions = "Use the sources."
    budget = Budget("gpt-4o", 600)
    packed = pack(
        results,
        budget,
        instructions=instructions,
        memories=memories,
        history=history,
        memory_share=0.2,
        history_share=0.1,
    )
    available = 600 - tokens("gpt-4o", instructions)

    assert 0 < packed.sections["memory"] <= math.floor(0.2 * available)
    assert 0 < packed.sections["history"] <= math.floor(0.1 * available)
    assert packed.skipped["memory_over_budget"] > 0
    assert packed.skipped["history_over_budget"] > 0
    # Memories in the order given; history keeps the most recent turns, in order.
    assert "- Fact number 0 " in packed.text
    history_text = packed.text.split(HISTORY_HEADER + "\n", 1)[1].split("\n\n", 1)[0]
    lines = history_text.split("\n")
    assert lines[-1] == "assistant: Message 39 of the chat."
    numbers = [int(re.search(r"Message (\d+)", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert numbers == list(range(40 - len(lines), 40))
    assert packed.skipped["history_over_budget"] == 40 - len(lines)
    assert packed.token_count <= 600
    # The rest went to passages.
    assert packed.sections["passages"] >= 600 - available * 0.3 - 60


def test_unused_shares_flow_to_passages() -> None:
    results = [make_result(f"p{i}", sentences(2, f"topic {i}"), rank=i + 1) for i in range(40)]
    budget = Budget("gpt-4o", 500)
    packed = pack(results, budget, memory_share=0.25, history_share=0.25)
    assert packed.sections["memory"] == packed.sections["history"] == 0
    assert packed.sections["passages"] > 0.9 * 500  # far above the 50% left by the two caps
    assert packed.token_count <= 500


def test_zero_shares_leave_out_memory_and_history() -> None:
    packed = pack(
        [make_result("a", "A passage.")],
        Budget("gpt-4o", 500),
        memories=["likes tea"],
        history=[Turn("user", "hi")],
        memory_share=0.0,
        history_share=0.0,
    )
    assert MEMORY_HEADER not in packed.text
    assert HISTORY_HEADER not in packed.text
    assert packed.skipped["memory_over_budget"] == 1
    assert packed.skipped["history_over_budget"] == 1


# ---------------------------------------------------------------- the final recount


class JoinPenaltyTokenizer:
    """Real o200k counts plus a surcharge on texts joined from several blocks.

    BPE counts of pieces do not add up to the count of their join; with tiktoken the gap
    is rare and small, so this tokenizer makes it certain, to exercise the recount.
    """

    def __init__(self, penalty: int, min_joins: int) -> None:
        self.inner = tokenizer_for("gpt-4o")
        self.penalty = penalty
        self.min_joins = min_joins

    @property
    def name(self) -> str:
        return "join-penalty"

    def count(self, text: str) -> int:
        extra = self.penalty if text.count("\n\n") >= self.min_joins else 0
        return self.inner.count(text) + extra

    def truncate(self, text: str, max_tokens: int) -> str:
        return self.inner.truncate(text, max_tokens)


def _tightest_budget(fits: Callable[[Budget], bool]) -> Budget:
    """The smallest budget at which plain o200k packing keeps everything."""
    for n in range(10, 1000):
        if fits(Budget("gpt-4o", n)):
            return Budget("gpt-4o", n)
    raise AssertionError("nothing fits in 1000 tokens")


def test_recount_drops_the_last_passage_when_pieces_do_not_add_up() -> None:
    results = [make_result(f"p{i}", f"Passage {i} says one thing.", rank=i + 1) for i in range(3)]
    budget = _tightest_budget(lambda b: len(pack(results, b).citations) == 3)
    # Each piece has one blank line, the joined text three: only the join pays.
    tok = JoinPenaltyTokenizer(penalty=6, min_joins=3)
    packed = pack(results, budget, tokenizer=tok, min_partial_tokens=1000)
    assert packed.token_count == tok.count(packed.text) <= budget.max_tokens
    assert [c.chunk_id for c in packed.citations] == ["p0", "p1"]
    assert "[3]" not in packed.text
    assert packed.skipped["over_budget"] == 1
    assert packed.tokenizer == "join-penalty"


def test_recount_drops_oldest_history_before_memory() -> None:
    kwargs = dict(
        instructions="Be brief.",
        memories=["Likes tea"],
        history=[Turn("user", "first question"), Turn("assistant", "first answer")],
        memory_share=1.0,
        history_share=1.0,
    )
    budget = _tightest_budget(
        lambda b: "first question" in pack([], b, **kwargs).text  # type: ignore[arg-type]
    )
    tok = JoinPenaltyTokenizer(penalty=4, min_joins=2)
    packed = pack([], budget, tokenizer=tok, **kwargs)  # type: ignore[arg-type]
    assert packed.token_count == tok.count(packed.text) <= budget.max_tokens
    assert "first question" not in packed.text
    assert "assistant: first answer" in packed.text
    assert "- Likes tea" in packed.text
    assert packed.skipped["history_over_budget"] == 1


def test_assembled_prompts_do_not_fill_the_count_cache() -> None:
    # A serving process packs a different prompt on every call; caching each one kept
    # ≈ 8 KiB per retrieve for the first 65,536 (docs/reliability.md). Only the
    # passages, which recur across queries, may be remembered.
    tok = tokenizer_for("tiktoken:o200k_base")
    pool = [make_result(f"p{i}", sentences(6, f"topic {i}"), rank=i + 1) for i in range(12)]
    pack(pool[:4], Budget("tiktoken:o200k_base", 2000))  # every passage seen once
    held = set()
    for i in range(40):  # 40 distinct prompts from the same 12 passages
        chosen = [pool[(i + k) % 12] for k in range(4)] + [pool[(i * 5) % 12]]
        packed = pack(chosen, Budget("tiktoken:o200k_base", 2000), instructions=f"Call {i}.")
        held.add(packed.text)
    assert len(held) == 40
    assert not any(text in tok._counts for text in held)  # type: ignore[attr-defined]


def test_the_count_cache_is_bounded_in_characters() -> None:
    from pertinent.prompts.tokenizers import CachedTokenizer, EstimateTokenizer

    cached = CachedTokenizer(EstimateTokenizer("m"), maxsize=1000, max_chars=100)
    for i in range(50):
        assert cached.count(f"text number {i:03d} " * 2) > 0  # 32 characters each
    assert cached.cached_chars <= 100
    assert len(cached._counts) == 3  # type: ignore[attr-defined]
    assert cached.count("x" * 500) > 0  # longer than the whole bound: counted, not kept
    assert cached.cached_chars <= 100
