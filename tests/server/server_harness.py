"""Shared helpers of the server tests: an app over a real store with keys per tenant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

import pertinent
from pertinent.server import KeyStore, ServerLimits, create_app

CORPUS = [
    {
        "id": "keys",
        "title": "API keys",
        "text": "Rotate API keys every 90 days from the "
        "admin console. Old keys stop working one hour after rotation.",
    },
    {
        "id": "rust",
        "title": "Rust",
        "text": "The Rust borrow checker rejects two mutable "
        "references to the same value; use RefCell for interior mutability.",
    },
    {
        "id": "billing",
        "title": "Billing",
        "text": "Invoices are issued on the first day of "
        "each month and refunds take five business days to reach the card.",
    },
    {
        "id": "tax",
        "title": "Tax",
        "text": "Capital gains tax applies when you sell shares "
        "held for less than a year; losses can offset gains.",
    },
]


@dataclass
class Server:
    client: TestClient
    keys: KeyStore
    tokens: dict[str, str]  # "tenant:role" -> full key

    def __enter__(self) -> Server:
        # One event loop for the client's life (as under uvicorn); without it each
        # request gets a loop whose shutdown waits for timed-out worker threads.
        self.client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(None, None, None)

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def post(self, path: str, who: str, body: Any) -> Any:
        return self.client.post(path, json=body, headers=self.h(who))


def make_server(
    px: pertinent.Pertinent,
    tmp: Path,
    tenants: tuple[str, ...] = ("acme", "globex"),
    limits: ServerLimits | None = None,
) -> Server:
    keys = KeyStore(tmp / "api-keys.json")
    tokens = {
        f"{t}:{role}": keys.create(t, [role]).key
        for t in tenants
        for role in ("reader", "writer", "admin")
    }
    app = create_app(px, keys, limits or ServerLimits())
    return Server(TestClient(app, raise_server_exceptions=False), keys, tokens)
