"""Schemathesis against the published OpenAPI schema: bounded examples per route, with
an admin key (every route reachable). No answer may be a 5xx, and every answer must
match the schema it is documented with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

import pertinent
from pertinent.server import KeyStore, ServerLimits, create_app

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

_KEY: dict[str, str] = {}


@pytest.fixture(scope="module")
def api_schema(
    tmp_path_factory: pytest.TempPathFactory, embedder: pertinent.Embedder
) -> Iterator[Any]:
    root: Path = tmp_path_factory.mktemp("schema")
    with pertinent.open(root / "store", embedder=embedder) as px:
        px.ingest(
            [
                pertinent.Document(
                    id="acme/keys", text="Rotate API keys every 90 days.", acl=("tenant:acme",)
                ),
            ],
            show_progress=False,
        )
        keys = KeyStore(root / "api-keys.json")
        _KEY["acme"] = keys.create("acme", ["admin"]).key
        limits = ServerLimits(rate_per_s=10_000, burst=100_000, max_tokens=4000)
        app = create_app(px, keys, limits)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


# schemathesis' own pytest integration (`from_fixture` + `parametrize`) does not run
# under this pytest; its Hypothesis strategies do, one `@given` per documented route.
OPERATIONS = [
    ("POST", "/v1/documents"),
    ("POST", "/v1/events"),
    ("POST", "/v1/retrieve"),
    ("POST", "/v1/memories"),
    ("GET", "/v1/users/{user_id}"),
    ("DELETE", "/v1/users/{user_id}"),
    ("GET", "/v1/healthz"),
]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_server_errors_and_answers_match_the_schema(
    api_schema: Any, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {_KEY['acme']}"}

    @given(case=operation.as_strategy())
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: Any) -> None:
        response = case.call(headers=headers)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    check()


def test_openapi_documents_the_versioned_routes_and_auth(api_schema: Any) -> None:
    raw = api_schema.raw_schema
    assert {"/v1/documents", "/v1/events", "/v1/retrieve", "/v1/memories"} <= set(raw["paths"])
    assert {"get", "delete"} <= set(raw["paths"]["/v1/users/{user_id}"])
    assert "HTTPBearer" in raw["components"]["securitySchemes"]
    assert "429" in raw["paths"]["/v1/retrieve"]["post"]["responses"]
