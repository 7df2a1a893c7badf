"""Token counting with the tokenizer of the model that will read the context.

A budget is only a promise if it is counted the way the reader counts: OpenAI models
through tiktoken, open models through their own ``tokenizer.json``, and models without a
public tokenizer through a stated, conservative estimate. Everything here works offline:
tiktoken's encodings are read from the copy that llama-index-core ships.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pertinent.errors import TokenizerUnavailable

__all__ = [
    "CachedTokenizer",
    "EstimateTokenizer",
    "HFTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "tokenizer_for",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What packing needs from a tokenizer: a name to report, a count, and a cut."""

    @property
    def name(self) -> str:
        """Which tokenizer this is (e.g. ``"tiktoken:o200k_base"``), for reports and logs."""
        ...

    def count(self, text: str) -> int:
        """Tokens the model spends on `text` as plain text (no special tokens added)."""
        ...

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text`, cut at a token boundary, that counts <= `max_tokens`."""
        ...


def _prefix_at_token_ends(
    text: str,
    max_tokens: int,
    char_end_of_first: Callable[[int], int],
    count: Callable[[str], int],
) -> str:
    """Cut `text` (known to be longer) after its first `max_tokens` tokens, then back off
    until the cut counts in.

    Re-encoding a prefix can give more tokens than the tokens it was cut from (a merge
    that spanned the cut is now split differently), so the count is checked, not assumed.
    `char_end_of_first(k)` is the character offset just after the k-th token.
    """
    if max_tokens <= 0 or not text:
        return ""
    k = max_tokens
    while k > 0:
        prefix = text[: char_end_of_first(k)]
        over = count(prefix) - max_tokens
        if over <= 0:
            return prefix
        k -= over
    return ""


def _char_index_of_byte(text: str, n_bytes: int) -> int:
    """How many whole characters of `text` fit in its first `n_bytes` UTF-8 bytes."""
    head = text[:n_bytes]  # a character takes at least one byte
    try:
        # Decoding drops the character the byte cut splits. Under 1 µs against 55-108 µs
        # for a Python loop over the characters of a 300-700-byte prefix, which took
        # ≈ 0.45 ms of a `pack` that cuts its last passage (cProfile).
        return len(head.encode("utf-8")[:n_bytes].decode("utf-8", "ignore"))
    except UnicodeEncodeError:  # a lone surrogate: counted character by character
        pass
    ends = list(accumulate(len(c.encode("utf-8", "surrogatepass")) for c in head))
    return bisect_right(ends, n_bytes)


def _bundled_tiktoken_cache() -> str | None:
    """The tiktoken cache directory inside llama-index-core, if that package is installed.

    Found through the import system without importing llama-index, which would pull in
    much of the framework just to learn a path.
    """
    try:
        spec = importlib.util.find_spec("llama_index.core")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    cache = os.path.join(os.path.dirname(spec.origin), "_static", "tiktoken_cache")
    return cache if os.path.isdir(cache) else None


_ENV_LOCK = threading.Lock()


def _load_tiktoken(encoding_name: str) -> Any:
    """Load a tiktoken encoding without touching the network when a local copy exists.

    With ``TIKTOKEN_CACHE_DIR`` unset, tiktoken would look in a temp directory and then
    download; here it is pointed at llama-index-core's bundled cache for the load only
    (the environment is restored). A user-set ``TIKTOKEN_CACHE_DIR`` is honoured first and
    the bundled cache is the fallback.
    """
    try:
        import tiktoken
    except ImportError as exc:  # a core dependency, but say what to do if it is missing
        raise TokenizerUnavailable(
            "tiktoken is not installed; it counts tokens for OpenAI models. "
            "Install it with: pip install tiktoken"
        ) from exc

    bundled = _bundled_tiktoken_cache()
    errors: list[str] = []
    with _ENV_LOCK:
        attempts: list[str | None] = []
        if "TIKTOKEN_CACHE_DIR" in os.environ:
            attempts.append(None)  # the user's own cache (or download) first
            if bundled is not None:
                attempts.append(bundled)
        elif bundled is not None:
            attempts.append(bundled)
        else:
            attempts.append(None)
        for cache_dir in attempts:
            saved = os.environ.get("TIKTOKEN_CACHE_DIR")
            try:
                if cache_dir is not None:
                    os.environ["TIKTOKEN_CACHE_DIR"] = cache_dir
                return tiktoken.get_encoding(encoding_name)
            except ValueError as exc:
                if encoding_name not in tiktoken.list_encoding_names():
                    raise TokenizerUnavailable(
                        f"tiktoken has no encoding {encoding_name!r}; known encodings: "
                        f"{', '.join(tiktoken.list_encoding_names())}."
                    ) from exc
                errors.append(f"{cache_dir or 'default cache'}: {exc}")
            except Exception as exc:  # network, permission or corrupt-file errors
                errors.append(f"{cache_dir or 'default cache'}: {type(exc).__name__}: {exc}")
            finally:
                if saved is None:
                    os.environ.pop("TIKTOKEN_CACHE_DIR", None)
                else:
                    os.environ["TIKTOKEN_CACHE_DIR"] = saved
    raise TokenizerUnavailable(
        f"Could not load the tiktoken encoding {encoding_name!r} ({'; '.join(errors)}). "
        "This machine may be offline. Set TIKTOKEN_CACHE_DIR to a directory that holds the "
        "encoding file, or install pertinent[llama-index], whose llama-index-core ships "
        "cl100k_base and o200k_base."
    )


class TiktokenTokenizer:
    """OpenAI's own tokenizer, exact for the models that use `encoding_name`.

    Special-token strings such as ``"<|endoftext|>"`` inside a passage are counted as the
    plain text they are: a retrieved document that quotes one must not crash packing.
    """

    def __init__(self, encoding_name: str) -> None:
        self._encoding = _load_tiktoken(encoding_name)
        self.encoding_name = encoding_name

    @property
    def name(self) -> str:
        return f"tiktoken:{self.encoding_name}"

    def _encode(self, text: str) -> list[int]:
        tokens: list[int] = self._encoding.encode(text, disallowed_special=())
        return tokens

    def count(self, text: str) -> int:
        return len(self._encode(text))

    def truncate(self, text: str, max_tokens: int) -> str:
        tokens = self._encode(text)
        if len(tokens) <= max_tokens:
            return text
        head = tokens[: max(max_tokens, 0)]
        byte_ends = list(accumulate(len(self._encoding.decode_single_token_bytes(t)) for t in head))

        def char_end_of_first(k: int) -> int:
            return _char_index_of_byte(text, byte_ends[k - 1])

        return _prefix_at_token_ends(text, max_tokens, char_end_of_first, self.count)

    def __repr__(self) -> str:
        return f"TiktokenTokenizer({self.encoding_name!r})"


class HFTokenizer:
    """An open model's tokenizer, read from its ``tokenizer.json`` with `tokenizers`.

    Truncation and padding stored in the file are switched off: they are settings for
    feeding a model, and would make counts stop at (or round up to) the model's length.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        file = Path(path).expanduser()
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise TokenizerUnavailable(
                f"No tokenizer file at {str(file)!r}. Give the path of the model's "
                "tokenizer.json (or its directory), "
                "e.g. Budget(model='hf:/models/x/tokenizer.json')."
            )
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError as exc:
            raise TokenizerUnavailable(
                "tokenizers is not installed; it reads tokenizer.json files. "
                "Install it with: pip install tokenizers"
            ) from exc
        try:
            tok = _HF.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise TokenizerUnavailable(
                f"{str(file)!r} is not a readable tokenizer.json ({exc}). "
                "Point to the tokenizer.json shipped with the model."
            ) from exc
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.path = str(file)

    @property
    def name(self) -> str:
        return f"hf:{self.path}"

    def _encode(self, text: str) -> Any:
        return self._tok.encode(text, add_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self._encode(text).ids)

    def truncate(self, text: str, max_tokens: int) -> str:
        offsets: Sequence[tuple[int, int]] = self._encode(text).offsets
        if len(offsets) <= max_tokens:
            return text  # also white space alone, which has no tokens here

        def char_end_of_first(k: int) -> int:
            return max(end for _, end in offsets[:k])

        return _prefix_at_token_ends(text, max_tokens, char_end_of_first, self.count)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r})"


class EstimateTokenizer:
    """A conservative count for models whose tokenizer is not public (Claude, Gemini, ...).

    The count is a real BPE count (tiktoken ``cl100k_base``) times a margin of 1.3,
    rounded up. A byte- or character-based rule cannot be conservative: it over-counts
    prose by half yet under-counts JSON, CSV, identifiers and base64 by up to 2.5x,
    because tokenizers split those into 1-3 byte pieces (measured against o200k_base).
    A BPE tokenizer with a 100k vocabulary tracks those shapes, and the margin covers
    tokenizers that split more finely than cl100k on English (Anthropic's are reported
    at 1.1-1.25x cl100k; that figure is not measured here). The price is a budget used
    about a quarter less fully than with an exact count. When a provider offers a
    count-tokens endpoint, a `Tokenizer` that calls it is exact.
    """

    margin = 1.3

    def __init__(self, model: str = "") -> None:
        self.model = model
        self._bpe = TiktokenTokenizer("cl100k_base")

    @property
    def name(self) -> str:
        return f"estimate:{self.model}"

    def count(self, text: str) -> int:
        return math.ceil(self._bpe.count(text) * self.margin)

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        cut = self._bpe.truncate(text, math.floor(max_tokens / self.margin))
        while cut and self.count(cut) > max_tokens:  # rounding can leave one token over
            cut = self._bpe.truncate(cut, max(0, self._bpe.count(cut) - 1))
        return cut

    def __repr__(self) -> str:
        return f"EstimateTokenizer({self.model!r})"


class CachedTokenizer:
    """Remembers counts of texts already seen: packing counts the same passages for every
    query that retrieves them, and a count of a long passage costs far more than a lookup.

    Thread-safe; least recently used texts are forgotten beyond `maxsize` texts or
    `max_chars` characters in all. The keys are the texts themselves, so the character
    bound is what bounds memory: with only a count bound, every retrieve left its whole
    assembled prompt (≈ 8 KiB) as a key, and a serving process grew by ≈ 10 MiB per
    1,000 retrieves for 65,536 of them (docs/reliability.md). Texts that will not be
    counted again go through `count_once`.
    """

    def __init__(
        self, inner: Tokenizer, maxsize: int = 65536, max_chars: int = 16 * 1024 * 1024
    ) -> None:
        self.inner = inner
        self.maxsize = maxsize
        self.max_chars = max_chars
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def cached_chars(self) -> int:
        """Characters held as keys (what `max_chars` bounds)."""
        return self._chars

    def count(self, text: str) -> int:
        with self._lock:
            cached = self._counts.get(text)
            if cached is not None:
                self._counts.move_to_end(text)
                self.hits += 1
                return cached
            self.misses += 1
        n = self.inner.count(text)  # outside the lock: counting may take a while
        if self.maxsize > 0 and len(text) <= self.max_chars:
            with self._lock:
                if text not in self._counts:
                    self._chars += len(text)
                self._counts[text] = n
                self._counts.move_to_end(text)
                while len(self._counts) > self.maxsize or self._chars > self.max_chars:
                    old, _ = self._counts.popitem(last=False)
                    self._chars -= len(old)
        return n

    def count_once(self, text: str) -> int:
        """Count without caching: for texts assembled per call (a whole packed prompt),
        which would only push reusable counts out."""
        return self.inner.count(text)

    def truncate(self, text: str, max_tokens: int) -> str:
        return self.inner.truncate(text, max_tokens)

    def __repr__(self) -> str:
        return (
            f"CachedTokenizer({self.inner!r}, maxsize={self.maxsize}, max_chars={self.max_chars})"
        )


# Longest prefixes first where one family's name starts with another's ("gpt-4o" / "gpt-4").
_O200K_PREFIXES = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "chatgpt-4o",
    "gpt-oss",
    "o1",
    "o3",
    "o4",
)
_CL100K_PREFIXES = (
    "gpt-4",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-3",
    "text-embedding-ada-002",
)


def _encoding_for(model: str) -> str | None:
    name = model.lower()
    for provider in ("openai/", "azure/", "ft:"):
        if name.startswith(provider):
            name = name[len(provider) :]
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return None


@functools.lru_cache(maxsize=64)
def tokenizer_for(model: str) -> Tokenizer:
    """The tokenizer that counts like `model` does, with counts cached.

    - ``"hf:<path>"`` or a path ending in ``tokenizer.json``: that file (open models).
    - ``"tiktoken:<encoding>"``: that tiktoken encoding.
    - OpenAI names: ``o200k_base`` for gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1, o3, o4 and
      chatgpt-4o; ``cl100k_base`` for gpt-4, gpt-3.5 and the text-embedding models.
    - Anything else (claude-*, gemini-*, command-*, unknown names): `EstimateTokenizer`,
      a conservative estimate, because those providers publish no tokenizer.

    Raises `TokenizerUnavailable` when the tokenizer exists but cannot be loaded.
    """
    model = model.strip()
    if model.startswith("hf:"):
        return CachedTokenizer(HFTokenizer(model[len("hf:") :]))
    if model.endswith("tokenizer.json"):
        return CachedTokenizer(HFTokenizer(model))
    if model.startswith("tiktoken:"):
        return CachedTokenizer(TiktokenTokenizer(model[len("tiktoken:") :]))
    encoding = _encoding_for(model)
    if encoding is not None:
        return CachedTokenizer(TiktokenTokenizer(encoding))
    return CachedTokenizer(EstimateTokenizer(model))
