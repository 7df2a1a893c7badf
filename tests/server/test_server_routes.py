"""Every route of the HTTP API over a real store and the real MiniLM model, including
the 401/403/413/422/429/503 paths."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import CORPUS, Server, make_server

import pertinent
from pertinent.errors import StoreUnavailable
from pertinent.server import ServerLimits


# One store and one app for the module (each test uses its own user ids); tests that
# need other limits build another app over the same store.
@pytest.fixture(scope="module")
def shared_px(
    tmp_path_factory: pytest.TempPathFactory, embedder: pertinent.Embedder
) -> Iterator[pertinent.Pertinent]:
    with pertinent.open(tmp_path_factory.mktemp("server") / "store", embedder=embedder) as p:
        yield p


@pytest.fixture(scope="module")
def server(
    shared_px: pertinent.Pertinent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    limits = ServerLimits(rate_per_s=1000, burst=10_000)
    with make_server(shared_px, tmp_path_factory.mktemp("keys"), limits=limits) as s:
        r = s.post("/v1/documents", "acme:admin", {"documents": CORPUS})
        assert r.status_code == 200, r.text
        yield s


def retrieve(s: Server, who: str, **body: Any) -> Any:
    body.setdefault("remember", False)
    r = s.post("/v1/retrieve", who, body)
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------------- happy paths


def test_healthz_needs_no_key_and_reports_version(server: Server) -> None:
    r = server.client.get("/v1/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": pertinent.__version__}


def test_ingest_returns_the_clients_own_ids(server: Server) -> None:
    r = server.post(
        "/v1/documents",
        "acme:admin",
        {"documents": [{"id": "faq", "text": "Reset a password from the login page."}]},
    )
    assert r.status_code == 200
    assert r.json() == {"documents": 1, "chunks": 1, "doc_ids": ["faq"]}


def test_retrieve_packs_explained_results_within_the_budget(server: Server) -> None:
    out = retrieve(
        server,
        "acme:reader",
        query="how often should I rotate API keys?",
        budget={"model": "gpt-4o", "max_tokens": 120},
    )
    assert out["results"][0]["doc_id"] == "keys"
    assert out["results"][0]["id"] == "keys#0"
    assert 0 < out["token_count"] <= 120
    assert out["tokenizer"] == "tiktoken:o200k_base"
    assert "Rotate API keys" in out["text"]
    explain = out["results"][0]["explain"]
    assert {"hybrid", "user", "session", "final"} <= set(explain)
    assert out["citations"][0]["chunk_id"] == "keys#0"
    assert "embed_query" in out["timings_ms"]
    assert not any("acme/" in str(v) for v in out.values())


def test_events_personalize_and_show_in_the_user_summary(server: Server) -> None:
    before = server.client.get("/v1/users/alice", headers=server.h("acme:reader")).json()
    assert before["events"] == 0 and before["cold"] is True
    events = [{"kind": "open", "item_id": "rust#0"} for _ in range(5)]
    events.append({"kind": "query", "text": "interior mutability in Rust", "session_id": "s1"})
    r = server.post("/v1/events", "acme:writer", {"user_id": "alice", "events": events})
    assert r.status_code == 200 and r.json() == {"recorded": 6}
    after = server.client.get("/v1/users/alice", headers=server.h("acme:reader")).json()
    assert after["events"] == 6 and after["cold"] is False and after["gate"] > 0
    out = retrieve(server, "acme:reader", query="what should I read next?", user_id="alice")
    top = out["results"][0]
    assert top["doc_id"] == "rust" and top["explain"]["user"] > 0


def test_retrieve_remembers_the_query_as_an_event(server: Server) -> None:
    r = server.post(
        "/v1/retrieve",
        "acme:reader",
        {"query": "refund timing", "user_id": "bob", "session_id": "s1"},
    )
    assert r.status_code == 200
    summary = server.client.get("/v1/users/bob", headers=server.h("acme:reader")).json()
    assert summary["events"] == 1


def test_memories_are_packed_for_their_user_only(server: Server) -> None:
    turns = [
        {"text": "Where did you move from?", "role": "assistant", "timestamp": "2023-05-08"},
        {"text": "I moved to Berlin from Sweden four years ago.", "timestamp": "2023-05-08"},
    ]
    r = server.post("/v1/memories", "acme:writer", {"user_id": "carol", "turns": turns})
    assert r.status_code == 200 and r.json()["chunks"] == 2
    out = retrieve(
        server, "acme:reader", query="where did I move from?", user_id="carol", memories=True
    )
    assert "Sweden" in out["text"] and out["sections"]["memory"] > 0
    other = retrieve(
        server, "acme:reader", query="where did I move from?", user_id="dave", memories=True
    )
    assert "Sweden" not in other["text"]


def test_forget_returns_a_receipt_and_is_idempotent(server: Server) -> None:
    server.post(
        "/v1/events",
        "acme:writer",
        {"user_id": "erin", "events": [{"kind": "like", "item_id": "tax#0"}]},
    )
    server.post("/v1/memories", "acme:writer", {"user_id": "erin", "turns": [{"text": "hi"}]})
    r = server.client.delete("/v1/users/erin", headers=server.h("acme:admin"))
    assert r.status_code == 200
    receipt = r.json()
    assert receipt["user_id"] == "erin"
    assert receipt["deleted"]["events"] == 1 and receipt["deleted"]["owned_chunks"] == 1
    again = server.client.delete("/v1/users/erin", headers=server.h("acme:admin")).json()
    assert again["deleted"]["events"] == 0 and again["deleted"]["owned_chunks"] == 0
    summary = server.client.get("/v1/users/erin", headers=server.h("acme:reader")).json()
    assert summary["events"] == 0


def test_metrics_expose_route_latency_stages_and_cache(
    server: Server, shared_px: pertinent.Pertinent, tmp_path: Path
) -> None:
    with make_server(shared_px, tmp_path) as own:
        retrieve(own, "acme:reader", query="rotate keys")
        retrieve(own, "acme:reader", query="rotate keys")
        text = own.client.get("/metrics").text
    assert 'pertinent_http_request_duration_seconds_count{method="POST",route="/v1/retrieve"' in (
        text
    )
    assert 'pertinent_pipeline_stage_seconds_count{stage="embed_query"} 2.0' in text
    assert 'pertinent_query_embedding_cache_total{outcome="hit"}' in text


def test_unknown_paths_answer_in_the_error_format(server: Server) -> None:
    r = server.client.get("/v1/nope", headers=server.h("acme:reader"))
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"


def test_request_id_is_echoed_or_made(server: Server) -> None:
    r = server.client.get("/v1/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    fresh = server.client.get("/v1/healthz", headers={"X-Request-ID": "bad id\twith space"})
    assert fresh.headers["X-Request-ID"] not in ("", "bad id\twith space")


def test_logs_carry_ids_but_no_user_text(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="pertinent.server"):
        retrieve(server, "acme:reader", query="a very private question about zebras")
    lines = [r.getMessage() for r in caplog.records if r.name == "pertinent.server"]
    assert any('"route": "/v1/retrieve"' in line and '"tenant": "acme"' in line for line in lines)
    assert not any("zebras" in line for line in lines)


# ---------------------------------------------------------------------- 401 / 403


def test_requests_without_a_valid_key_get_401(server: Server) -> None:
    body = {"query": "rotate keys"}
    assert server.client.post("/v1/retrieve", json=body).status_code == 401
    for bad in ("nope", "pk_000000000000_wrong", server.tokens["acme:reader"] + "x"):
        r = server.client.post("/v1/retrieve", json=body, headers={"X-API-Key": bad})
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "Unauthorized"


def test_a_revoked_key_stops_working_on_the_running_server(server: Server) -> None:
    new = server.keys.create("acme", ["reader"])
    h = {"X-API-Key": new.key}
    body = {"query": "keys", "remember": False}
    assert server.client.post("/v1/retrieve", json=body, headers=h).status_code == 200
    server.keys.revoke(new.record.key_id)
    assert server.client.post("/v1/retrieve", json=body, headers=h).status_code == 401


def test_roles_are_enforced_with_403(server: Server) -> None:
    shared = {"documents": [{"id": "x", "text": "shared text"}]}
    assert server.post("/v1/documents", "acme:writer", shared).status_code == 403
    owned = {"documents": [{"id": "x", "text": "my notes"}], "owner": "zed"}
    assert server.post("/v1/documents", "acme:writer", owned).status_code == 200
    event = {"user_id": "alice", "events": [{"kind": "open", "item_id": "keys#0"}]}
    r = server.post("/v1/events", "acme:reader", event)
    assert r.status_code == 403 and "writer" in r.json()["error"]["message"]
    assert server.client.delete("/v1/users/alice", headers=server.h("acme:writer")).status_code == (
        403
    )


# ---------------------------------------------------------------------- 413 / 422 / 429


def test_a_body_over_the_limit_gets_413(shared_px: pertinent.Pertinent, tmp_path: Path) -> None:
    with make_server(shared_px, tmp_path, limits=ServerLimits(max_body_bytes=2000)) as s:
        big = {"documents": [{"id": "big", "text": "word " * 1000}]}
        r = s.post("/v1/documents", "acme:admin", big)
        assert r.status_code == 413 and r.json()["error"]["type"] == "RequestTooLarge"
    assert "acme/big" not in shared_px.store.document_ids()


def test_chunked_body_over_the_limit_gets_413(
    shared_px: pertinent.Pertinent, tmp_path: Path
) -> None:
    s = make_server(shared_px, tmp_path, limits=ServerLimits(max_body_bytes=2000))

    def chunks() -> Iterator[bytes]:
        yield b'{"documents": [{"id": "big", "text": "'
        for _ in range(50):
            yield b"word " * 20
        yield b'"}]}'

    with s:
        r = s.client.post(
            "/v1/documents",
            content=chunks(),
            headers={**s.h("acme:admin"), "Content-Type": "application/json"},
        )
        assert r.status_code == 413
        small = s.client.post(
            "/v1/documents",
            content=iter(
                [b'{"documents": [{"id": "small", "text": "', b'tiny", "owner": "zed"}]}']
            ),
            headers={**s.h("acme:admin"), "Content-Type": "application/json"},
        )
        assert small.status_code == 200, small.text


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"query": "   "}, "EmptyQuery"),
        ({"query": "x", "budget": {"model": "hf:/etc/passwd"}}, "InvalidInput"),
        ({"query": "x", "budget": {"model": "tiktoken:p50k_base"}}, "InvalidInput"),
        ({"query": "x", "budget": {"max_tokens": 10_000_000}}, "InvalidInput"),
        ({"query": "x", "session_id": "s1"}, "InvalidInput"),
        ({"query": "x", "principals": ["no colon"]}, "InvalidInput"),
        ({"query": "x", "memories": True}, "InvalidInput"),
        ({"query": "x", "top_k": 0}, "InvalidRequest"),
        ({"query": "x", "surprise": 1}, "InvalidRequest"),
    ],
)
def test_bad_retrieve_input_gets_422_with_a_message(
    server: Server, body: dict[str, Any], kind: str
) -> None:
    r = server.post("/v1/retrieve", "acme:reader", body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == kind and err["message"]


def test_unknown_item_is_422_without_the_tenant_namespace(server: Server) -> None:
    event = {"user_id": "alice", "events": [{"kind": "open", "item_id": "missing#0"}]}
    r = server.post("/v1/events", "acme:writer", event)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "UnknownItem" and "acme/" not in err["message"]
    assert "'missing#0'" in err["message"]
    bad_kind = {"user_id": "alice", "events": [{"kind": "stare", "text": "x"}]}
    assert server.post("/v1/events", "acme:writer", bad_kind).status_code == 422


def test_memory_prefix_is_reserved_for_documents(server: Server) -> None:
    body = {"documents": [{"id": "mem:x", "text": "t"}]}
    r = server.post("/v1/documents", "acme:admin", body)
    assert r.status_code == 422 and "reserves" in r.json()["error"]["message"]


def test_a_key_over_its_rate_gets_429_with_retry_after(
    shared_px: pertinent.Pertinent, tmp_path: Path
) -> None:
    with make_server(shared_px, tmp_path, limits=ServerLimits(rate_per_s=0.01, burst=2)) as s:
        body = {"user_id": "rate", "events": [{"kind": "query", "text": "hello"}]}
        codes = [s.post("/v1/events", "acme:writer", body).status_code for _ in range(2)]
        assert codes == [200, 200]
        r = s.post("/v1/events", "acme:writer", body)
        assert r.status_code == 429 and r.json()["error"]["type"] == "RateLimited"
        assert int(r.headers["Retry-After"]) >= 1
        # the bucket is per key: another key of the same tenant is not throttled
        assert s.post("/v1/events", "acme:admin", body).status_code == 200


# ---------------------------------------------------------------------- 503


class MisbehavingStore:
    """The real store, except that searches fail or hang while told to."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.release: threading.Event | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _gate(self) -> None:
        if self.down:
            raise StoreUnavailable("the store at test is down")
        if self.release is not None:
            self.release.wait(10)

    def hybrid_search(self, *args: Any, **kwargs: Any) -> Any:
        self._gate()
        return self.inner.hybrid_search(*args, **kwargs)

    def count_chunks(self) -> int:
        self._gate()
        return int(self.inner.count_chunks())


def test_store_outage_and_slow_store_get_503_with_retry_after(
    shared_px: pertinent.Pertinent, server: Server, tmp_path: Path
) -> None:
    real = shared_px.store
    store = MisbehavingStore(real)
    shared_px.store = store  # type: ignore[assignment]
    try:
        with make_server(shared_px, tmp_path / "a", limits=ServerLimits(retry_after_s=7)) as s:
            store.down = True
            r = s.post("/v1/retrieve", "acme:reader", {"query": "rotate keys"})
            assert r.status_code == 503 and r.headers["Retry-After"] == "7"
            assert r.json()["error"]["type"] == "StoreUnavailable"
            assert s.client.get("/v1/healthz").status_code == 503
            store.down = False
            r = s.post("/v1/retrieve", "acme:reader", {"query": "rotate keys", "remember": False})
            assert r.status_code == 200  # back as soon as the store is
        slow = ServerLimits(timeout_s=0.3, retry_after_s=7)
        with make_server(shared_px, tmp_path / "b", limits=slow) as s:
            store.release = threading.Event()
            try:
                body = {"query": "rotate keys", "remember": False}
                r = s.post("/v1/retrieve", "acme:reader", body)
                assert r.status_code == 503 and r.json()["error"]["type"] == "Timeout"
                assert r.headers["Retry-After"] == "7"
            finally:
                store.release.set()
    finally:
        shared_px.store = real


# ---------------------------------------------------------------------- isolation


def test_another_tenant_sees_nothing_of_acme(server: Server) -> None:
    server.post(
        "/v1/events",
        "acme:writer",
        {"user_id": "ivy", "events": [{"kind": "open", "item_id": "rust#0"}]},
    )
    out = retrieve(server, "globex:admin", query="rotate API keys", user_id="ivy")
    assert out["results"] == [] and "Rotate" not in out["text"]
    summary = server.client.get("/v1/users/ivy", headers=server.h("globex:reader")).json()
    assert summary["events"] == 0
    # acme's chunk ids mean nothing to globex: same answer as an id that never existed
    event = {"user_id": "ivy", "events": [{"kind": "open", "item_id": "rust#0"}]}
    r = server.post("/v1/events", "globex:writer", event)
    assert r.status_code == 422 and r.json()["error"]["type"] == "UnknownItem"
    receipt = server.client.delete("/v1/users/ivy", headers=server.h("globex:admin")).json()
    assert receipt["deleted"]["events"] == 0 and receipt["deleted"]["owned_chunks"] == 0
    acme = server.client.get("/v1/users/ivy", headers=server.h("acme:reader")).json()
    assert acme["events"] == 1


# ---------------------------------------------------------------------- tracing


def test_opt_in_tracing_emits_a_span_per_call_and_stage(
    server: Server, shared_px: pertinent.Pertinent, tmp_path: Path
) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pertinent.server import KeyStore, create_app
    from pertinent.server.observability import StageTracer

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    keys = KeyStore(tmp_path / "keys.json")
    key = keys.create("acme", ["reader"]).key
    app = create_app(shared_px, keys, tracing=StageTracer(provider))
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        r = client.post(
            "/v1/retrieve",
            json={"query": "rotate keys", "remember": False},
            headers={"X-API-Key": key},
        )
        assert r.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"pertinent.retrieve", "pertinent.embed_query", "pertinent.pack"} <= set(spans)
    root = spans["pertinent.retrieve"]
    assert spans["pertinent.embed_query"].parent.span_id == root.context.span_id
    assert "rotate" not in str(dict(root.attributes or {}))  # no user text in spans
