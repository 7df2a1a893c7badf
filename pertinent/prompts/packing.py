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


class _NearDuplicates:
    """Cosines between each candidate and the passages packed so far.

    The candidates' vectors are scaled to length 1 in one pass per dimension, and each
    check is one matrix-vector product against the packed rows. Normalising each vector
    and comparing pairs one by one in Python took ≈ 2 ms (cProfile) of a 4.6 ms `pack`
    over 50 candidates (bench_throughput, packing; 3.2 ms now, docs/benchmarks.md).
    Vectors of different lengths are never compared; a missing, empty, zero or
    non-finite vector takes no part.
    """

    def __init__(self, vectors: Sequence[npt.ArrayLike | None], threshold: float) -> None:
        self.threshold = threshold
        self._where: list[tuple[int, int] | None] = [None] * len(vectors)  # (dim, row)
        rows: dict[int, list[int]] = {}
        for i, v in enumerate(vectors):
            if v is not None:
                rows.setdefault(int(np.size(v)), []).append(i)
        self._units: dict[int, npt.NDArray[np.float64]] = {}
        self._packed: dict[int, npt.NDArray[np.float64]] = {}
        self._n_packed: dict[int, int] = {}
        for dim, idx in rows.items():
            if dim == 0:
                continue
            m = np.stack([np.asarray(vectors[i], dtype=np.float64).ravel() for i in idx])
            with np.errstate(all="ignore"):
                norms = np.linalg.norm(m, axis=1)
            usable = np.isfinite(norms) & (norms > 0.0)
            self._units[dim] = m[usable] / norms[usable, None]
            self._packed[dim] = np.empty((int(usable.sum()), dim))
            self._n_packed[dim] = 0
            for row, i in enumerate(i for i, ok in zip(idx, usable, strict=True) if ok):
                self._where[i] = (dim, row)

    def repeats_packed(self, i: int) -> bool:
        """Whether candidate `i` is within the threshold of a packed passage."""
        where = self._where[i]
        if where is None:
            return False
        dim, row = where
        n = self._n_packed[dim]
        if n == 0:
            return False
        return bool((self._packed[dim][:n] @ self._units[dim][row]).max() >= self.threshold)

    def packed(self, i: int) -> None:
        where = self._where[i]
        if where is not None:
            dim, row = where
            self._packed[dim][self._n_packed[dim]] = self._units[dim][row]
            self._n_packed[dim] += 1


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
    near = _NearDuplicates([r.chunk.vector for r in results], near_duplicate_cosine)
    full = False
    for i, result in enumerate(results):
        chunk = result.chunk
        text = chunk.text.strip()
        if not text:
            continue
        normalized = _collapse(text.lower())
        if normalized in seen_texts or near.repeats_packed(i):
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
        near.packed(i)

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

    # With one section (passages alone, the common case) the text is that section: its
    # count is known, and a second count of a 2,000-token text cost ≈ 1 ms.
    texts = asm.section_texts()
    if sum(1 for t in texts.values() if t) == 1:
        sections = {name: (token_count if t else 0) for name, t in texts.items()}
    else:
        sections = {name: (count_once(t) if t else 0) for name, t in texts.items()}
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
