"""The values that flow through pertinent.

All are frozen dataclasses so tests and callers compare them by value. Vectors are
numpy arrays kept out of equality and hashing (`compare=False`): two hits are the same
hit when their ids and scores agree, whatever float noise their vectors carry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from pertinent.errors import InvalidInput, UnknownEventKind

__all__ = [
    "EVENT_KINDS",
    "Budget",
    "Chunk",
    "Citation",
    "Document",
    "Event",
    "EventKind",
    "Hit",
    "PackedContext",
    "Result",
    "ScoreBreakdown",
    "Turn",
    "Vector",
]

Vector = npt.NDArray[np.float32]

EventKind = Literal["query", "open", "click", "accept", "like", "reject", "dislike", "skip"]
EVENT_KINDS: tuple[str, ...] = (
    "query",
    "open",
    "click",
    "accept",
    "like",
    "reject",
    "dislike",
    "skip",
)


def check_text(text: str, what: str) -> str:
    """Refuse text that is not valid Unicode (lone surrogates, e.g. from a bad decode):
    tokenizers and the store's UTF-8 columns cannot hold it, and failing later would
    leave a half-written batch."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{what} contains characters that are not valid Unicode (position {exc.start}); "
            "decode your input with errors='replace' or fix its source."
        ) from exc
    return text


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(when: datetime) -> datetime:
    """Naive datetimes are taken as UTC: event logs written by servers usually are."""
    return (
        when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    )


@dataclass(frozen=True)
class Document:
    """A source document before chunking.

    `acl` lists the principals allowed to read it (e.g. ``"role:support"``,
    ``"dept:finance"``, ``"user:alice"``); an empty `acl` means everyone may.
    `owner` makes the document user-owned: only that user ever retrieves it, and
    `forget_user` deletes it.
    """

    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    acl: tuple[str, ...] = ()
    owner: str | None = None
    source: str | None = None
    title: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise InvalidInput("Document.id must be a non-empty string.")
        if not isinstance(self.text, str):
            raise InvalidInput(f"Document {self.id!r}: text must be a str, got {type(self.text)}.")
        check_text(self.id, "Document.id")
        check_text(self.text, f"Document {self.id!r}")
        object.__setattr__(self, "acl", tuple(sorted(set(self.acl))))


@dataclass(frozen=True)
class Chunk:
    """One embedded piece of a document, as stored."""

    id: str
    doc_id: str
    text: str
    position: int
    metadata: Mapping[str, Any] = field(default_factory=dict)
    acl: tuple[str, ...] = ()
    owner: str | None = None
    source: str | None = None
    title: str | None = None
    model_id: str = ""
    vector: Vector | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Event:
    """Something a user did, the source of truth for their profile.

    Give `item_id` (a chunk id: the item's stored vector is used) or `text` (embedded
    at record time), or both. `weight` overrides the kind's default weight from the
    settings; negative kinds (`reject`, `dislike`, `skip`) go to the negative sum.
    """

    kind: str
    item_id: str | None = None
    text: str | None = None
    weight: float | None = None
    timestamp: datetime | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        for name, value, types in (
            ("item_id", self.item_id, (str,)),
            ("text", self.text, (str,)),
            ("session_id", self.session_id, (str,)),
            ("weight", self.weight, (int, float)),
            ("timestamp", self.timestamp, (datetime,)),
        ):
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                raise InvalidInput(
                    f"Event.{name} must be {' or '.join(t.__name__ for t in types)} or None, "
                    f"got {type(value).__name__}."
                )
        if not isinstance(self.kind, str) or self.kind not in EVENT_KINDS:
            raise UnknownEventKind(
                f"Unknown event kind {self.kind!r}. Use one of: {', '.join(EVENT_KINDS)}."
            )
        if not self.item_id and not (self.text and self.text.strip()):
            raise InvalidInput(
                f"A {self.kind!r} event needs an item_id (a chunk id) or a non-empty text."
            )
        if self.text is not None:
            check_text(self.text, "Event.text")
        if self.item_id is not None:
            check_text(self.item_id, "Event.item_id")
        if self.weight is not None and not math.isfinite(self.weight):
            raise InvalidInput(f"Event weight must be finite, got {self.weight}.")
        if self.timestamp is not None:
            object.__setattr__(self, "timestamp", as_utc(self.timestamp))


@dataclass(frozen=True)
class Turn:
    """One message of a conversation."""

    role: str
    text: str
    timestamp: datetime | None = None


@dataclass(frozen=True)
class Hit:
    """A candidate as the store returns it.

    `bm25` is the raw full-text score (None when the keyword leg did not return the
    chunk); `vector_cosine` is the cosine between the search vector and the chunk;
    `hybrid` is the store's fused score in [0, 1] (0 for legs that do not fuse).
    """

    chunk: Chunk
    bm25: float | None = None
    vector_cosine: float | None = None
    hybrid: float = 0.0

    @property
    def id(self) -> str:
        return self.chunk.id


@dataclass(frozen=True)
class ScoreBreakdown:
    """Why a result has its score: every term, the weights and the gates.

    `final = (w_hybrid·hybrid + w_user·user_gate·user + w_session·session_gate·session)
    / (w_hybrid + w_user·user_gate + w_session·session_gate)`, optionally mixed with
    `rerank`, then MMR picks the order; `mmr` is the score MMR selected it with.
    All of `hybrid`, `user`, `session` lie in [0, 1], so `final` does too.

    Long-term memory results (`pertinent.memory.longterm`) also carry `recency` (the
    age prior, in [0, 1]) and `priors`: their other named terms in [0, 1] (``neighbour``,
    ``speaker``, ``date``); for document results both stay at their defaults.
    """

    bm25: float
    vector: float
    hybrid: float
    user: float
    user_negative: float
    user_gate: float
    session: float
    session_gate: float
    personalized: float
    rerank: float | None
    final: float
    mmr: float
    found_by: tuple[str, ...]
    recency: float = 0.0
    priors: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        # `as_dict` gives `priors` as a dict; accept it back so a breakdown round-trips.
        if not isinstance(self.priors, tuple) or not all(isinstance(p, tuple) for p in self.priors):
            items = self.priors.items() if isinstance(self.priors, Mapping) else self.priors
            object.__setattr__(self, "priors", tuple((str(k), float(v)) for k, v in items))

    def as_dict(self) -> dict[str, Any]:
        return {
            "bm25": self.bm25,
            "vector": self.vector,
            "hybrid": self.hybrid,
            "user": self.user,
            "user_negative": self.user_negative,
            "user_gate": self.user_gate,
            "session": self.session,
            "session_gate": self.session_gate,
            "personalized": self.personalized,
            "rerank": self.rerank,
            "final": self.final,
            "mmr": self.mmr,
            "found_by": list(self.found_by),
            "recency": self.recency,
            "priors": dict(self.priors),
        }

    def __str__(self) -> str:
        parts = [
            f"final={self.final:.3f}",
            f"hybrid={self.hybrid:.3f} (bm25={self.bm25:.2f}, vec={self.vector:.3f})",
            f"user={self.user:.3f}×gate {self.user_gate:.2f}",
            f"session={self.session:.3f}×gate {self.session_gate:.2f}",
        ]
        if self.rerank is not None:
            parts.append(f"rerank={self.rerank:.3f}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Result:
    """One retrieved chunk with its rank and its score breakdown."""

    chunk: Chunk
    rank: int
    score: float
    explain: ScoreBreakdown

    @property
    def id(self) -> str:
        return self.chunk.id

    @property
    def text(self) -> str:
        return self.chunk.text


@dataclass(frozen=True)
class Budget:
    """How many tokens the packed context may take, counted with `model`'s tokenizer.

    `model` is an OpenAI model name (tiktoken), ``"hf:/path/to/tokenizer.json"`` for an
    open model, or any other name for a conservative estimate (see docs/packing.md).
    """

    model: str = "gpt-4o"
    max_tokens: int = 2000

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise InvalidInput(
                f"Budget.max_tokens must be a positive int, got {self.max_tokens!r}."
            )
        if not self.model or not self.model.strip():
            raise InvalidInput("Budget.model must name the model that will read the context.")


@dataclass(frozen=True)
class Citation:
    """The n-th passage marker (``[n]``) in the packed text, and where it came from."""

    marker: int
    chunk_id: str
    doc_id: str
    source: str | None
    title: str | None
    truncated: bool = False


@dataclass(frozen=True)
class PackedContext:
    """What to put in the prompt, and its accounting.

    `token_count` is the exact count of `text` with the budget model's tokenizer and is
    never above `budget.max_tokens`. `sections` gives tokens per section. `degraded`
    says why the context is less than usual (only with `Settings.degraded_mode`).
    """

    text: str
    token_count: int
    budget: Budget
    citations: tuple[Citation, ...]
    results: tuple[Result, ...]
    sections: Mapping[str, int]
    skipped: Mapping[str, int]
    tokenizer: str
    degraded: tuple[str, ...] = ()
