"""Packing retrieved passages, user memory and conversation history into a token budget.

The packed text is counted with the reading model's own tokenizer and is never above the
budget: a context that overflows is cut by the provider (or rejected) where nobody sees
it, which is worse than a passage left out here, where `skipped` says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pertinent.errors import BudgetTooSmall, InvalidInput
from pertinent.prompts.tokenizers import CachedTokenizer, Tokenizer, tokenizer_for
from pertinent.types import Budget, Chunk, Citation, PackedContext, Result, Turn

__all__ = ["HISTORY_HEADER", "MEMORY_HEADER", "SOURCES_HEADER", "format_passage", "pack"]

MEMORY_HEADER = "## What I know about the user"
HISTORY_HEADER = "## Conversation so far"
SOURCES_HEADER = "## Sources"

_SECTION_SEP = "\n\n"
_PASSAGE_SEP = "\n\n"
_LINE_SEP = "\n"

# Where a cut passage may end: after . ? ! (and any closing quote or bracket) followed by
# white space, after a CJK full stop, or before a line break.
_SENTENCE_END = re.compile(r"[.?!][\"'”’)\]]*(?=\s)|[。！？]|\n")


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _label(chunk: Chunk) -> str:
    return _collapse(chunk.title or chunk.source or "")


def _block(marker: int, label: str, text: str) -> str:
    return f"[{marker}] ({label}) {text}" if label else f"[{marker}] {text}"


def format_passage(result: Result, marker: int) -> str:
    """The passage as it appears under ``## Sources``: ``[n] (title or source) text``.

    Public so that a custom prompt can show passages the way citations refer to them.
    """
    return _block(marker, _label(result.chunk), result.chunk.text.strip())


_UnitVector = npt.NDArray[np.float64]


def _unit(vector: npt.ArrayLike | None) -> _UnitVector | None:
    """The vector scaled to length 1, or None when it cannot take part in a cosine."""
    if vector is None:
        return None
    v = np.asarray(vector, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(v))
    if v.size == 0 or not math.isfinite(norm) or norm == 0.0:
        return None
    unit: _UnitVector = v / norm
    return unit


@dataclass
class _Assembly:
    """The pieces chosen so far, kept per section so the lowest-priority one can be dropped."""

    instructions: str = ""
    memory: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # oldest first
    passages: list[tuple[str, Citation]] = field(default_factory=list)

    def section_texts(self) -> dict[str, str]:
        texts = {"instructions": self.instructions, "memory": "", "history": "", "passages": ""}
        if self.memory:
            texts["memory"] = MEMORY_HEADER + _LINE_SEP + _LINE_SEP.join(self.memory)
        if self.history:
            texts["history"] = HISTORY_HEADER + _LINE_SEP + _LINE_SEP.join(self.history)
        if self.passages:
            texts["passages"] = (
                SOURCES_HEADER + _PASSAGE_SEP + _PASSAGE_SEP.join(b for b, _ in self.passages)
            )
        return texts

    def render(self) -> str:
        return _SECTION_SEP.join(t for t in self.section_texts().values() if t)

    def lead(self) -> str:
        """What separates a new section from those before it."""
        return _SECTION_SEP if (self.instructions or self.memory or self.history) else ""


def _check_fraction(name: str, value: float, *, low_open: bool = False) -> None:
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)
    if not (isinstance(value, (int, float)) and math.isfinite(value) and ok):
        bounds = "(0, 1]" if low_open else "[0, 1]"
        raise InvalidInput(f"{name} must be a number in {bounds}, got {value!r}.")


def pack(
    results: Sequence[Result],
    budget: Budget,
    *,
    instructions: str = "",
    memories: Sequence[str] = (),
    history: Sequence[Turn] = (),
    memory_share: float = 0.25,
    history_share: float = 0.25,
    near_duplicate_cosine: float = 0.97,
    min_partial_tokens: int = 40,
    tokenizer: Tokenizer | None = None,
) -> PackedContext:
    """Fit instructions, user memory, recent history and the best passages into `budget`.

    Sections come in that order and share the budget left after the instructions:
    `memory_share` and `history_share` cap those sections (they are caps, not
    reservations, so what they leave unused goes to passages). Memories are taken in the
    order given, history from the most recent turn back, passages in rank order. A
    passage that repeats one already packed (same normalized text, or a vector with
    cosine >= `near_duplicate_cosine`) is skipped: it would spend tokens on nothing new.
    A passage too long for the room left is skipped in favour of shorter later ones,
    unless at least `min_partial_tokens` remain: then it is cut at a sentence boundary,
    its citation is marked `truncated`, and packing stops.

    Raises `BudgetTooSmall` when the instructions alone exceed the budget (they are never
    cut: a prompt missing half its instructions misbehaves silently), `InvalidInput` for
    out-of-range shares, and `TokenizerUnavailable` when the budget model's tokenizer
    cannot be loaded.
    """
    _check_fraction("memory_share", memory_share)
    _check_fraction("history_share", history_share)
    _check_fraction("near_duplicate_cosine", near_duplicate_cosine, low_open=True)
    if not isinstance(min_partial_tokens, int) or min_partial_tokens < 0:
        raise InvalidInput(f"min_partial_tokens must be an int >= 0, got {min_partial_tokens!r}.")

    tok = tokenizer if tokenizer is not None else tokenizer_for(budget.model)
    limit = budget.max_tokens
    asm = _Assembly(instructions=instructions.strip())
    skipped = {
        "near_duplicate": 0,
        "over_budget": 0,
        "memory_over_budget": 0,
        "history_over_budget": 0,
    }

    # Block costs are counted with the separator that precedes them, so their sum tracks
    # the count of the joined text closely; the final recount makes it exact.
    used = tok.count(asm.instructions) if asm.instructions else 0
    if used > limit:
        raise BudgetTooSmall(
            f"The instructions alone take {used} tokens ({tok.name}) but the budget is "
            f"{limit} tokens. Raise Budget.max_tokens to at least {used} plus room for "
            "passages, or shorten the instructions."
        )
    available = limit - used

    # Memory: capped at its share; a memory that does not fit leaves room for a shorter one.
    cap, spent = math.floor(memory_share * available), 0
    for memory in memories:
        line = "- " + _collapse(memory)
        if line == "- ":
            continue
        cost = tok.count(
            (asm.lead() + MEMORY_HEADER + _LINE_SEP + line) if not asm.memory else _LINE_SEP + line
        )
        if spent + cost <= cap and used + cost <= limit:
            asm.memory.append(line)
            spent += cost
            used += cost
        else:
            skipped["memory_over_budget"] += 1

    # History: most recent turns first, stopping at the first that does not fit, so the
    # kept turns are a contiguous, readable end of the conversation.
    cap, spent = math.floor(history_share * available), 0
    turns = [t for t in history if t.text.strip()]
    kept: list[str] = []
    for i, turn in enumerate(reversed(turns)):
        line = f"{_collapse(turn.role) or 'unknown'}: {turn.text.strip()}"
        cost = tok.count(
            (asm.lead() + HISTORY_HEADER + _LINE_SEP + line) if not kept else _LINE_SEP + line
        )
        if spent + cost > cap or used + cost > limit:
            skipped["history_over_budget"] += len(turns) - i
            break
        kept.append(line)
        spent += cost
        used += cost
    asm.history = kept[::-1]

    # Passages: everything left.
    seen_texts: set[str] = set()
    seen_vectors: list[_UnitVector] = []
    full = False
    for result in results:
        chunk = result.chunk
        text = chunk.text.strip()
        if not text:
            continue
        normalized = _collapse(text.lower())
        unit = _unit(chunk.vector)
        if normalized in seen_texts or (
            unit is not None
            and any(
                v.shape == unit.shape and float(v @ unit) >= near_duplicate_cosine
                for v in seen_vectors
            )
        ):
            skipped["near_duplicate"] += 1
            continue
        if full:
            skipped["over_budget"] += 1
            continue

        marker = len(asm.passages) + 1
        label = _label(chunk)
        lead = (asm.lead() + SOURCES_HEADER + _PASSAGE_SEP) if not asm.passages else _PASSAGE_SEP
        block = _block(marker, label, text)
        cost = tok.count(lead + block)
        truncated = False
        room = limit - used
        if cost > room:
            cut = None
            if room >= min_partial_tokens:
                head = _block(marker, label, "")
                cut = _cut_at_sentence(tok, lead, head, text, room, min_partial_tokens)
            if cut is None:
                skipped["over_budget"] += 1
                continue  # a shorter passage further down may still fit
            block, cost = _block(marker, label, cut[0]), cut[1]
            truncated = full = True

        asm.passages.append(
            (
                block,
                Citation(
                    marker=marker,
                    chunk_id=chunk.id,
                    doc_id=chunk.doc_id,
                    source=chunk.source,
                    title=chunk.title,
                    truncated=truncated,
                ),
            )
        )
        used += cost
        seen_texts.add(normalized)
        if unit is not None:
            seen_vectors.append(unit)

    # Token counts are not additive (BPE can merge across a join), so the promise is kept
    # on the joined text itself: drop the least important piece until it fits.
    # The assembled texts differ per call: counted without filling the count cache.
    count_once = tok.count_once if isinstance(tok, CachedTokenizer) else tok.count
    text = asm.render()
    token_count = count_once(text)
    while token_count > limit:
        if asm.passages:
            asm.passages.pop()
            skipped["over_budget"] += 1
        elif asm.history:
            asm.history.pop(0)
            skipped["history_over_budget"] += 1
        elif asm.memory:
            asm.memory.pop()
            skipped["memory_over_budget"] += 1
        else:  # instructions alone were checked to fit; a tokenizer that disagrees with itself
            raise BudgetTooSmall(
                f"The instructions count {token_count} tokens ({tok.name}), over the budget "
                f"of {limit}. Raise Budget.max_tokens or shorten the instructions."
            )
        text = asm.render()
        token_count = count_once(text)

    sections = {name: (count_once(t) if t else 0) for name, t in asm.section_texts().items()}
    return PackedContext(
        text=text,
        token_count=token_count,
        budget=budget,
        citations=tuple(c for _, c in asm.passages),
        results=tuple(results),
        sections=sections,
        skipped=skipped,
        tokenizer=tok.name,
    )


def _cut_at_sentence(
    tok: Tokenizer, lead: str, head: str, text: str, room: int, min_tokens: int
) -> tuple[str, int] | None:
    """The longest sentence-aligned prefix of `text` whose block fits `room`, and its cost.

    A passage cut mid-sentence can say the opposite of its source ("X is safe" from "X is
    safe only when ..."), so only whole sentences are kept; None when no sentence
    boundary gives a piece of at least `min_tokens` tokens.
    """
    prefix = tok.truncate(lead + head + text, room)
    limit = len(prefix) - len(lead) - len(head)
    if limit <= 0:
        return None
    ends: list[int] = []
    for m in _SENTENCE_END.finditer(text):
        end = m.start() if m.group() == "\n" else m.end()
        if end > limit:
            break
        ends.append(end)
    for end in reversed(ends):
        piece = text[:end].rstrip()
        if not piece:
            continue
        cost = tok.count(lead + head + piece)
        if cost < min_tokens:
            return None  # shorter pieces are smaller still
        if cost <= room:
            return piece, cost
    return None
