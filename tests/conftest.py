"""Shared fixtures: the real MiniLM model (loaded once per test session) and real
LanceDB stores in temporary directories."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from pathlib import Path

import pytest

import pertinent
from pertinent.embeddings import CachedQueryEmbedder, SentenceTransformerEmbedder

CORPUS = [
    {
        "id": "keys",
        "title": "API keys",
        "text": "Rotate API keys every 90 days from the admin console. Old keys stop working "
        "one hour after rotation.",
    },
    {
        "id": "lc",
        "title": "LangChain",
        "text": "LangChain retrievers wrap a vector store; a document compressor filters what "
        "the retriever returns before it reaches the chain.",
    },
    {
        "id": "li",
        "title": "LlamaIndex",
        "text": "LlamaIndex query engines call a retriever, then node postprocessors re-rank the "
        "nodes before the response synthesizer writes the answer.",
    },
    {
        "id": "billing",
        "title": "Billing",
        "text": "Invoices are issued on the first day of each month and refunds take five "
        "business days to reach the card.",
    },
    {
        "id": "rust",
        "title": "Rust",
        "text": "The Rust borrow checker rejects two mutable references to the same value; "
        "use RefCell for interior mutability.",
    },
    {
        "id": "tax",
        "title": "Tax",
        "text": "Capital gains tax applies when you sell shares held for less than a year; "
        "losses can offset gains.",
    },
]


@pytest.fixture(scope="session")
def embedder() -> CachedQueryEmbedder:
    return CachedQueryEmbedder(SentenceTransformerEmbedder(), maxsize=1024)


@pytest.fixture
def px(tmp_path: Path, embedder: CachedQueryEmbedder) -> Iterator[pertinent.Pertinent]:
    with pertinent.open(tmp_path / "store", embedder=embedder) as p:
        yield p


@pytest.fixture
def loaded(px: pertinent.Pertinent) -> pertinent.Pertinent:
    px.ingest(CORPUS, show_progress=False)
    return px
