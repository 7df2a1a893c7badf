"""Isolation under load, as a property: over up to 1,000 random users with random shared
documents (random ACLs), memories (user-owned documents), events and forgets in random
order, no retrieve or search ever returns a record the asking user may not see, and no
user can fold another user's memory into their profile.

Cost: the real MiniLM model embeds a small pool of texts once; each document is a pool
text plus a unique reference tag (``[ref d17]``) that BM25 sees and the vector ignores,
so thousands of documents cost no further embedding. CI runs a few examples; a long run:
``ISOLATION_EXAMPLES=500 python -m pytest tests/reliability/test_isolation_property.py``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pertinent
from pertinent import Event
from pertinent.types import Vector

EXAMPLES = int(os.environ.get("ISOLATION_EXAMPLES", "6"))
ROLES = ("role:support", "role:finance", "role:eng", "role:legal")
POOL = [d["text"] for d in CORPUS] + [
    "My API keys are stored in the team password vault.",
    "I prefer invoices sent to my personal address.",
    "Remind me to renew the TLS certificate before March.",
    "My favourite framework for agents is LlamaIndex.",
    "The staging cluster runs Weaviate 1.30 on three nodes.",
    "Refund requests above 500 euros need a manager's approval.",
    "Incident runbook: page the on-call engineer, then open a status page.",
    "Legal hold: do not delete the customer's records before the audit ends.",
]
QUERIES = [
    "how do I rotate api keys?",
    "where are my keys kept?",
    "refunds and invoices",
    "which retrieval framework should I use?",
    "capital gains tax",
    "incident runbook ref",
    "what do I need to remember about certificates?",
    "ref d1 d2 d3 keys vault",  # the tags are words too: BM25 sees them
]
TAG = re.compile(r" \[ref (d\d+)\]$")
TAG_IN_TEXT = re.compile(r"\[ref (d\d+)\]")


class PoolEmbedder:
    """The real model, asked once per pool text: the reference tag is cut off before
    embedding (so every tagged copy shares its pool text's vector)."""

    def __init__(self, inner: pertinent.Embedder) -> None:
        self.inner = inner
        self.memo: dict[str, Vector] = {}

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def max_tokens(self) -> int:
        return self.inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        bases = [TAG.sub("", t) for t in texts]
        missing = sorted({b for b in bases if b not in self.memo})
        if missing:
            self.memo.update(zip(missing, self.inner.embed_documents(missing), strict=True))
        if not bases:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.memo[b] for b in bases])

    def embed_query(self, text: str) -> Vector:
        return self.inner.embed_query(text)


@pytest.fixture(scope="module")
def pool_embedder(embedder: pertinent.CachedQueryEmbedder) -> PoolEmbedder:
    emb = PoolEmbedder(embedder)
    emb.embed_documents(POOL)
    for q in QUERIES:
        emb.embed_query(q)
    return emb


@dataclass
class Model:
    """What each user may see, kept beside the store: doc id -> (owner, acl)."""

    docs: dict[str, tuple[str | None, frozenset[str]]] = field(default_factory=dict)
    chunk_of: dict[str, str] = field(default_factory=dict)  # doc id -> a chunk id

    def visible(self, doc_id: str, user: str, principals: frozenset[str]) -> bool:
        if doc_id not in self.docs:
            return False  # deleted (forgotten) or never written
        owner, acl = self.docs[doc_id]
        if owner is not None and owner != user:
            return False
        return not acl or bool(acl & (principals | {f"user:{user}"}))


def roles_of(user: int) -> frozenset[str]:
    return frozenset(r for j, r in enumerate(ROLES) if (user >> j) & 1)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 1000))
    user = st.integers(0, n - 1)
    doc = st.tuples(
        st.integers(0, len(POOL) - 1),
        st.one_of(st.none(), user),  # owner: a memory
        st.frozensets(st.sampled_from(ROLES), max_size=2),
    )
    ops = st.one_of(
        st.tuples(st.just("ingest"), st.lists(doc, min_size=1, max_size=15)),
        st.tuples(st.just("retrieve"), user, st.integers(0, len(QUERIES) - 1)),
        st.tuples(st.just("record"), user, st.integers(0, 10**6)),
        st.tuples(st.just("forget"), user),
    )
    return {
        "users": n,
        "initial": draw(st.lists(doc, min_size=1, max_size=80)),
        "events": draw(st.lists(st.tuples(user, st.integers(0, 10**6)), max_size=40)),
        "ops": draw(st.lists(ops, min_size=1, max_size=30)),
    }


class Run:
    def __init__(self, px: pertinent.Pertinent) -> None:
        self.px = px
        self.model = Model()
        self.next_doc = 0
        self.retrieves = 0

    def ingest(self, docs: list[tuple[int, int | None, frozenset[str]]]) -> None:
        items = []
        for text, owner, acl in docs:
            doc_id = f"d{self.next_doc}"
            self.next_doc += 1
            owner_id = None if owner is None else f"u{owner}"
            items.append(
                {
                    "id": doc_id,
                    "text": f"{POOL[text]} [ref {doc_id}]",
                    "acl": sorted(acl),
                    "owner": owner_id,
                }
            )
            self.model.docs[doc_id] = (owner_id, acl)
            self.model.chunk_of[doc_id] = f"{doc_id}#0"
        self.px.ingest(items, show_progress=False)

    def record(self, user: int, pick: int) -> None:
        """An event on a random document: allowed only if the user may see its owner."""
        if not self.model.docs:
            return
        ids = sorted(self.model.docs)
        doc_id = ids[pick % len(ids)]
        owner = self.model.docs[doc_id][0]
        event = Event(kind="accept", item_id=self.model.chunk_of[doc_id])
        if owner is not None and owner != f"u{user}":
            with pytest.raises(pertinent.UnknownItem):
                self.px.record(f"u{user}", event)
        else:
            assert self.px.record(f"u{user}", event) == 1

    def retrieve(self, user: int, query: int) -> None:
        uid, principals = f"u{user}", roles_of(user)
        self.retrieves += 1
        ctx = self.px.retrieve(
            QUERIES[query], user_id=uid, session_id="s", principals=sorted(principals), top_k=20
        )
        plain = self.px.search(QUERIES[query], user_id=uid, principals=sorted(principals))
        for r in [*ctx.results, *plain]:
            assert self.model.visible(r.chunk.doc_id, uid, principals), (
                f"{uid} with {sorted(principals)} got {r.chunk.doc_id} "
                f"(owner, acl) = {self.model.docs.get(r.chunk.doc_id, 'deleted')}"
            )
            assert r.chunk.owner in (None, uid)
        for tag in TAG_IN_TEXT.findall(ctx.text):  # the packed prompt text itself
            assert self.model.visible(tag, uid, principals), f"{uid} was shown {tag}"

    def forget(self, user: int) -> None:
        uid = f"u{user}"
        self.px.forget_user(uid)
        for doc_id, (owner, _) in list(self.model.docs.items()):
            if owner == uid:
                del self.model.docs[doc_id]
        assert self.px.profile(uid).gate == 0.0  # nothing of theirs is left to fold
        assert self.px.store.read_events(uid) == []


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(scenario=scenarios())
def test_no_retrieve_returns_what_the_user_may_not_see(
    pool_embedder: PoolEmbedder, scenario: dict[str, Any]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        px = pertinent.open(Path(tmp) / "store", embedder=pool_embedder)  # type: ignore[arg-type]
        run = Run(px)
        run.ingest(scenario["initial"])
        for user, pick in scenario["events"]:
            run.record(user, pick)
        for op in scenario["ops"]:
            if op[0] == "ingest":
                run.ingest(op[1])
            elif op[0] == "record":
                run.record(op[1], op[2])
            elif op[0] == "forget":
                run.forget(op[1])
            else:
                run.retrieve(op[1], op[2])
        # every user who owns anything, and a few who do not, ask one last time
        owners = {int(o[1:]) for o, _ in run.model.docs.values() if o is not None}
        for user in sorted(owners | {0, scenario["users"] - 1})[:12]:
            run.retrieve(user, user % len(QUERIES))
        px.close()


def test_an_item_level_owner_needs_the_owners_memory_consent(
    px: pertinent.Pertinent,
) -> None:
    """Found while writing the property above: consent was checked only for `owner=`,
    so a dict item carrying its own ``owner`` stored a memory for a user who opted out."""
    px.set_consent("deb", memory=False)
    items = [
        {"id": "shared", "text": "Invoices are issued monthly."},
        {"id": "deb-note", "text": "Deb's keys are in the vault.", "owner": "deb"},
    ]
    with pytest.raises(pertinent.ConsentWithheld, match="'deb' opted out of long-term memory"):
        px.ingest(items, show_progress=False)
    assert px.store.document_ids() == []  # nothing of the call was written
    px.set_consent("deb", memory=True)
    px.ingest(items, show_progress=False)
    assert sorted(px.store.document_ids()) == ["deb-note", "shared"]
