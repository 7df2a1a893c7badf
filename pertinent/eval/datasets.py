"""Loaders for the three evaluation formats, each turning files into one `EvalSet`.

The protocols (item text, splits, relevance) are fixed by the data's README and
written down in docs/evaluation.md; every rule lives here, in one place, so the
runner is the same for all three and a result can only differ because the data does.
The data path is always an argument: the same loader reads another split of the same
format. Nothing is cached or copied.

A file that is missing or does not have the expected shape raises `DatasetError`
(a `DocumentLoadError`, hence a `PertinentError`) naming the file and what to fix.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pertinent.errors import DocumentLoadError

__all__ = [
    "DatasetError",
    "EvalItem",
    "EvalQuery",
    "EvalSet",
    "HistoryEvent",
    "cleverdon_gain",
    "load_cranfield",
    "load_locomo",
    "load_movielens",
    "normalize_evidence",
]


class DatasetError(DocumentLoadError):
    """An evaluation file is missing or not in the format its protocol expects."""


@dataclass(frozen=True)
class EvalItem:
    """One retrievable item: ingested as one document whose id is `id`."""

    id: str
    text: str
    owner: str | None = None
    title: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HistoryEvent:
    """A user's past interaction, replayed into `Pertinent.record` before the queries."""

    item_id: str
    kind: str
    timestamp: datetime


@dataclass(frozen=True)
class EvalQuery:
    """One query with its judgements.

    `gains` maps item ids to graded gains for nDCG; `relevant` are the ids that count
    for recall and MRR (may be empty: such a query is left out of those metrics).
    `user_id` is who asks (its history personalizes), `owner` restricts every method to
    that owner's items (LoCoMo: one conversation), `exclude` are item ids that can
    neither be retrieved nor count (MovieLens: the user's history), `now` is the time
    the profile is decayed to.
    """

    id: str
    text: str
    gains: Mapping[str, float]
    relevant: frozenset[str]
    category: str | None = None
    user_id: str | None = None
    owner: str | None = None
    exclude: tuple[str, ...] = ()
    now: datetime | None = None


@dataclass(frozen=True)
class EvalSet:
    """Everything one protocol run needs: items, queries, and users' histories."""

    name: str
    items: tuple[EvalItem, ...]
    queries: tuple[EvalQuery, ...]
    histories: Mapping[str, tuple[HistoryEvent, ...]] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)

    def subset(self, max_queries: int | None) -> EvalSet:
        """The first `max_queries` queries, the same items, the histories they need."""
        if max_queries is None or max_queries >= len(self.queries):
            return self
        queries = self.queries[:max_queries]
        users = {q.user_id for q in queries}
        return EvalSet(
            name=self.name,
            items=self.items,
            queries=queries,
            histories={u: h for u, h in self.histories.items() if u in users},
            counts={**self.counts, "queries": len(queries)},
        )


# --------------------------------------------------------------------------- helpers


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what}: {path} does not exist or is not a file. {_DATA_HINT}")
    return path


_DATA_HINT = "Pass --data pointing at the data set (see docs/evaluation.md for the layout)."


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{n} is not valid JSON ({exc.msg}).") from exc
                if not isinstance(row, dict):
                    raise DatasetError(f"{path}:{n} must be a JSON object, got {type(row)}.")
                yield n, row
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text.") from exc


def _read_csv(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(
                    f"{path} lacks the column(s) {', '.join(missing)}; its header is "
                    f"{reader.fieldnames}. Expected at least: {', '.join(columns)}."
                )
            yield from enumerate(reader, start=2)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text.") from exc


def _field(row: Mapping[str, Any], key: str, where: str) -> Any:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DatasetError(f"{where}: the field {key!r} is missing or empty.")
    return value


def _int(value: str, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: {value!r} is not an integer.") from exc


def _float(value: str, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: {value!r} is not a number.") from exc
    if not math.isfinite(out):
        raise DatasetError(f"{where}: {value!r} is not a finite number.")
    return out


# --------------------------------------------------------------------------- Cranfield


def cleverdon_gain(code: int) -> float:
    """Linear gain from a Cleverdon relevance code: 1 → 4, 2 → 3, 3 → 2, 4 → 1, else 0."""
    return float(5 - code) if 1 <= code <= 4 else 0.0


def load_cranfield(directory: str | Path) -> EvalSet:
    """`corpus.jsonl` (id, title, text), `queries.jsonl` (id, text), `qrels.tsv`
    (query_id, doc_id, cleverdon_code, with a header line).

    Item text is `title + " " + text`. Codes 1–3 are relevant for recall and MRR.
    Judgements naming an unknown query or document are an error: they would silently
    change the metric's denominator.
    """
    root = Path(directory)
    corpus = _require(root / "corpus.jsonl", "Cranfield corpus")
    queries_path = _require(root / "queries.jsonl", "Cranfield queries")
    qrels_path = _require(root / "qrels.tsv", "Cranfield judgements")

    items: list[EvalItem] = []
    seen: set[str] = set()
    for n, row in _read_jsonl(corpus):
        where = f"{corpus}:{n}"
        doc_id = str(_field(row, "id", where))
        if doc_id in seen:
            raise DatasetError(f"{where}: document id {doc_id!r} appears twice.")
        seen.add(doc_id)
        title = str(row.get("title") or "").strip()
        text = str(row.get("text") or "").strip()
        body = f"{title} {text}".strip()
        if not body:
            raise DatasetError(f"{where}: document {doc_id!r} has neither title nor text.")
        items.append(EvalItem(id=doc_id, text=body, title=title or None))

    texts: dict[str, str] = {}
    for n, row in _read_jsonl(queries_path):
        where = f"{queries_path}:{n}"
        texts[str(_field(row, "id", where))] = str(_field(row, "text", where)).strip()

    gains: dict[str, dict[str, float]] = defaultdict(dict)
    relevant: dict[str, set[str]] = defaultdict(set)
    try:
        lines = qrels_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{qrels_path} is not UTF-8 text.") from exc
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{qrels_path}:{n}"
        if n == 1 and not parts[0].lstrip("-").isdigit():
            continue  # header
        if len(parts) < 3:
            raise DatasetError(f"{where}: expected 'query_id doc_id code', got {line!r}.")
        qid, doc_id, code = parts[0], parts[1], _int(parts[2], where)
        if qid not in texts:
            continue  # judgements of held-out queries
        if doc_id not in seen:
            raise DatasetError(f"{where}: document {doc_id!r} is not in {corpus.name}.")
        gains[qid][doc_id] = max(gains[qid].get(doc_id, 0.0), cleverdon_gain(code))
        if 1 <= code <= 3:
            relevant[qid].add(doc_id)

    queries = tuple(
        EvalQuery(
            id=qid,
            text=text,
            gains={d: g for d, g in gains[qid].items() if g > 0},
            relevant=frozenset(relevant[qid]),
        )
        for qid, text in texts.items()
    )
    return EvalSet(
        name="cranfield",
        items=tuple(items),
        queries=queries,
        counts={
            "documents": len(items),
            "queries": len(queries),
            "queries_with_relevant": sum(1 for q in queries if q.relevant),
            "judgements": sum(len(g) for g in gains.values()),
        },
    )


# --------------------------------------------------------------------------- LoCoMo

_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")
_SESSION = re.compile(r"session_(\d+)")


def normalize_evidence(raw: Any) -> list[str]:
    """Evidence ids as `D<int>:<int>`: split on ';' and white space, fix the known typos
    (``'D:11:26'`` → ``D11:26``, ``'D30:05'`` → ``D30:5``), drop what cannot be parsed."""
    values = raw if isinstance(raw, list) else [raw]
    out: list[str] = []
    for value in values:
        if not isinstance(value, str):
            continue
        for token in re.split(r"[;\s]+", value):
            m = _EVIDENCE.fullmatch(token.strip())
            if m:
                ident = f"D{int(m.group(1))}:{int(m.group(2))}"
                if ident not in out:
                    out.append(ident)
    return out


def _parse_locomo_time(value: str) -> datetime | None:
    """'1:56 pm on 8 May, 2023' → an aware UTC datetime (the data has no zone)."""
    for fmt in ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y"):
        try:
            return datetime.strptime(value.strip(), fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def load_locomo(path: str | Path, *, categories: Sequence[int] = (1, 2, 3, 4)) -> EvalSet:
    """A LoCoMo JSON file (a list of samples with `conversation` and `qa`).

    Every turn is an item owned by its conversation (`owner` = the sample id), text
    ``"{speaker}: {text}"`` plus ``" [image: {blip_caption}]"``, titled with its
    session's `date_time` (which packing shows), with the parsed time in its metadata.
    Item ids are ``"{sample_id}/{dia_id}"``. Questions of `categories` with at least one
    evidence id that names a turn of their conversation are kept.
    """
    file = _require(Path(path), "LoCoMo file")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{file} is not a UTF-8 JSON file: {exc}.") from exc
    if not isinstance(data, list):
        raise DatasetError(f"{file} must hold a JSON list of conversations (locomo10.json shape).")

    items: list[EvalItem] = []
    queries: list[EvalQuery] = []
    skipped_category = skipped_evidence = 0
    for n, sample in enumerate(data):
        where = f"{file}: conversation #{n}"
        if not isinstance(sample, dict):
            raise DatasetError(f"{where} is not an object.")
        owner = str(_field(sample, "sample_id", where))
        conv = _field(sample, "conversation", where)
        if not isinstance(conv, dict):
            raise DatasetError(f"{where}: 'conversation' must be an object.")
        turn_ids: set[str] = set()
        sessions = sorted(
            (int(m.group(1)), key)
            for key in conv
            if (m := _SESSION.fullmatch(key)) and isinstance(conv[key], list)
        )
        for number, key in sessions:
            date_time = str(conv.get(f"session_{number}_date_time") or "").strip()
            when = _parse_locomo_time(date_time) if date_time else None
            for turn in conv[key]:
                twhere = f"{where}, {key}"
                dia_id = str(_field(turn, "dia_id", twhere))
                text = f"{_field(turn, 'speaker', twhere)}: {turn.get('text') or ''}".strip()
                if turn.get("blip_caption"):
                    text += f" [image: {turn['blip_caption']}]"
                ident = normalize_evidence(dia_id)
                key_id = ident[0] if ident else dia_id
                if key_id in turn_ids:
                    raise DatasetError(f"{twhere}: turn id {dia_id!r} appears twice.")
                turn_ids.add(key_id)
                metadata: dict[str, Any] = {"session": number, "date_time": date_time}
                if when is not None:
                    metadata["timestamp"] = when.isoformat()
                items.append(
                    EvalItem(
                        id=f"{owner}/{key_id}",
                        text=text,
                        owner=owner,
                        title=date_time or None,
                        metadata=metadata,
                    )
                )
        for k, qa in enumerate(sample.get("qa") or []):
            category = qa.get("category")
            if category not in categories:
                skipped_category += 1
                continue
            evidence = [e for e in normalize_evidence(qa.get("evidence") or []) if e in turn_ids]
            if not evidence:
                skipped_evidence += 1
                continue
            ids = frozenset(f"{owner}/{e}" for e in evidence)
            queries.append(
                EvalQuery(
                    id=f"{owner}/q{k}",
                    text=str(_field(qa, "question", f"{where}, question #{k}")).strip(),
                    gains=dict.fromkeys(sorted(ids), 1.0),
                    relevant=ids,
                    category=str(category),
                    user_id=owner,
                    owner=owner,
                )
            )
    return EvalSet(
        name="locomo",
        items=tuple(items),
        queries=tuple(queries),
        counts={
            "conversations": len(data),
            "turns": len(items),
            "questions": len(queries),
            "skipped_category": skipped_category,
            "skipped_no_evidence": skipped_evidence,
        },
    )


# --------------------------------------------------------------------------- MovieLens

MIN_RATINGS = 40
HISTORY_SHARE = 0.8


@dataclass(frozen=True)
class _Rating:
    movie: str
    rating: float
    ts: int


def movie_item_id(movie_id: str) -> str:
    return f"movie:{movie_id}"


def load_movielens(directory: str | Path, *, min_ratings: int = MIN_RATINGS) -> EvalSet:
    """`movies.csv`, `ratings.csv`, `tags.csv` of a MovieLens ml-latest(-small) split.

    Users with at least `min_ratings` ratings; each user's ratings sorted by time
    (stable) split into the first floor(0.8·n) (history) and the rest (test). History
    ratings ≥ 4 become `like` events, ≤ 2 `dislike` events. One query per genre that
    appears in at least 2 of the user's test movies rated ≥ 4: ``"{genre} movies"``,
    relevant = those movies; the user's history items are excluded from ranking.
    """
    root = Path(directory)
    movies_path = _require(root / "movies.csv", "MovieLens movies")
    ratings_path = _require(root / "ratings.csv", "MovieLens ratings")
    tags_path = _require(root / "tags.csv", "MovieLens tags")

    titles: dict[str, str] = {}
    genres: dict[str, list[str]] = {}
    for n, row in _read_csv(movies_path, ("movieId", "title", "genres")):
        where = f"{movies_path}:{n}"
        movie = str(_field(row, "movieId", where)).strip()
        titles[movie] = str(row.get("title") or "").strip()
        genres[movie] = [g for g in (row.get("genres") or "").split("|") if g]

    by_user: dict[str, list[_Rating]] = defaultdict(list)
    for n, row in _read_csv(ratings_path, ("userId", "movieId", "rating", "timestamp")):
        where = f"{ratings_path}:{n}"
        movie = str(row["movieId"]).strip()
        if movie not in titles:
            raise DatasetError(f"{where}: movie {movie!r} is not in {movies_path.name}.")
        by_user[str(row["userId"]).strip()].append(
            _Rating(movie, _float(row["rating"], where), _int(row["timestamp"], where))
        )

    split: dict[str, tuple[list[_Rating], list[_Rating]]] = {}
    for user, ratings in by_user.items():
        if len(ratings) < min_ratings:
            continue
        ordered = sorted(ratings, key=lambda r: r.ts)  # sorted() is stable: file order on ties
        cut = math.floor(HISTORY_SHARE * len(ordered))
        split[user] = (ordered[:cut], ordered[cut:])
    history_end = {u: h[-1].ts for u, (h, _) in split.items() if h}

    tags: dict[str, set[str]] = defaultdict(set)
    for n, row in _read_csv(tags_path, ("userId", "movieId", "tag", "timestamp")):
        where = f"{tags_path}:{n}"
        tagger, movie = str(row["userId"]).strip(), str(row["movieId"]).strip()
        tag = (row.get("tag") or "").strip().lower()
        if not tag or movie not in titles:
            continue
        end = history_end.get(tagger)
        if end is None or _int(row["timestamp"], where) <= end:
            tags[movie].add(tag)

    items = []
    for movie, title in titles.items():
        text = f"{title}. Genres: {', '.join(genres[movie])}."
        if tags[movie]:
            text += f" Tags: {', '.join(sorted(tags[movie]))}."
        items.append(EvalItem(id=movie_item_id(movie), text=text, title=title or None))

    histories: dict[str, tuple[HistoryEvent, ...]] = {}
    queries: list[EvalQuery] = []
    for user in sorted(split, key=_numeric_first):
        history, test = split[user]
        events = tuple(
            HistoryEvent(
                item_id=movie_item_id(r.movie),
                kind="like" if r.rating >= 4 else "dislike",
                timestamp=datetime.fromtimestamp(r.ts, tz=timezone.utc),
            )
            for r in history
            if r.rating >= 4 or r.rating <= 2
        )
        seen = tuple(movie_item_id(r.movie) for r in history)
        now = datetime.fromtimestamp(history[-1].ts, tz=timezone.utc) if history else None
        liked: dict[str, list[str]] = defaultdict(list)
        for r in test:
            if r.rating >= 4:
                for g in genres[r.movie]:
                    if g != "(no genres listed)":
                        liked[g].append(movie_item_id(r.movie))
        user_queries = [
            EvalQuery(
                id=f"{user}/{genre}",
                text=f"{genre} movies",
                gains=dict.fromkeys(ids, 1.0),
                relevant=frozenset(ids),
                category=genre,
                user_id=f"user-{user}",
                exclude=seen,
                now=now,
            )
            for genre, ids in sorted(liked.items())
            if len(set(ids)) >= 2
        ]
        if user_queries:
            histories[f"user-{user}"] = events
            queries.extend(user_queries)
    return EvalSet(
        name="movielens",
        items=tuple(items),
        queries=tuple(queries),
        histories=histories,
        counts={
            "movies": len(items),
            "users": len(split),
            "users_with_queries": len(histories),
            "pairs": len(queries),
            "history_events": sum(len(h) for h in histories.values()),
            "movies_with_tags": sum(1 for t in tags.values() if t),
        },
    )


def _numeric_first(value: str) -> tuple[int, str]:
    return (int(value), value) if value.isdigit() else (1 << 62, value)
