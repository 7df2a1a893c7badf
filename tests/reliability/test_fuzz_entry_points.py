"""Bad-input fuzzing of every public entry point: only `PertinentError` subclasses may
escape, and the store is intact afterwards. (A long run lives outside CI:
`HYPOTHESIS_PROFILE=long FUZZ_EXAMPLES=3000 python -m pytest
tests/reliability/test_fuzz_entry_points.py`; docs/reliability.md has the last result.)"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pertinent
from pertinent import Budget, Event
from pertinent.cli import main as cli_main
from pertinent.prompts.packing import pack

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LONG_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20000"))
settings.register_profile(
    "long",
    max_examples=LONG_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

weird_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(whitelist_categories=("Cc", "Cs", "Zs", "Co")), max_size=50),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "<|endoftext|>",
            "'; DROP TABLE chunks; --",
            "x" * 5000,
            "\u202e\u200b",
            "🙂" * 300,
            "word " * 1000,
        ]
    ),
)
weird_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(-0.0))
weird_id = st.one_of(weird_text, st.none(), st.integers(), st.just(["a"]))


def _intact(px: pertinent.Pertinent) -> None:
    assert px.store.count_chunks() >= len(CORPUS)
    assert px.search("rotate api keys", top_k=3)[0].chunk.doc_id == "keys"


def _only_pertinent_errors(fn: Any, *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(pertinent.PertinentError):
        fn(*args, **kwargs)


@settings(settings.get_profile(PROFILE))
@given(
    query=weird_text,
    user=weird_id,
    session=weird_id,
    top_k=st.one_of(st.integers(-3, 50), st.none()),
    principals=st.lists(weird_text, max_size=3),
    max_tokens=st.integers(-5, 3000),
    model=st.sampled_from(["gpt-4o", "gpt-4", "claude-x", ""]),
)
def test_retrieve_and_search(
    loaded: pertinent.Pertinent,
    query: str,
    user: Any,
    session: Any,
    top_k: int | None,
    principals: list[str],
    max_tokens: int,
    model: str,
) -> None:
    def call() -> None:
        budget = Budget(model=model, max_tokens=max_tokens)
        ctx = loaded.retrieve(
            query,
            user_id=user,
            session_id=session,
            top_k=top_k,
            principals=principals,
            budget=budget,
        )
        assert ctx.token_count <= budget.max_tokens

    _only_pertinent_errors(call)
    _only_pertinent_errors(loaded.search, query, user_id=user, session_id=session, top_k=top_k)
    _intact(loaded)


@settings(settings.get_profile(PROFILE))
@given(
    kind=weird_text | st.sampled_from(["open", "reject", "query"]),
    item=weird_id,
    text=st.one_of(weird_text, st.none()),
    weight=st.one_of(weird_float, st.none()),
    user=weird_id,
)
def test_record(
    loaded: pertinent.Pertinent, kind: str, item: Any, text: Any, weight: Any, user: Any
) -> None:
    def call() -> None:
        loaded.record(user, Event(kind=kind, item_id=item, text=text, weight=weight))

    _only_pertinent_errors(call)
    _only_pertinent_errors(loaded.record, "fuzz-user", [])
    profile = loaded.profile("fuzz-user")
    assert math.isfinite(profile.gate)
    _intact(loaded)


@settings(settings.get_profile(PROFILE))
@given(
    docs=st.one_of(
        weird_text,
        st.lists(
            st.one_of(
                weird_text, st.dictionaries(weird_text, weird_text | weird_float, max_size=4)
            ),
            max_size=4,
        ),
        st.dictionaries(
            st.sampled_from(["id", "text", "acl", "owner", "metadata", "title"]),
            weird_id | weird_float,
            max_size=6,
        ),
        st.just(Path("/nonexistent/path.md")),
        st.none(),
        st.integers(),
    ),
    acl=st.one_of(st.lists(weird_text, max_size=3), weird_text),
    owner=weird_id,
)
def test_ingest(loaded: pertinent.Pertinent, docs: Any, acl: Any, owner: Any) -> None:
    _only_pertinent_errors(loaded.ingest, docs, acl=acl, owner=owner, show_progress=False)
    _intact(loaded)


@settings(settings.get_profile(PROFILE))
@given(user=weird_id, vec=st.lists(weird_float, min_size=0, max_size=400))
def test_forget_and_personalize(loaded: pertinent.Pertinent, user: Any, vec: list[float]) -> None:
    _only_pertinent_errors(loaded.forget_user, user)
    item = pertinent.Chunk(
        id="x",
        doc_id="x",
        text="some text",
        position=0,
        vector=np.asarray(vec, dtype=np.float32) if vec else None,
    )
    _only_pertinent_errors(loaded.personalize, "question", [item], user_id="p")
    _intact(loaded)


@settings(settings.get_profile(PROFILE))
@given(
    texts=st.lists(weird_text, max_size=6),
    max_tokens=st.integers(1, 400),
    instructions=weird_text,
    memories=st.lists(weird_text, max_size=3),
)
def test_pack(
    loaded: pertinent.Pertinent,
    texts: list[str],
    max_tokens: int,
    instructions: str,
    memories: list[str],
) -> None:
    results = loaded.search("keys", top_k=3)
    extra = [
        pertinent.Result(
            chunk=pertinent.Chunk(id=f"f{i}", doc_id="f", text=t, position=i),
            rank=10 + i,
            score=0.0,
            explain=results[0].explain,
        )
        for i, t in enumerate(texts)
    ]
    budget = Budget("gpt-4o", max_tokens)
    try:
        out = pack([*results, *extra], budget, instructions=instructions, memories=memories)
    except pertinent.PertinentError:
        return
    assert out.token_count <= max_tokens


@settings(settings.get_profile(PROFILE), max_examples=15 if PROFILE == "ci" else LONG_EXAMPLES)
@given(
    argv=st.lists(
        st.one_of(
            weird_text,
            st.sampled_from(
                [
                    "ask",
                    "forget",
                    "ingest",
                    "retention",
                    "apply",
                    "--user",
                    "--max-tokens",
                    "-5",
                    "--now",
                    "--events-days",
                    "nan",
                    "--top",
                    "--principal",
                    "--backend",
                    "lancedb",
                ]
            ),
        ),
        max_size=6,
    )
)
def test_cli_arguments(tmp_path_factory: Any, argv: list[str]) -> None:
    data = str(tmp_path_factory.mktemp("cli"))
    try:
        code = cli_main(
            [*argv, "--data", data] if argv and argv[0] in ("ask", "forget", "ingest") else argv
        )
    except SystemExit as exc:  # argparse's usage errors exit 2 with a message
        assert exc.code in (0, 2)
        return
    assert code in (0, 2)


def test_a_path_too_long_for_the_file_system_is_a_document_load_error(
    loaded: pertinent.Pertinent, capsys: Any
) -> None:
    """Found by the long fuzzing run (docs/reliability.md): `Path.is_dir()` and
    `Path.exists()` raise OSError(ENAMETOOLONG) instead of answering False."""
    with pytest.raises(pertinent.DocumentLoadError, match="File name too long"):
        loaded.ingest(Path("x" * 5000), show_progress=False)
    assert cli_main(["ingest", "y" * 5000, "--data", str(Path(loaded.settings.path))]) == 2
    err = capsys.readouterr().err
    assert "DocumentLoadError" in err and "File name too long" in err
    _intact(loaded)
