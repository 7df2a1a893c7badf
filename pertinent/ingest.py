"""What users pass to ``ingest`` → `Document`s → `Chunk`s sized in the embedding model's tokens.

`to_documents` accepts text, dicts, `Document`s and `pathlib.Path`s (files or
directories) and validates everything before anything is written: a bad ACL entry,
metadata that cannot be stored as JSON or an unreadable file raise `InvalidInput`
(or its subclass `DocumentLoadError`) for the whole call.

A plain ``str`` is always *text*, never a path: ``ingest("README.md")`` stores the nine
characters ``README.md``. Pass ``Path("README.md")`` to read the file. Guessing would make
the short strings agents ingest ("Refunds take 5 days") depend on what happens to exist
in the current directory.

`Chunker` cuts a document into chunks no longer than the embedding model reads.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeAlias

# semchunk's package __init__ re-exports `chunk` implicitly, which mypy --strict refuses;
# the function lives in semchunk/semchunk.py in every release since 0.1.
from semchunk.semchunk import chunk as semchunk_chunk

from pertinent.errors import DocumentLoadError, InvalidInput
from pertinent.types import Chunk, Document, check_text

__all__ = [
    "SUPPORTED_SUFFIXES",
    "Chunker",
    "IngestItem",
    "normalize_acl",
    "to_documents",
]

IngestItem: TypeAlias = Document | str | os.PathLike[str] | Mapping[str, Any]
"""One thing `to_documents` accepts: a `Document`, text, a file or directory path, or a dict."""

SUPPORTED_SUFFIXES: tuple[str, ...] = (".markdown", ".md", ".rst", ".txt")
"""File types read from paths (compared case-insensitively). Other formats: extract the
text yourself and pass it as a ``str`` or a dict."""

_MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
_DICT_FIELDS = frozenset({"text", "id", "metadata", "acl", "owner", "source", "title"})
_PRINCIPAL = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*:\S+")
_ACL_HELP = (
    "ACL entries are principals written 'kind:value', such as 'role:support', "
    "'dept:finance' or 'user:alice': a kind (letters, digits, '_', '.', '-'), a colon, "
    "then a value without spaces. An empty acl means everyone may read the document."
)
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_ATX_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*")
_COUNT_CACHE_SIZE = 4096


# --------------------------------------------------------------------------- documents


def to_documents(
    inputs: IngestItem | Iterable[IngestItem],
    *,
    acl: Sequence[str] = (),
    owner: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> list[Document]:
    """Turn what a user passes to ``ingest(...)`` into validated `Document`s.

    `inputs` is one item or an iterable of items:

    * ``str``: text (never a path, see the module docstring). Its id is
      ``"text:" + sha256(text)[:16]``, so ingesting the same string twice is idempotent.
    * ``dict``: ``text`` (required), and optionally ``id``, ``metadata``, ``acl``,
      ``owner``, ``source``, ``title``; any other key goes into the metadata. Without an
      ``id`` the id is derived from the text as for a ``str``.
    * `Document`: kept as it is.
    * ``pathlib.Path`` (any ``os.PathLike``) to a file of a `SUPPORTED_SUFFIXES` type,
      read as UTF-8: the id is the path as given, with forward slashes. To a directory:
      its supported files, recursively and sorted, skipping hidden files and directories;
      each id is the path relative to that directory. The title is the first ``# ``
      heading of a markdown file, else the file stem. Empty files give no document.

    The call-level `acl`, `owner` and `metadata` fill in what an item does not set
    itself: an item's own non-empty acl and its owner win, and its metadata keys
    override the call's. The same item given twice gives one document; two different
    items with the same id raise `InvalidInput`.

    Raises `InvalidInput` for empty text, a dict without ``text``, an ACL entry not
    written ``kind:value``, metadata that is not JSON-serialisable, and
    `DocumentLoadError` for a path that is missing, not UTF-8, of an unsupported type,
    or a directory with no supported file.
    """
    base = _Defaults(
        acl=normalize_acl(acl),
        owner=_check_owner(owner, "owner"),
        metadata=_check_metadata(metadata, "metadata"),
    )
    docs: list[Document] = []
    for n, item in enumerate(_as_items(inputs)):
        docs.extend(_convert(item, n, base))
    return _dedupe(docs)


def normalize_acl(acl: Iterable[str] | str | None) -> tuple[str, ...]:
    """Validate ACL principals and return them stripped, sorted and unique.

    A single string is taken as one principal. Use it on the read side too, so a
    caller's principals are compared in the same form as the stored ones.
    """
    if acl is None:
        return ()
    entries: Iterable[object] = (acl,) if isinstance(acl, str) else acl
    out: set[str] = set()
    for entry in entries:
        if not isinstance(entry, str):
            raise InvalidInput(f"ACL entry {entry!r} is a {type(entry).__name__}. {_ACL_HELP}")
        principal = entry.strip()
        if not _PRINCIPAL.fullmatch(principal):
            raise InvalidInput(f"Invalid ACL entry {entry!r}. {_ACL_HELP}")
        out.add(principal)
    return tuple(sorted(out))


@dataclass(frozen=True)
class _Defaults:
    """The call-level acl, owner and metadata that items without their own inherit."""

    acl: tuple[str, ...]
    owner: str | None
    metadata: dict[str, Any]

    def fill(
        self, acl: tuple[str, ...], owner: str | None, metadata: Mapping[str, Any]
    ) -> tuple[tuple[str, ...], str | None, dict[str, Any]]:
        return (
            acl or self.acl,
            owner if owner is not None else self.owner,
            {**self.metadata, **metadata},
        )


def _as_items(inputs: object) -> list[object]:
    if isinstance(inputs, (Document, str, os.PathLike, Mapping)):
        return [inputs]
    if isinstance(inputs, (bytes, bytearray)):
        raise InvalidInput("ingest got bytes; decode them to str first (data.decode('utf-8')).")
    if isinstance(inputs, Iterable):
        return list(inputs)
    raise InvalidInput(
        f"Cannot ingest a {type(inputs).__name__}. Pass text (str), a dict with 'text', a "
        "Document, a pathlib.Path, or a list of these."
    )


def _convert(item: object, n: int, base: _Defaults) -> list[Document]:
    where = f"ingest input #{n}"
    if isinstance(item, Document):
        return [_from_document(item, where, base)]
    if isinstance(item, str):
        acl, owner, meta = base.fill((), None, {})
        return [
            Document(
                id=_text_id(_check_text(item, where)),
                text=item,
                metadata=meta,
                acl=acl,
                owner=owner,
            )
        ]
    if isinstance(item, Mapping):
        return [_from_dict(item, where, base)]
    if isinstance(item, os.PathLike):
        return _from_path(Path(os.fsdecode(os.fspath(item))), base)
    if isinstance(item, (bytes, bytearray)):
        raise InvalidInput(f"{where} is bytes; decode it to str first (e.g. data.decode('utf-8')).")
    raise InvalidInput(
        f"{where} is a {type(item).__name__}; each item must be text (str), a dict with "
        "'text', a Document or a pathlib.Path. Nested lists are not flattened."
    )


def _from_document(doc: Document, where: str, base: _Defaults) -> Document:
    _check_text(doc.text, f"{where} (Document {doc.id!r})")
    acl, owner, meta = base.fill(
        normalize_acl(doc.acl),
        _check_owner(doc.owner, f"{where}: owner"),
        _check_metadata(doc.metadata, f"{where}: metadata"),
    )
    return replace(doc, acl=acl, owner=owner, metadata=meta)


def _from_dict(item: Mapping[Any, Any], where: str, base: _Defaults) -> Document:
    if "text" not in item:
        keys = ", ".join(repr(k) for k in item) or "none"
        raise InvalidInput(
            f"{where} is a dict without the required key 'text' (its keys: {keys}). "
            "Put the document's content under 'text'."
        )
    text = item["text"]
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: 'text' must be a str, got {type(text).__name__}.")
    _check_text(text, where)
    own_meta = _check_metadata(item.get("metadata"), f"{where}: metadata")
    extra = _check_metadata(
        {k: v for k, v in item.items() if k not in _DICT_FIELDS}, f"{where}: extra key"
    )
    acl, owner, meta = base.fill(
        normalize_acl(item.get("acl")),
        _check_owner(item.get("owner"), f"{where}: owner"),
        {**extra, **own_meta},
    )
    doc_id = item.get("id")
    if doc_id is None:
        doc_id = _text_id(text)
    elif not isinstance(doc_id, str) or not doc_id.strip():
        raise InvalidInput(f"{where}: 'id' must be a non-empty str, got {doc_id!r}.")
    return Document(
        id=doc_id,
        text=text,
        metadata=meta,
        acl=acl,
        owner=owner,
        source=_optional_str(item.get("source"), f"{where}: 'source'"),
        title=_optional_str(item.get("title"), f"{where}: 'title'"),
    )


def _from_path(path: Path, base: _Defaults) -> list[Document]:
    try:
        path.stat()
    except FileNotFoundError:
        pass  # reported below, with the working directory
    except OSError as exc:  # a name too long, permission denied: is_dir() would raise it
        raise DocumentLoadError(
            f"Cannot read {str(path)[:200]!r}: {exc.strerror}. Check the path; to ingest "
            "this string as text, pass a str instead of a Path."
        ) from exc
    if path.is_dir():
        files = _walk(path)
        if not files:
            raise DocumentLoadError(
                f"Directory {str(path)!r} holds no {'/'.join(SUPPORTED_SUFFIXES)} file "
                "(hidden files and directories are skipped). Point to a directory of text "
                "files, or extract other formats yourself and pass the text as a str."
            )
        named = [(f.relative_to(path).as_posix(), f) for f in files]
    elif path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DocumentLoadError(
                f"Cannot ingest {str(path)!r}: {path.suffix or 'no extension'!r} is not a "
                f"supported file type ({', '.join(SUPPORTED_SUFFIXES)}). Extract its text "
                "yourself and pass it as a str or {'text': ..., 'source': ...}."
            )
        named = [(path.as_posix(), path)]
    elif not path.exists():
        raise DocumentLoadError(
            f"No such file or directory: {str(path)!r} (relative paths are read from "
            f"{os.getcwd()!r}). Check the path; to ingest this string as text, pass a str "
            "instead of a Path."
        )
    else:
        raise DocumentLoadError(f"{str(path)!r} is neither a regular file nor a directory.")

    docs = []
    for doc_id, file in named:
        text = _read_text(file)
        if not text.strip():
            continue
        acl, owner, meta = base.fill((), None, {})
        title = _markdown_title(text) if file.suffix.lower() in _MARKDOWN_SUFFIXES else None
        docs.append(
            Document(
                id=doc_id,
                text=text,
                metadata=meta,
                acl=acl,
                owner=owner,
                source=str(file),
                title=title or file.stem,
            )
        )
    return docs


def _walk(root: Path) -> list[Path]:
    def fail(exc: OSError) -> None:
        raise DocumentLoadError(
            f"Cannot list {exc.filename!r} while reading directory {str(root)!r}: "
            f"{exc.strerror or exc}. Fix its permissions or move it out of the directory."
        ) from exc

    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath) / name
            for name in filenames
            if not name.startswith(".") and Path(name).suffix.lower() in SUPPORTED_SUFFIXES
        )
    return sorted(found, key=lambda f: f.relative_to(root).as_posix())


def _read_text(file: Path) -> str:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DocumentLoadError(
            f"Cannot read {str(file)!r}: {exc.strerror or exc}. Check that it exists and "
            "is readable."
        ) from exc
    try:
        text = data.decode("utf-8-sig", errors="strict")
    except UnicodeDecodeError as exc:
        raise DocumentLoadError(
            f"{str(file)!r} is not UTF-8 text (undecodable byte "
            f"{data[exc.start : exc.start + 1]!r} at offset {exc.start}). Convert it to UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8), or decode it yourself and pass the text as a str."
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _dedupe(docs: list[Document]) -> list[Document]:
    seen: dict[str, Document] = {}
    for doc in docs:
        previous = seen.setdefault(doc.id, doc)
        if previous != doc:
            raise InvalidInput(
                f"Two ingest inputs have the id {doc.id!r} but differ (text, metadata, acl, "
                "owner, source or title). Give each its own 'id' (dict) or Document.id."
            )
    return list(seen.values())


def _text_id(text: str) -> str:
    return "text:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_text(text: str, where: str) -> str:
    if not text.strip():
        raise InvalidInput(f"{where} has empty text; there is nothing to index.")
    return check_text(text, where)


def _check_owner(owner: object, where: str) -> str | None:
    if owner is None:
        return None
    if not isinstance(owner, str) or not owner.strip():
        raise InvalidInput(f"{where} must be a non-empty str (a user id) or None, got {owner!r}.")
    return owner.strip()


def _optional_str(value: object, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput(f"{where} must be a str or None, got {type(value).__name__}.")


def _check_metadata(metadata: object, where: str) -> dict[str, Any]:
    """Metadata is stored as JSON: every key a str, every value JSON-serialisable."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput(f"{where} must be a dict, got {type(metadata).__name__}.")
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise InvalidInput(f"{where}: key {key!r} must be a str; metadata is stored as JSON.")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"{where}: the value of {key!r} ({type(value).__name__}) cannot be stored as "
                f"JSON ({exc}). Convert it first, e.g. a datetime to an ISO string, a set to "
                "a list, NaN to None."
            ) from exc
        out[key] = value
    return out


# --------------------------------------------------------------------------- markdown


def _markdown_headings(text: str) -> list[tuple[int, int, str]]:
    """ATX headings (``# Title`` … ``###### Title``) outside fenced code, as
    (offset of the line, level, text). Setext (underlined) headings are not detected."""
    headings: list[tuple[int, int, str]] = []
    fence: str | None = None
    offset = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        fenced = _FENCE.fullmatch(body)
        if fence is not None:
            if (
                fenced
                and fenced.group(1)[0] == fence[0]
                and len(fenced.group(1)) >= len(fence)
                and not fenced.group(2).strip()
            ):
                fence = None
        elif fenced:
            fence = fenced.group(1)
        else:
            heading = _ATX_HEADING.fullmatch(body)
            if heading and heading.group(2).strip():
                headings.append((offset, len(heading.group(1)), heading.group(2).strip()))
        offset += len(line)
    return headings


def _markdown_title(text: str) -> str | None:
    return next((title for _, level, title in _markdown_headings(text) if level == 1), None)


def _is_markdown(doc: Document) -> bool:
    if doc.source and Path(doc.source).suffix.lower() in _MARKDOWN_SUFFIXES:
        return True
    return doc.metadata.get("format") == "markdown"


# --------------------------------------------------------------------------- chunking


class Chunker:
    """Split documents into chunks of at most `chunk_tokens` tokens, counted by `count_tokens`.

    Pass the embedding model's own counter (`Embedder.count_tokens`) and a `chunk_tokens`
    no larger than what the model reads (its `max_tokens` minus the 2 special tokens it
    adds), so no chunk is silently cut when embedded. `overlap` is the share of
    `chunk_tokens` that consecutive chunks repeat (0 for none), so a sentence at a cut is
    whole in at least one of them.

    The splitting is delegated to `semchunk` rather than written here: it is maintained,
    small and tested; it takes any token counter (WordPiece, BPE, tiktoken), so chunks
    are sized in the tokens of whatever model embeds them; and it cuts at the most
    meaningful boundary that fits (blank lines, then line breaks, sentence ends, clauses,
    words, and characters only as a last resort) and reports character offsets, which
    map each chunk back to its markdown section.

    semchunk builds overlapping chunks by joining smaller pieces without counting the
    joined text again, so with a tokenizer whose counts are not additive a chunk can come
    out over the limit. Every chunk is therefore re-counted here, and one that is too long
    is split again; `count_tokens(chunk.text) <= chunk_tokens` holds for every chunk.

    For a markdown document (a ``.md``/``.markdown`` source, or ``metadata["format"] ==
    "markdown"``) each chunk's ``metadata["section"]`` is the text of the nearest heading
    at or before the chunk's start, when there is one; the text itself is not prefixed.
    """

    def __init__(
        self,
        count_tokens: Callable[[str], int],
        chunk_tokens: int = 200,
        overlap: float = 0.1,
    ) -> None:
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise InvalidInput(f"chunk_tokens must be a positive int, got {chunk_tokens!r}.")
        if not isinstance(overlap, (int, float)) or not (
            math.isfinite(overlap) and 0 <= overlap < 1
        ):
            raise InvalidInput(
                f"overlap is the share of chunk_tokens repeated between chunks, in [0, 1); "
                f"got {overlap!r}."
            )
        self.count_tokens = count_tokens
        self.chunk_tokens = chunk_tokens
        self.overlap = float(overlap)
        # semchunk counts many overlapping slices; its own memoization is a process-wide,
        # unbounded cache keyed by the counter, so we keep a bounded one per Chunker.
        self._count: Callable[[str], int] = functools.lru_cache(maxsize=_COUNT_CACHE_SIZE)(
            count_tokens
        )

    def split(self, doc: Document) -> list[Chunk]:
        """The chunks of `doc`, in order, ids ``f"{doc.id}#{i}"``; [] if it is only white space.

        Each chunk carries the document's metadata (plus ``section`` for markdown), acl,
        owner, source and title.
        """
        spans = self._spans(doc.text)
        headings = _markdown_headings(doc.text) if spans and _is_markdown(doc) else []
        starts = [offset for offset, _, _ in headings]
        chunks = []
        for i, (start, end) in enumerate(spans):
            metadata = dict(doc.metadata)
            at = bisect_right(starts, start) - 1
            if at >= 0:
                metadata["section"] = headings[at][2]
            chunks.append(
                Chunk(
                    id=f"{doc.id}#{i}",
                    doc_id=doc.id,
                    text=doc.text[start:end],
                    position=i,
                    metadata=metadata,
                    acl=doc.acl,
                    owner=doc.owner,
                    source=doc.source,
                    title=doc.title,
                )
            )
        return chunks

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the chunks, trimmed of white space, each within the limit."""
        if not text.strip():
            return []
        whole = _trim(text, 0, len(text))
        if self._count(text[whole[0] : whole[1]]) <= self.chunk_tokens:
            # A text that fits is one chunk. semchunk with overlap still cuts it into
            # overlapping windows (31 of 256 one-paragraph documents came out as two
            # chunks repeating each other), and counts ~18 slices to do so.
            return [whole]
        pieces = [
            span
            for start, end in self._semchunk(text, self.overlap)
            for span in self._fit(text, start, end, resplit=True)
        ]
        # Re-split overlapping chunks can interleave or repeat: keep them in text order and
        # drop any piece inside the one before it (it adds no text).
        spans: list[tuple[int, int]] = []
        for start, end in sorted(pieces, key=lambda span: (span[0], -span[1])):
            if not spans or end > spans[-1][1]:
                spans.append((start, end))
        return spans

    def _semchunk(self, text: str, overlap: float) -> list[tuple[int, int]]:
        try:
            result = semchunk_chunk(
                text,
                chunk_size=self.chunk_tokens,
                token_counter=self._count,
                memoize=False,
                offsets=True,
                overlap=overlap or None,
            )
        except RecursionError:
            # semchunk recurses without end when one character counts more tokens than a
            # piece may hold (tiny chunk_tokens with overlap); `_fit` then cuts by hand.
            return self._semchunk(text, 0.0) if overlap else [(0, len(text))]
        if not isinstance(result, tuple):  # pragma: no cover - offsets=True returns a pair
            raise TypeError("semchunk.chunk(offsets=True) did not return offsets")
        return [(int(start), int(end)) for start, end in result[1]]

    def _fit(self, text: str, start: int, end: int, *, resplit: bool) -> list[tuple[int, int]]:
        start, end = _trim(text, start, end)
        if start >= end:
            return []
        if self._count(text[start:end]) <= self.chunk_tokens:
            return [(start, end)]
        if resplit:
            piece = text[start:end]
            return [
                span
                for s, e in self._semchunk(piece, 0.0)
                for span in self._fit(text, start + s, start + e, resplit=False)
            ]
        return self._cut(text, start, end)

    def _cut(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        """Last resort: the longest prefixes that fit, preferring to cut at white space.

        Each candidate is counted as it will be stored (trailing white space removed), so
        the limit holds for any counter, additive or not.
        """
        spans: list[tuple[int, int]] = []
        start, end = _trim(text, start, end)
        while start < end:
            if self._fits(text, start, end):
                spans.append(_trim(text, start, end))
                break
            if not self._fits(text, start, start + 1):
                raise InvalidInput(
                    f"The character {text[start]!r} alone counts more than chunk_tokens="
                    f"{self.chunk_tokens} tokens; raise chunk_tokens."
                )
            fits, too_long = start + 1, end
            while too_long - fits > 1:
                middle = (fits + too_long) // 2
                if self._fits(text, start, middle):
                    fits = middle
                else:
                    too_long = middle
            space = max(text.rfind(" ", start + 1, fits), text.rfind("\n", start + 1, fits))
            if space > start and self._fits(text, start, space):
                fits = space
            spans.append(_trim(text, start, fits))
            start, end = _trim(text, fits, end)
        return spans

    def _fits(self, text: str, start: int, end: int) -> bool:
        start, end = _trim(text, start, end)
        return self._count(text[start:end]) <= self.chunk_tokens


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
