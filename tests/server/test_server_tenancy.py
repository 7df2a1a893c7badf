"""Property: whatever key, user, principals and query a client sends, it never reaches
another tenant's documents, memories or users. Three tenants hold look-alike data (the
same user names, the same ACL principals, the same document ids), told apart only by a
marker word in each text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import Server, make_server

import pertinent
from pertinent.server import ServerLimits

TENANTS = ("acme", "globex", "initech")
MARKERS = {t: f"zq{t}zq" for t in TENANTS}
EVENTS = {"acme": 1, "globex": 2, "initech": 3}  # alice's events, per tenant
USERS = ["alice", "bob", "mallory", "acme/alice", "globex/alice", "user:alice"]
PRINCIPALS = [
    "role:support",
    "user:alice",
    "tenant:acme",
    "tenant:globex",
    "tenant:initech",
    "role:acme/support",
    "role:globex/support",
    "user:globex/alice",
]
QUERIES = [
    "how do I rotate API keys?",
    "support runbook",
    "alice private notes",
    "what do I remember about my move?",
    *MARKERS.values(),
]


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, embedder: pertinent.Embedder
) -> Iterator[Server]:
    root: Path = tmp_path_factory.mktemp("tenancy")
    with pertinent.open(root / "store", embedder=embedder) as px:
        limits = ServerLimits(rate_per_s=10_000, burst=100_000)
        with make_server(px, root, TENANTS, limits) as s:
            for t, m in MARKERS.items():
                docs = [
                    {"id": "handbook", "text": f"{m} handbook: rotate API keys every 90 days."},
                    {
                        "id": "runbook",
                        "text": f"{m} support runbook: rotate API keys on request.",
                        "acl": ["role:support"],
                    },
                    {"id": "notes", "text": f"{m} alice private notes.", "owner": "alice"},
                ]
                assert s.post("/v1/documents", f"{t}:admin", {"documents": docs}).status_code == 200
                events = [{"kind": "open", "item_id": "handbook#0"}] * EVENTS[t]
                r = s.post("/v1/events", f"{t}:writer", {"user_id": "alice", "events": events})
                assert r.status_code == 200
                turn = {"text": f"{m} I moved to Lisbon last year."}
                r = s.post("/v1/memories", f"{t}:writer", {"user_id": "alice", "turns": [turn]})
                assert r.status_code == 200
            yield s


def _foreign(text: str, tenant: str) -> list[str]:
    return [m for t, m in MARKERS.items() if t != tenant and m in text]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(
    tenant=st.sampled_from(TENANTS),
    role=st.sampled_from(["reader", "writer", "admin"]),
    user=st.one_of(st.sampled_from(USERS), st.text(min_size=1, max_size=12), st.none()),
    principals=st.lists(st.sampled_from(PRINCIPALS), max_size=4),
    query=st.sampled_from(QUERIES),
    memories=st.booleans(),
)
def test_no_request_reaches_another_tenant(
    world: Server,
    tenant: str,
    role: str,
    user: str | None,
    principals: list[str],
    query: str,
    memories: bool,
) -> None:
    who = f"{tenant}:{role}"
    body: dict[str, Any] = {
        "query": query,
        "principals": principals,
        "remember": False,
        "memories": memories and user is not None,
    }
    if user is not None:
        body["user_id"] = user
    r = world.post("/v1/retrieve", who, body)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        out = r.json()
        assert not _foreign(out["text"], tenant)
        for res in out["results"]:
            assert MARKERS[tenant] in res["text"] and not _foreign(res["text"], tenant)
    else:
        assert not _foreign(r.text, tenant)
    if user is not None and "/" not in user:
        g = world.client.get(f"/v1/users/{quote(user, safe='')}", headers=world.h(who))
        if g.status_code == 200:
            expected = EVENTS[tenant] if user == "alice" else 0
            assert g.json()["events"] == expected


@settings(max_examples=25, deadline=None, database=None)
@given(key=st.text(max_size=80), tenant=st.sampled_from(TENANTS))
def test_random_keys_get_401_and_nothing_else(world: Server, key: str, tenant: str) -> None:
    forged = [key, f"pk_{key}", f"pk_{key}_{key}", world.tokens[f"{tenant}:admin"][:-1] + key]
    for k in forged:
        if k == world.tokens[f"{tenant}:admin"] or not k.isascii() or not k.isprintable():
            continue
        r = world.client.post(
            "/v1/retrieve", json={"query": "rotate API keys"}, headers={"X-API-Key": k}
        )
        assert r.status_code == 401
        assert not any(m in r.text for m in MARKERS.values())


def test_the_same_names_in_two_tenants_stay_apart(world: Server) -> None:
    """Sanity for the property above: each tenant does see its own data."""
    for t in TENANTS:
        out = world.post(
            "/v1/retrieve",
            f"{t}:reader",
            {
                "query": "rotate API keys",
                "user_id": "alice",
                "principals": ["role:support"],
                "remember": False,
            },
        ).json()
        texts = " ".join(r["text"] for r in out["results"])
        assert f"{MARKERS[t]} handbook" in texts and f"{MARKERS[t]} support runbook" in texts
        assert f"{MARKERS[t]} alice private notes" in texts
        plain = world.post(
            "/v1/retrieve", f"{t}:reader", {"query": "support runbook", "remember": False}
        ).json()
        assert not any("runbook" in r["text"] for r in plain["results"])  # ACL holds
