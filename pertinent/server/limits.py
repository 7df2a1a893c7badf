"""What one client may ask of the server: body size, request rate, time.

A server must fail fast and say when to come back: a body over the limit gets 413
before it is read whole, a key over its rate 429 with ``Retry-After``, and a call that
outlives its timeout (a slow or absent store) 503 with ``Retry-After`` instead of a
socket that hangs. The timed-out work cannot be cancelled (the store calls are
blocking), it finishes in its worker thread; the client is answered at once.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BodySizeLimit", "RateLimiter", "ServerLimits"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServerLimits(BaseModel):
    """Limits of `pertinent serve` (the defaults suit one small host)."""

    model_config = ConfigDict(frozen=True)

    max_body_bytes: int = Field(2_000_000, gt=0, description="larger requests get 413")
    rate_per_s: float = Field(20.0, gt=0, description="sustained requests per second per key")
    burst: int = Field(40, gt=0, description="requests a key may send at once")
    timeout_s: float = Field(30.0, gt=0, description="per request; then 503")
    ingest_timeout_s: float = Field(300.0, gt=0, description="per ingest request; then 503")
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503")
    max_documents: int = Field(256, gt=0, description="documents per ingest request")
    max_events: int = Field(1000, gt=0, description="events per request")
    max_turns: int = Field(256, gt=0, description="memory turns per request")
    max_tokens: int = Field(128_000, gt=0, description="largest packing budget")
    log_user_text: bool = Field(False, description="log queries and texts (off: ids only)")


class RateLimiter:
    """One token bucket per key: `burst` tokens, refilled at `rate` per second.

    `clock` is injectable so tests can step time instead of sleeping.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float | None:
        """None if the request may go ahead; else the seconds until a token is free."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by its Content-Length or, for a
    chunked body, as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        declared_length = any(name == b"content-length" for name, _ in scope.get("headers", ()))
        if declared_length:
            await self.app(scope, self._counting(receive), send)
            return
        # A chunked body: read it whole (it is at most max_bytes) before the app runs, so
        # the answer is a clean 413 rather than a parse error half-way through.
        chunks: list[bytes] = []
        seen = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    def _counting(self, receive: Receive) -> Receive:
        """A Content-Length that lies: stop at the limit all the same."""
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    return {"type": "http.disconnect"}
            return message

        return counting_receive

    async def _reject(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": {
                    "type": "RequestTooLarge",
                    "message": f"The request body is over {self.max_bytes} bytes; "
                    "send fewer documents or events per request.",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
