"""Long-term memory: what a user said weeks ago, found again without re-reading it all.

    ltm = LongTermMemory(px)
    ltm.add_conversation("alice", turns, session_id="2023-05-08")   # every turn, no LLM
    ltm.extract("alice", turns, session_id="s9", extractor=FactExtractor(llm))  # optional facts
    ltm.search("when did I move to Berlin?", user_id="alice")        # ranked, explained
    ltm.context("when did I move?", user_id="alice", session_id="s9",
                budget=Budget("gpt-4o", 2000))                        # docs + memories + history

Memory items are ordinary user-owned chunks (``owner=user_id``) in the client's store, so
isolation, ACLs and `forget_user` work as for any owned document and the store protocol
is unchanged. Each item's metadata keeps who said it (`role`, `speaker`), when (an ISO
UTC `timestamp`), where (`session_id`, `turn_id`, `seq`, `prev`: the previous turn's
document id), `source`, its `kind` (``"turn"`` or ``"fact"``) and, for facts, the
superseded versions (`history`). Document ids are ``mem:{user}:{session}:{turn}``
(``mem:{user}:fact:{key}`` for facts), so adding a turn again replaces it.

Two things make conversation turns findable where plain hybrid search fails:
- a turn is embedded *with the turn before it* (the text stored and searched by BM25 is
  the turn alone): "Sweden, four years ago" means nothing without "where did you move
  from?", and
- ranking adds priors to the store's hybrid score: the best score of the neighbouring
  turns (an answer sits next to its question), the speaker the query names, the dates
  the query names ("in May 2023"), recency (half-life), and the current session's
  affinity; then MMR. Every term is in the result's `ScoreBreakdown`.
See docs/memory.md for the measured effect of each (LoCoMo).
"""

from __future__ import annotations

import calendar
import email.utils
import hashlib
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import numpy as np
from pydantic import BaseModel, Field

from pertinent.client import Pertinent
from pertinent.errors import (
    ConfigurationError,
    ConsentWithheld,
    EmptyQuery,
    InvalidInput,
)
from pertinent.ingest import Chunker
from pertinent.memory.extractors import (
    ExtractedFact,
    ExtractionError,
    Extractor,
    KnownFact,
    LLMError,
    normalize_fact_key,
)
from pertinent.prompts.packing import MEMORY_HEADER, pack
from pertinent.prompts.tokenizers import Tokenizer, tokenizer_for
from pertinent.retrievers.diversity import mmr
from pertinent.retrievers.pipeline import StageTimes
from pertinent.retrievers.rescoring import minmax
from pertinent.stores.base import SearchFilter
from pertinent.types import (
    Budget,
    Chunk,
    Document,
    PackedContext,
    Result,
    ScoreBreakdown,
    Turn,
    as_utc,
    utcnow,
)
from pertinent.versions import pinned_client

__all__ = [
    "AddReport",
    "DateWindow",
    "ExtractionReport",
    "InvalidTimestamp",
    "LongTermMemory",
    "MemoryRecord",
    "MemorySettings",
    "MemoryTurn",
    "MemoryWeights",
    "fact_doc_id",
    "is_memory",
    "normalize_timestamp",
    "query_date_windows",
    "turn_doc_id",
]

log = logging.getLogger(__name__)

DEFAULT_SESSION = "default"
_PREFIX = "mem:"


class InvalidTimestamp(InvalidInput):
    """A timestamp that cannot be read as a point in time; the message lists the formats."""


# --------------------------------------------------------------------------- settings


class MemoryWeights(BaseModel):
    """Weights of the memory score, a weighted mean of terms in [0, 1] (docs/memory.md).

    A prior that has nothing to say for a query (no speaker named, no date named, no
    timestamps, no session) drops out of the mean instead of counting as 0.
    """

    model_config = {"frozen": True}

    hybrid: float = Field(1.0, ge=0)
    neighbour: float = Field(0.4, ge=0, description="best hybrid score of the adjacent turns")
    speaker: float = Field(0.15, ge=0, description="the item's speaker is the one the query names")
    date: float = Field(0.3, ge=0, description="the item's date is one the query names")
    recency: float = Field(0.1, ge=0, description="2^(-age / half-life)")
    session: float = Field(0.2, ge=0, description="affinity to the current session")


class MemorySettings(BaseModel):
    """Knobs of long-term memory; the defaults are what docs/memory.md measures."""

    model_config = {"frozen": True}

    alpha: float = Field(0.4, ge=0, le=1, description="vector share of the hybrid search")
    candidates: int = Field(100, gt=0, description="hybrid candidates re-scored per query")
    weights: MemoryWeights = MemoryWeights()
    half_life_days: float = Field(30.0, gt=0, description="recency prior half-life")
    date_slack_days: float = Field(2.0, ge=0, description="a named date also matches ± this")
    mmr_lambda: float = Field(0.8, ge=0, le=1, description="1 = no diversity")
    contextual_embedding: bool = Field(
        True, description="embed each turn with the turn before it (the stored text is the turn)"
    )
    pack_candidates: int = Field(100, gt=0, description="memories considered when packing")
    memory_share: float = Field(
        0.5, gt=0, le=1, description="budget cap of the memory section beside documents"
    )
    history_share: float = Field(0.25, ge=0, le=1, description="budget cap of the history")
    date_format: str = Field("%Y-%m-%d", description="how packed memory lines show dates")
    related_facts: int = Field(20, ge=0, description="known facts shown to the extractor")


# --------------------------------------------------------------------------- timestamps

_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d",
    "%I:%M %p on %d %B, %Y",  # LoCoMo: "1:56 pm on 8 May, 2023"
    "%I:%M %p on %d %b, %Y",
    "%d %B %Y",
    "%d %B, %Y",
    "%B %d, %Y",
    "%d %b %Y",
    "%b %d, %Y",
)
_FORMAT_HELP = (
    "Pass a datetime (naive means UTC), epoch seconds, or text in ISO 8601 "
    "('2023-05-08T13:56:00+02:00', '2023-05-08'), RFC 2822 ('Mon, 08 May 2023 13:56:00 "
    "+0200'), or forms like '8 May 2023' / 'May 8, 2023' / '1:56 pm on 8 May, 2023'."
)


def normalize_timestamp(value: datetime | date | float | int | str) -> datetime:
    """An aware UTC datetime from the forms agents and chat exports use.

    Naive datetimes and texts without a zone are taken as UTC; others are converted.
    Raises `InvalidTimestamp` (an `InvalidInput`) for anything else, instead of guessing.
    """
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, bool):
        raise InvalidTimestamp(f"A timestamp cannot be a bool ({value!r}). {_FORMAT_HELP}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidTimestamp(f"Epoch timestamp {value!r} is not finite. {_FORMAT_HELP}")
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidTimestamp(f"Epoch timestamp {value!r} is out of range.") from exc
    if not isinstance(value, str):
        raise InvalidTimestamp(
            f"Cannot read a {type(value).__name__} as a timestamp. {_FORMAT_HELP}"
        )
    text = " ".join(value.split())
    if not text:
        raise InvalidTimestamp(f"The timestamp is empty. {_FORMAT_HELP}")
    iso = text[:-1] + "+00:00" if text[-1:] in "Zz" else text
    try:
        return as_utc(datetime.fromisoformat(iso))
    except ValueError:
        pass
    for fmt in _FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        parsed = None
    if parsed is not None:
        return as_utc(parsed)
    raise InvalidTimestamp(f"Cannot read the timestamp {value!r}. {_FORMAT_HELP}")


# --------------------------------------------------------------------------- query dates

_MONTHS = (
    {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
    | {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
    | {"sept": 9}
)
_MON = (
    r"(january|february|march|april|may|june|july|august|september|october|november|december"
    r"|jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)\.?"
)
_ORD = r"(?:st|nd|rd|th)?"
_DAY_MONTH_YEAR = re.compile(rf"\b(\d{{1,2}}){_ORD}\s+(?:of\s+)?{_MON},?\s+(\d{{4}})\b", re.I)
_MONTH_DAY_YEAR = re.compile(rf"\b{_MON}\s+(\d{{1,2}}){_ORD},?\s+(\d{{4}})\b", re.I)
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_MONTH_YEAR = re.compile(rf"\b{_MON},?\s+(?:of\s+)?(\d{{4}})\b", re.I)
_MONTH_ONLY = re.compile(
    rf"\b(?:in|during|early|late|mid|since|until|through|of|by)\s+(?:-\s*)?{_MON}\b(?!\s+\d)",
    re.I,
)
_YEAR_ONLY = re.compile(r"\b(?:in|during|since|of)\s+((?:19|20)\d{2})\b", re.I)
_AGO = re.compile(
    r"\b(\d{1,3}|a|an|one|two|three|four|five|six)\s+(day|week|month|year)s?\s+ago\b", re.I
)
_WORD_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


@dataclass(frozen=True)
class DateWindow:
    """Dates a query names: [start, end] (inclusive days), or a month of any year."""

    start: date | None = None
    end: date | None = None
    month: int | None = None

    def matches(self, day: date, slack_days: float) -> bool:
        if self.month is not None:
            return day.month == self.month
        assert self.start is not None and self.end is not None
        slack = timedelta(days=slack_days)
        return self.start - slack <= day <= self.end + slack


def _month_number(name: str) -> int:
    return _MONTHS[name.lower().rstrip(".")]


def _month_window(year: int, month: int) -> DateWindow:
    last = calendar.monthrange(year, month)[1]
    return DateWindow(date(year, month, 1), date(year, month, last))


def query_date_windows(query: str, now: datetime | None = None) -> list[DateWindow]:
    """The dates `query` names, as windows: a day ("8 May 2023", "May 8, 2023",
    "2023-05-08"), a month ("May 2023", "in May"), a year ("in 2022"), or a time relative
    to `now` ("yesterday", "last week", "3 days ago"). Spans are not read twice."""
    windows: list[DateWindow] = []
    taken: list[tuple[int, int]] = []
    text = query

    def free(m: re.Match[str]) -> bool:
        if any(a < m.end() and m.start() < b for a, b in taken):
            return False
        taken.append((m.start(), m.end()))
        return True

    for m in _DAY_MONTH_YEAR.finditer(text):
        if free(m):
            _add_day(windows, int(m.group(3)), _month_number(m.group(2)), int(m.group(1)))
    for m in _MONTH_DAY_YEAR.finditer(text):
        if free(m):
            _add_day(windows, int(m.group(3)), _month_number(m.group(1)), int(m.group(2)))
    for m in _ISO_DATE.finditer(text):
        if free(m):
            _add_day(windows, int(m.group(1)), int(m.group(2)), int(m.group(3)))
    for m in _MONTH_YEAR.finditer(text):
        if free(m):
            windows.append(_month_window(int(m.group(2)), _month_number(m.group(1))))
    for m in _MONTH_ONLY.finditer(text):
        if free(m):
            windows.append(DateWindow(month=_month_number(m.group(1))))
    for m in _YEAR_ONLY.finditer(text):
        if free(m):
            year = int(m.group(1))
            windows.append(DateWindow(date(year, 1, 1), date(year, 12, 31)))
    today = (as_utc(now) if now else utcnow()).date()
    lowered = text.lower()
    if re.search(r"\byesterday\b", lowered):
        windows.append(DateWindow(today - timedelta(days=1), today - timedelta(days=1)))
    if re.search(r"\btoday\b", lowered):
        windows.append(DateWindow(today, today))
    if re.search(r"\blast week\b", lowered):
        windows.append(DateWindow(today - timedelta(days=13), today - timedelta(days=6)))
    if re.search(r"\blast month\b", lowered):
        first = today.replace(day=1) - timedelta(days=1)
        windows.append(_month_window(first.year, first.month))
    if re.search(r"\blast year\b", lowered):
        windows.append(DateWindow(date(today.year - 1, 1, 1), date(today.year - 1, 12, 31)))
    for m in _AGO.finditer(text):
        raw = m.group(1).lower()
        n = int(raw) if raw.isdigit() else _WORD_NUMBERS[raw]
        days = n * {"day": 1, "week": 7, "month": 30, "year": 365}[m.group(2).lower()]
        spread = max(1, days // 7)
        point = today - timedelta(days=days)
        windows.append(DateWindow(point - timedelta(days=spread), point + timedelta(days=spread)))
    return windows


def _add_day(windows: list[DateWindow], year: int, month: int, day: int) -> None:
    try:
        d = date(year, month, day)
    except ValueError:
        return  # "31 February": not a date, so not a prior
    windows.append(DateWindow(d, d))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class MemoryTurn:
    """One turn to remember. `speaker` is a name ("Caroline"); without it the `role` is
    shown. `timestamp` takes anything `normalize_timestamp` reads; `turn_id` makes
    re-adding idempotent (without one, the id hashes role, speaker, text and time)."""

    text: str
    role: str = "user"
    speaker: str | None = None
    timestamp: datetime | date | float | int | str | None = None
    turn_id: str | None = None


@dataclass(frozen=True)
class MemoryRecord:
    """A stored memory chunk, read back: the typed view of its metadata."""

    chunk: Chunk
    kind: str
    role: str | None
    speaker: str | None
    timestamp: datetime | None
    session_id: str | None
    turn_id: str | None
    seq: int | None
    prev: str | None
    key: str | None
    history: tuple[Mapping[str, Any], ...]

    @property
    def doc_id(self) -> str:
        return self.chunk.doc_id

    @property
    def text(self) -> str:
        return self.chunk.text

    @classmethod
    def from_chunk(cls, chunk: Chunk) -> MemoryRecord:
        md = chunk.metadata
        ts: datetime | None = None
        raw_ts = md.get("timestamp")
        if isinstance(raw_ts, str):
            try:
                ts = normalize_timestamp(raw_ts)
            except InvalidTimestamp:
                ts = None
        seq = md.get("seq")
        history = md.get("history") or ()
        return cls(
            chunk=chunk,
            kind=str(md.get("kind") or "document"),
            role=_opt_str(md.get("role")),
            speaker=_opt_str(md.get("speaker")),
            timestamp=ts,
            session_id=_opt_str(md.get("session_id")),
            turn_id=_opt_str(md.get("turn_id")),
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            prev=_opt_str(md.get("prev")),
            key=_opt_str(md.get("key")),
            history=tuple(h for h in history if isinstance(h, Mapping)),
        )

    def line(self, date_format: str | None = "%Y-%m-%d") -> str:
        """The item as one packed line: ``[2023-05-08] Caroline: I went to ...`` (no
        date when `date_format` is None or the item has no timestamp)."""
        body = " ".join(self.chunk.text.split())
        if self.chunk.position > 0 and self.kind == "turn":
            body = f"{self.speaker or self.role or 'unknown'} (cont.): {body}"
        if self.timestamp is None or date_format is None:
            return body
        return f"[{self.timestamp.strftime(date_format)}] {body}"

    def sort_key(self) -> tuple[float, str, int, int]:
        ts = self.timestamp.timestamp() if self.timestamp else float("inf")
        return (
            ts,
            self.session_id or "",
            self.seq if self.seq is not None else 0,
            self.chunk.position,
        )


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def is_memory(chunk: Chunk) -> bool:
    """Whether a chunk is a long-term memory item (a turn or a fact), not a document."""
    return chunk.doc_id.startswith(_PREFIX) and chunk.metadata.get("kind") in ("turn", "fact")


@dataclass(frozen=True)
class AddReport:
    """What an add call stored: one document per turn (a huge turn has several chunks)."""

    doc_ids: tuple[str, ...]
    chunks: int
    records: tuple[MemoryRecord, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class ExtractionReport:
    """What `extract` did. The turns are stored even when `error` says extraction failed."""

    turns: AddReport
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    error: str | None = None


# --------------------------------------------------------------------------- helpers


def _id_part(value: str) -> str:
    # ':' separates the parts of a memory id, so it (and '%', the escape) is quoted.
    return quote(value, safe="")


def turn_doc_id(user_id: str, session_id: str, turn_id: str) -> str:
    return f"{_PREFIX}{_id_part(user_id)}:{_id_part(session_id)}:{_id_part(turn_id)}"


def fact_doc_id(user_id: str, key: str) -> str:
    return f"{_PREFIX}{_id_part(user_id)}:fact:{_id_part(key)}"


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string, got {value!r}.")
    if "\x00" in value:
        raise InvalidInput(f"{what} may not contain NUL characters.")
    return value


def _as_turn(item: Any, n: int) -> MemoryTurn:
    if isinstance(item, MemoryTurn):
        return item
    if isinstance(item, Turn):
        return MemoryTurn(text=item.text, role=item.role, timestamp=item.timestamp)
    if isinstance(item, Mapping):
        if "text" not in item:
            raise InvalidInput(f"Turn #{n} has no 'text' (keys: {sorted(map(str, item))}).")
        turn_id = item.get("turn_id", item.get("id"))
        return MemoryTurn(
            text=item["text"],
            role=item.get("role") or "user",
            speaker=item.get("speaker"),
            timestamp=item.get("timestamp"),
            turn_id=str(turn_id) if turn_id is not None else None,
        )
    raise InvalidInput(
        f"Turn #{n} is a {type(item).__name__}; pass MemoryTurn, pertinent.Turn or a dict "
        "with 'text' (and optionally 'role', 'speaker', 'timestamp', 'turn_id')."
    )


@dataclass(frozen=True)
class _Pending:
    """A validated item about to be written."""

    doc_id: str
    text: str
    metadata: dict[str, Any]
    context: str  # what the first chunk is embedded with (the previous turn), or ""
    source: str | None


# --------------------------------------------------------------------------- the class


class LongTermMemory:
    """Per-user long-term memory over a `Pertinent` client's store and embedder.

    Thread-safe. Writes honour the user's consent (`ConsentWithheld` when they opted out
    of memory) and the client's PII redactor; reads see only the user's own items.
    """

    def __init__(
        self,
        px: Pertinent,
        *,
        settings: MemorySettings | None = None,
        extractor: Extractor | None = None,
    ) -> None:
        if not isinstance(px, Pertinent):
            raise ConfigurationError(
                f"LongTermMemory needs a pertinent.Pertinent client, got {type(px).__name__}."
            )
        self.px = px
        self.settings = settings or MemorySettings()
        self.extractor = extractor
        emb = px.embedder
        self._chunker = Chunker(
            emb.count_tokens,
            chunk_tokens=min(px.settings.chunk_tokens, emb.max_tokens - 2),
            overlap=px.settings.chunk_overlap,
        )
        self._last: OrderedDict[tuple[str, str], tuple[str, str, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.last_times: StageTimes | None = None

    # ------------------------------------------------------------------ writing

    def add_turn(
        self,
        user_id: str,
        text: str,
        *,
        role: str = "user",
        speaker: str | None = None,
        session_id: str = DEFAULT_SESSION,
        turn_id: str | None = None,
        timestamp: datetime | date | float | int | str | None = None,
        source: str | None = None,
    ) -> AddReport:
        """Remember one turn (the cheap path: no LLM). Adding the same turn id again
        replaces it. A turn longer than the embedding model reads is chunked."""
        turn = MemoryTurn(
            text=text, role=role, speaker=speaker, timestamp=timestamp, turn_id=turn_id
        )
        return self.add_conversation(user_id, [turn], session_id=session_id, source=source)

    def add_conversation(
        self,
        user_id: str,
        turns: Iterable[MemoryTurn | Turn | Mapping[str, Any]],
        *,
        session_id: str = DEFAULT_SESSION,
        timestamp: datetime | date | float | int | str | None = None,
        source: str | None = None,
    ) -> AddReport:
        """Remember turns of one session, in order, in one write (all or none).

        `timestamp` is used for turns without their own (e.g. a session's date); turns
        with neither get the current time. Every turn is validated before anything is
        written: an empty text or an unreadable timestamp raises `InvalidInput`.
        """
        _check_id(user_id, "user_id")
        _check_id(session_id, "session_id")
        if source is not None and not isinstance(source, str):
            raise InvalidInput(f"source must be a str, got {type(source).__name__}.")
        batch = [_as_turn(t, n) for n, t in enumerate(turns)]
        if not batch:
            return AddReport(doc_ids=(), chunks=0)
        default_ts = normalize_timestamp(timestamp) if timestamp is not None else None
        self._check_consent(user_id)
        now = utcnow()
        with self._lock:
            last = self._last.get((user_id, session_id))
        prev_id, prev_text, seq = (last[0], last[1], last[2] + 1) if last else (None, "", 0)
        pending: list[_Pending] = []
        seen: dict[str, int] = {}
        for n, turn in enumerate(batch):
            if not isinstance(turn.text, str) or not turn.text.strip():
                raise InvalidInput(
                    f"Turn #{n} of session {session_id!r} has no text; a memory needs words "
                    "(drop empty turns, or put an attachment's description in the text)."
                )
            role = _check_id(turn.role, f"turn #{n} role")
            speaker = turn.speaker
            if speaker is not None:
                speaker = _check_id(speaker, f"turn #{n} speaker").strip()
            ts = normalize_timestamp(turn.timestamp) if turn.timestamp is not None else None
            ts = ts or default_ts or now
            text = self._redact(turn.text)
            label = speaker or role
            full = f"{label}: {text.strip()}"
            tid = turn.turn_id
            if tid is None:
                digest = hashlib.sha256(
                    "\x1f".join((role, label, text, ts.isoformat())).encode("utf-8")
                ).hexdigest()[:16]
                seen[digest] = seen.get(digest, 0) + 1
                tid = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
            else:
                _check_id(tid, f"turn #{n} turn_id")
            doc_id = turn_doc_id(user_id, session_id, tid)
            pending.append(
                _Pending(
                    doc_id=doc_id,
                    text=full,
                    metadata={
                        "kind": "turn",
                        "role": role,
                        "speaker": speaker,
                        "timestamp": ts.isoformat(),
                        "session_id": session_id,
                        "turn_id": tid,
                        "seq": seq,
                        "prev": prev_id,
                        "source": source,
                    },
                    context=prev_text,
                    source=source,
                )
            )
            prev_id, prev_text, seq = doc_id, full, seq + 1
        if len({p.doc_id for p in pending}) != len(pending):
            raise InvalidInput(
                f"Two turns of session {session_id!r} have the same turn_id; give each its own."
            )
        chunks = self._write(user_id, pending)
        with self._lock:
            self._last[(user_id, session_id)] = (prev_id or "", prev_text, seq - 1)
            self._last.move_to_end((user_id, session_id))
            while len(self._last) > 10_000:
                self._last.popitem(last=False)
        return AddReport(
            doc_ids=tuple(p.doc_id for p in pending),
            chunks=len(chunks),
            records=tuple(MemoryRecord.from_chunk(c) for c in chunks),
        )

    def _check_consent(self, user_id: str) -> None:
        if not self.px.consent(user_id).memory:
            raise ConsentWithheld(
                f"User {user_id!r} opted out of long-term memory; nothing was stored. "
                "Check px.consent(user_id).memory before adding memories."
            )

    def _redact(self, text: str) -> str:
        redactor = self.px.redactor
        if redactor is None:
            return text
        report = redactor.redact(text)
        self.px.redaction_counts.update(report.counts)
        return report.text

    @pinned_client
    def _write(self, user_id: str, pending: Sequence[_Pending]) -> list[Chunk]:
        """Chunk, embed (with the previous turn as context) and upsert, in one store call."""
        emb = self.px.embedder
        chunks: list[Chunk] = []
        contexts: list[str] = []
        for p in pending:
            doc = Document(
                id=p.doc_id, text=p.text, metadata=p.metadata, owner=user_id, source=p.source
            )
            parts = self._chunker.split(doc)
            for i, c in enumerate(parts):
                context = p.context if i == 0 else parts[i - 1].text
                use = self.settings.contextual_embedding and context
                # The turn comes first: the model reads at most max_tokens, so a long
                # context is what gets cut, never the turn itself.
                contexts.append(f"{c.text}\n{context}" if use else c.text)
                chunks.append(c)
        vectors = emb.embed_documents(contexts)
        embedded = [
            Chunk(
                id=c.id,
                doc_id=c.doc_id,
                text=c.text,
                position=c.position,
                metadata=c.metadata,
                acl=c.acl,
                owner=c.owner,
                source=c.source,
                title=c.title,
                model_id=emb.model_id,
                vector=np.asarray(vectors[i], dtype=np.float32),
            )
            for i, c in enumerate(chunks)
        ]
        self.px.store.upsert_chunks(embedded)
        return embedded

    # ------------------------------------------------------------------ facts

    def get_fact(self, user_id: str, key: str) -> MemoryRecord | None:
        """The current version of the user's fact `key` (its `history` holds the older ones)."""
        _check_id(user_id, "user_id")
        doc_id = fact_doc_id(user_id, normalize_fact_key(key))
        found = self.px.store.get_chunks([f"{doc_id}#0"], user_id=user_id)
        return MemoryRecord.from_chunk(found[0]) if found and found[0].owner == user_id else None

    def extract(
        self,
        user_id: str,
        turns: Iterable[MemoryTurn | Turn | Mapping[str, Any]],
        *,
        session_id: str = DEFAULT_SESSION,
        timestamp: datetime | date | float | int | str | None = None,
        source: str | None = None,
        extractor: Extractor | None = None,
    ) -> ExtractionReport:
        """Store the turns, then turn them into facts with the extractor (an LLM).

        The turns are written first, so a failing or misbehaving LLM (timeout, malformed
        output) is logged and reported in `ExtractionReport.error`, never raised, and
        never costs a turn. A fact whose key is already known replaces the old version,
        which moves to the new version's `history`; an unchanged fact is not rewritten.
        """
        ex = extractor or self.extractor
        if ex is None:
            raise ConfigurationError(
                "No extractor: pass extractor=FactExtractor(llm) here or to LongTermMemory, "
                "or use add_conversation() to store the turns without facts."
            )
        written = self.add_conversation(
            user_id, turns, session_id=session_id, timestamp=timestamp, source=source
        )
        turn_records = [r for r in written.records if r.chunk.position == 0]
        if not turn_records:
            return ExtractionReport(turns=written)
        conversation = [r.line(self.settings.date_format) for r in turn_records]
        try:
            known = self._related_facts(user_id, written.records)
            facts = list(ex(conversation, known))
            for f in facts:
                if not isinstance(f, ExtractedFact):
                    raise ExtractionError(
                        f"The extractor returned a {type(f).__name__}; it must return "
                        "ExtractedFact values."
                    )
        except (LLMError, ExtractionError) as exc:
            log.warning(
                "memory extraction failed for a conversation of %d turns (kept as raw "
                "turns): %s: %s",
                len(turn_records),
                type(exc).__name__,
                exc,
            )
            return ExtractionReport(turns=written, error=f"{type(exc).__name__}: {exc}")
        return self._apply_facts(user_id, facts, turn_records, session_id, source, written)

    @pinned_client
    def _related_facts(self, user_id: str, records: Sequence[MemoryRecord]) -> list[KnownFact]:
        """Known facts near the conversation (by the mean of its vectors): the extractor
        sees them so that it updates a fact instead of adding a second version."""
        if self.settings.related_facts == 0:
            return []
        vecs = [r.chunk.vector for r in records if r.chunk.vector is not None]
        if not vecs:
            return []
        mean = np.mean(np.stack(vecs), axis=0)
        norm = float(np.linalg.norm(mean))
        if norm <= 1e-12:
            return []
        hits = self.px.store.vector_search(
            (mean / norm).astype(np.float32),
            k=self.settings.candidates,
            where=SearchFilter(user_id=user_id, owned_only=True),
        )
        out: list[KnownFact] = []
        for h in hits:
            rec = MemoryRecord.from_chunk(h.chunk)
            if rec.kind == "fact" and rec.key and h.chunk.owner == user_id:
                out.append(KnownFact(key=rec.key, text=rec.text))
            if len(out) >= self.settings.related_facts:
                break
        return out

    def _apply_facts(
        self,
        user_id: str,
        facts: Sequence[ExtractedFact],
        turn_records: Sequence[MemoryRecord],
        session_id: str,
        source: str | None,
        written: AddReport,
    ) -> ExtractionReport:
        if not facts:
            return ExtractionReport(turns=written)
        ids = {f.key: fact_doc_id(user_id, f.key) for f in facts}
        current = {
            c.doc_id: MemoryRecord.from_chunk(c)
            for c in self.px.store.get_chunks([f"{d}#0" for d in ids.values()], user_id=user_id)
            if c.owner == user_id
        }
        stamps = [r.timestamp for r in turn_records if r.timestamp is not None]
        when = max(stamps) if stamps else utcnow()
        evidence = [r.doc_id for r in turn_records]
        added: list[str] = []
        updated: list[str] = []
        unchanged: list[str] = []
        pending: list[_Pending] = []
        for f in facts:
            text = self._redact(f.text)
            old = current.get(ids[f.key])
            history: list[Mapping[str, Any]] = []
            if old is not None:
                if " ".join(old.text.lower().split()) == " ".join(text.lower().split()):
                    unchanged.append(f.key)
                    continue
                history = [
                    *old.history,
                    {
                        "text": old.text,
                        "timestamp": old.timestamp.isoformat() if old.timestamp else None,
                        "superseded_at": when.isoformat(),
                        "evidence": list(old.chunk.metadata.get("evidence") or []),
                    },
                ]
                updated.append(f.key)
            else:
                added.append(f.key)
            pending.append(
                _Pending(
                    doc_id=ids[f.key],
                    text=text,
                    metadata={
                        "kind": "fact",
                        "key": f.key,
                        "role": "fact",
                        "speaker": None,
                        "timestamp": when.isoformat(),
                        "session_id": session_id,
                        "turn_id": None,
                        "source": source,
                        "evidence": evidence,
                        "history": history,
                    },
                    context="",
                    source=source,
                )
            )
        if pending:
            self._check_consent(user_id)
            self._write(user_id, pending)
        return ExtractionReport(
            turns=written, added=tuple(added), updated=tuple(updated), unchanged=tuple(unchanged)
        )

    # ------------------------------------------------------------------ reading

    @pinned_client
    def search(
        self,
        query: str,
        *,
        user_id: str,
        session_id: str | None = None,
        top_k: int = 10,
        now: datetime | None = None,
    ) -> list[Result]:
        """The user's memories for `query`, best first, each with its `ScoreBreakdown`.

        Only items owned by `user_id` are searched (never shared documents, never another
        user's). `now` anchors recency and relative dates ("last week"); default: now.
        A user who opted out of memory gets [].
        """
        if not isinstance(query, str) or not query.strip():
            raise EmptyQuery("The query is empty; pass the question as text.")
        _check_id(user_id, "user_id")
        if session_id is not None:
            _check_id(session_id, "session_id")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise InvalidInput(f"top_k must be a positive int, got {top_k!r}.")
        if not self.px.consent(user_id).memory:
            return []
        times = StageTimes()
        t0 = time.perf_counter()
        qvec = self.px.embedder.embed_query(query)
        t0 = times.add("embed_query", t0)
        cfg = self.settings
        hits = self.px.store.hybrid_search(
            query,
            qvec,
            k=max(cfg.candidates, top_k),
            alpha=cfg.alpha,
            where=SearchFilter(user_id=user_id, principals=(f"user:{user_id}",), owned_only=True),
        )
        hits = [h for h in hits if h.chunk.owner == user_id and h.chunk.vector is not None]
        t0 = times.add("hybrid_search", t0)
        results = self._rank(query, hits, user_id, session_id, top_k, now)
        times.add("rescore_mmr", t0)
        self.last_times = times
        return results

    def _rank(
        self,
        query: str,
        hits: Sequence[Any],
        user_id: str,
        session_id: str | None,
        top_k: int,
        now: datetime | None,
    ) -> list[Result]:
        if not hits:
            return []
        cfg = self.settings
        w = cfg.weights
        n = len(hits)
        records = [MemoryRecord.from_chunk(h.chunk) for h in hits]
        matrix = np.stack([np.asarray(h.chunk.vector, dtype=np.float32) for h in hits])
        hybrid = np.array([h.hybrid for h in hits], dtype=np.float64)

        # Neighbours: the adjacent turns of the same session (prev links both ways) and
        # the other chunks of the same turn, among the candidates.
        best: dict[str, float] = {}
        chunks_of: dict[str, list[int]] = {}
        following: dict[str, set[str]] = {}
        for i, r in enumerate(records):
            best[r.doc_id] = max(best.get(r.doc_id, 0.0), float(hybrid[i]))
            chunks_of.setdefault(r.doc_id, []).append(i)
            if r.prev:
                following.setdefault(r.prev, set()).add(r.doc_id)
        neighbour = np.zeros(n)
        for i, r in enumerate(records):
            near = [best.get(r.prev, 0.0)] if r.prev else []
            near += [best[d] for d in following.get(r.doc_id, ())]
            near += [float(hybrid[j]) for j in chunks_of[r.doc_id] if j != i]
            neighbour[i] = max(near, default=0.0)

        # Speaker: when the query names exactly one of the candidates' speakers.
        speakers = {r.speaker for r in records if r.speaker}
        named = [
            s for s in speakers if re.search(rf"(?<!\w){re.escape(s)}(?!\w)", query, re.IGNORECASE)
        ]
        speaker = np.zeros(n)
        speaker_on = len(named) == 1
        if speaker_on:
            who = named[0].lower()
            speaker = np.array([1.0 if (r.speaker or "").lower() == who else 0.0 for r in records])

        # Dates the query names.
        windows = query_date_windows(query, now)
        date_term = np.zeros(n)
        if windows:
            for i, r in enumerate(records):
                if r.timestamp is not None and any(
                    win.matches(r.timestamp.date(), cfg.date_slack_days) for win in windows
                ):
                    date_term[i] = 1.0
        date_on = bool(windows)

        # Recency.
        ref = as_utc(now) if now else utcnow()
        recency = np.zeros(n)
        recency_on = any(r.timestamp is not None for r in records)
        for i, r in enumerate(records):
            if r.timestamp is not None:
                age_days = max(0.0, (ref - r.timestamp).total_seconds() / 86400.0)
                recency[i] = 0.5 ** (age_days / cfg.half_life_days)

        # Session affinity: the session embedding of the current conversation.
        view = self.px.session(user_id, session_id)
        gate = view.gate if view.vector is not None else 0.0
        session = (
            minmax(matrix @ view.vector) if view.vector is not None and gate > 0 else np.zeros(n)
        )

        num = w.hybrid * hybrid + w.neighbour * neighbour + w.session * gate * session
        den = w.hybrid + w.neighbour + w.session * gate
        if speaker_on:
            num, den = num + w.speaker * speaker, den + w.speaker
        if date_on:
            num, den = num + w.date * date_term, den + w.date
        if recency_on:
            num, den = num + w.recency * recency, den + w.recency
        final = num / den if den > 0 else hybrid

        picks = mmr(final, matrix.astype(np.float64), k=top_k, lam=cfg.mmr_lambda)
        results = []
        for rank_no, (i, mmr_value) in enumerate(picks, start=1):
            h = hits[i]
            explain = ScoreBreakdown(
                bm25=h.bm25 or 0.0,
                vector=h.vector_cosine or 0.0,
                hybrid=float(hybrid[i]),
                user=0.0,
                user_negative=0.0,
                user_gate=0.0,
                session=float(session[i]),
                session_gate=float(gate),
                personalized=float(final[i]),
                rerank=None,
                final=float(final[i]),
                mmr=mmr_value,
                found_by=("memory",),
                recency=float(recency[i]),
                priors=(
                    ("neighbour", float(neighbour[i])),
                    ("speaker", float(speaker[i])),
                    ("date", float(date_term[i])),
                ),
            )
            results.append(
                Result(chunk=h.chunk, rank=rank_no, score=float(final[i]), explain=explain)
            )
        return results

    # ------------------------------------------------------------------ packing

    def memory_lines(
        self,
        results: Sequence[Result],
        tokenizer: Tokenizer,
        max_tokens: int,
        *,
        skip_texts: Iterable[str] = (),
    ) -> list[str]:
        """Packed lines for the best memories that fit `max_tokens` (taken in rank order,
        a long one skipped for shorter ones), shown in time order so that the reader sees
        the story as it happened. A date is written on the first line of its day only
        (``[2023-05-08] Caroline: …`` then ``Melanie: …``): the tokens a repeated date
        would take hold more memories. Lines whose turn is in `skip_texts` (the history
        being packed beside them) are left out."""
        fmt = self.settings.date_format
        skip = {" ".join(t.split()) for t in skip_texts}
        spent = tokenizer.count(MEMORY_HEADER)
        chosen: list[tuple[tuple[float, str, int, int], str | None, str]] = []
        seen: set[str] = set()
        days: set[str] = set()
        for r in results:
            rec = MemoryRecord.from_chunk(r.chunk)
            body = " ".join(rec.text.split())
            if body in skip or body in seen:
                continue
            day = rec.timestamp.strftime(fmt) if rec.timestamp is not None else None
            plain = rec.line(None)
            line = plain if day is None or day in days else f"[{day}] {plain}"
            cost = tokenizer.count("\n- " + line)
            if spent + cost > max_tokens:
                continue
            seen.add(body)
            if day is not None:
                days.add(day)
            spent += cost
            chosen.append((rec.sort_key(), day, plain))
        chosen.sort(key=lambda item: item[0])
        lines: list[str] = []
        shown: set[str] = set()
        for _, day, plain in chosen:
            if day is not None and day not in shown:
                shown.add(day)
                lines.append(f"[{day}] {plain}")
            else:
                lines.append(plain)
        return lines

    @pinned_client
    def context(
        self,
        query: str,
        *,
        user_id: str,
        session_id: str | None = None,
        budget: Budget | None = None,
        principals: Sequence[str] = (),
        instructions: str = "",
        documents: bool = True,
        history: Sequence[Turn] | None = None,
        include_history: bool = False,
        top_k: int | None = None,
        now: datetime | None = None,
    ) -> PackedContext:
        """Documents, the user's memories and the session history in one budget.

        Memories come first (``## What I know about the user``, one dated line each),
        then the history (`history`, or the stored session turns with
        `include_history`), then the documents `Pertinent.search` finds (memory items
        excluded, they are already above). `PackedContext.sections` gives the tokens of
        each section; `results` are the document results. Without documents the memory
        section may take all the budget the history leaves.
        """
        px = self.px
        budget = budget or Budget(px.settings.budget_model, px.settings.budget_tokens)
        memories = self.search(
            query,
            user_id=user_id,
            session_id=session_id,
            top_k=self.settings.pack_candidates,
            now=now,
        )
        turns: list[Turn] = list(history) if history is not None else []
        if history is None and include_history and session_id is not None:
            turns = px.history(user_id, session_id)
        doc_results: list[Result] = []
        if documents:
            k = top_k or px.settings.top_k
            found = px.search(
                query,
                user_id=user_id,
                session_id=session_id,
                principals=principals,
                top_k=k + self.settings.pack_candidates,
                now=now,
            )
            doc_results = [r for r in found if not is_memory(r.chunk)][:k]
        return self.pack_context(
            memories, budget, documents=doc_results, history=turns, instructions=instructions
        )

    def pack_context(
        self,
        memories: Sequence[Result],
        budget: Budget,
        *,
        documents: Sequence[Result] = (),
        history: Sequence[Turn] = (),
        instructions: str = "",
    ) -> PackedContext:
        """Pack memory results (from `search`), documents and history into `budget`: the
        second half of `context`, for callers that search once and pack several ways."""
        px = self.px
        tok = tokenizer_for(budget.model)
        share = self.settings.memory_share if documents else 1.0
        history_share = self.settings.history_share if history else 0.0
        share = max(min(share, 1.0 - history_share), 0.0)
        available = budget.max_tokens - (tok.count(instructions.strip()) if instructions else 0)
        cap = math.floor(share * max(available, 0))
        lines = self.memory_lines(
            memories, tok, cap, skip_texts=[f"{t.role}: {t.text}" for t in history]
        )
        return pack(
            documents,
            budget,
            instructions=instructions,
            memories=lines,
            history=history,
            memory_share=share,
            history_share=history_share,
            near_duplicate_cosine=px.settings.near_duplicate_cosine,
            min_partial_tokens=px.settings.min_partial_tokens,
            tokenizer=tok,
        )

    # ------------------------------------------------------------------ privacy

    def forget(self, user_id: str) -> Mapping[str, int]:
        """Forget the user entirely (`Pertinent.forget_user`) and this object's caches."""
        receipt = self.px.forget_user(user_id)
        with self._lock:
            for key in [k for k in self._last if k[0] == user_id]:
                del self._last[key]
        return receipt.deleted
