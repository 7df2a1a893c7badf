"""Request ids and one structured log line per request.

Every response carries ``X-Request-ID`` (the client's, when it sent a sane one, so a
trace can be followed across services; a fresh one otherwise). The log line holds ids,
route template, status and time, never query or document text: those are logged only
when `ServerLimits.log_user_text` is on.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from pertinent.server.limits import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REQUEST_ID_HEADER", "RequestContext", "StageTracer", "configure_exporter", "log"]

log = logging.getLogger("pertinent.server")
REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def route_template(scope: Scope) -> str:
    """The matched route's template (``/v1/users/{user_id}``), or "unmatched": raw paths
    hold user ids and would make a label per user."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContext:
    """ASGI middleware: assigns the request id, times the request, logs it and hands
    the timing to `observe(route, method, status, seconds)` (the metrics)."""

    def __init__(self, app: ASGIApp, observe: Callable[[str, str, int, float], None]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
        request_id = incoming if incoming and _SANE_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - t0
            route = route_template(scope)
            self.observe(route, scope.get("method", ""), status, seconds)
            state: dict[str, Any] = scope.get("state", {})
            record = {
                "event": "request",
                "request_id": request_id,
                "method": scope.get("method"),
                "route": route,
                "status": status,
                "ms": round(seconds * 1000.0, 2),
                "tenant": state.get("tenant"),
                "key_id": state.get("key_id"),
            }
            log.info(json.dumps(record), extra={"request_id": request_id})


class StageTracer:
    """OpenTelemetry spans for the core calls a request makes (opt-in: `create_app(...,
    tracing=True)`, `pertinent serve --otel`).

    One span per call (``pertinent.retrieve`` ...), children per pipeline stage
    (``pertinent.embed_query``, ``pertinent.hybrid_search`` ...) built from the core's
    own stage timings after the call, laid end to end from the call's start (the core
    measures durations, not start times; the user leg overlaps the hybrid search). Spans
    join the current trace, e.g. the request span of OpenTelemetry's ASGI
    instrumentation. Where they go is the OpenTelemetry SDK's configuration; with the
    API alone they cost nothing.
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            from pertinent.errors import MissingDependency

            raise MissingDependency("opentelemetry-api", "otel") from exc
        self._trace = trace
        self._tracer = trace.get_tracer("pertinent.server", tracer_provider=tracer_provider)

    def record(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        stages: Mapping[str, float] | None = None,
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> None:
        span = self._tracer.start_span(
            f"pertinent.{name}", start_time=start_ns, attributes=dict(attributes or {})
        )
        context = self._trace.set_span_in_context(span)
        at = start_ns
        for stage, ms in (stages or {}).items():
            duration = int(ms * 1_000_000)
            child = self._tracer.start_span(f"pertinent.{stage}", context=context, start_time=at)
            child.end(end_time=at + duration)
            at += duration
        span.end(end_time=end_ns)


def configure_exporter() -> None:
    """A tracer provider for `pertinent serve --otel`: OTLP over HTTP when
    ``opentelemetry-exporter-otlp-proto-http`` is installed (endpoint from
    ``OTEL_EXPORTER_OTLP_ENDPOINT``), else spans printed to stderr."""
    import sys

    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError as exc:
        from pertinent.errors import MissingDependency

        raise MissingDependency("opentelemetry-sdk", "otel") from exc
    exporter: SpanExporter
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter()
    except ImportError:
        exporter = ConsoleSpanExporter(out=sys.stderr)
    provider = TracerProvider(resource=Resource.create({"service.name": "pertinent"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
