"""The HTTP API: thin glue from requests to one `Pertinent` client.

Each route authenticates the key (401), checks its role (403), puts every name the
request carries into the key's tenant namespace (`tenancy.Tenant`), calls the core off
the event loop under a timeout, and strips the namespace from what it returns. Errors
the core raises on purpose map to statuses in one place (`_status_of`): bad input 422,
consent 409, store outages and timeouts 503 with Retry-After.

    px = pertinent.open("./pertinent-data")
    app = create_app(px, KeyStore("./pertinent-data/api-keys.json"))
    uvicorn.run(app)
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from pertinent.errors import MissingDependency

    raise MissingDependency("fastapi", "server") from exc

from pertinent.client import Pertinent
from pertinent.errors import (
    ConsentWithheld,
    EmbeddingModelMismatch,
    InvalidInput,
    PertinentError,
    StoreError,
    TokenizerUnavailable,
)
from pertinent.memory.longterm import LongTermMemory, MemoryTurn
from pertinent.server.auth import ApiKey, KeyStore, Role
from pertinent.server.limits import BodySizeLimit, RateLimiter, ServerLimits, retry_after
from pertinent.server.metrics import Metrics
from pertinent.server.observability import RequestContext, StageTracer, log
from pertinent.server.schemas import (
    CitationOut,
    ErrorOut,
    EventsRequest,
    EventsResponse,
    ForgetResponse,
    Health,
    IngestRequest,
    IngestResponse,
    MemoriesRequest,
    MemoriesResponse,
    ResultOut,
    RetrieveRequest,
    RetrieveResponse,
    UserSummary,
)
from pertinent.server.tenancy import Tenant
from pertinent.types import Budget, Document, Event, PackedContext

__all__ = ["ApiError", "create_app"]

T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no key, or not a valid key"},
    403: {"model": ErrorOut, "description": "the key's role does not allow this"},
    413: {"model": ErrorOut, "description": "the body is over the size limit"},
    429: {"model": ErrorOut, "description": "over the key's rate; see Retry-After"},
    503: {"model": ErrorOut, "description": "store unavailable or too slow; see Retry-After"},
}
_OFFLINE_ENCODINGS = ("o200k_base", "cl100k_base")


class ApiError(Exception):
    """An error answered as ``{"error": {"type", "message"}}`` with `status`."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Caller:
    """The authenticated key of a request and its tenant's name mapping."""

    key: ApiKey
    tenant: Tenant

    def need(self, *roles: Role) -> None:
        if not self.key.allows(*roles):
            raise ApiError(
                403,
                "Forbidden",
                f"This key's roles ({', '.join(sorted(self.key.roles))}) do not allow this; "
                f"it needs one of: {', '.join(roles)}.",
            )


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer pk_...")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="or X-API-Key")


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_header_key)],
) -> Caller:
    """The request's key (401 without a valid one, 429 over its rate) and tenant."""
    state = request.app.state
    keys: KeyStore = state.keys
    limits: ServerLimits = state.limits
    rate: RateLimiter = state.rate
    raw = credentials.credentials if credentials is not None else api_key
    key = keys.verify(raw) if raw else None
    if key is None:
        raise ApiError(
            401,
            "Unauthorized",
            "Send a valid API key as 'Authorization: Bearer pk_...' or 'X-API-Key'; "
            "create one with `pertinent keys create`.",
            {"WWW-Authenticate": "Bearer"},
        )
    wait = rate.take(key.key_id)
    if wait is not None:
        raise ApiError(
            429,
            "RateLimited",
            f"This key is over {limits.rate_per_s:g} requests/s; retry after the "
            "Retry-After header's seconds.",
            {"Retry-After": retry_after(wait)},
        )
    tenant = Tenant(key.tenant)
    request.state.tenant = key.tenant
    request.state.key_id = key.key_id
    request.state.tenant_map = tenant
    return Caller(key=key, tenant=tenant)


Auth = Annotated[Caller, Depends(_caller)]


def _status_of(exc: PertinentError) -> int:
    if isinstance(exc, (InvalidInput, TokenizerUnavailable)):
        return 422
    if isinstance(exc, (ConsentWithheld, EmbeddingModelMismatch)):
        return 409
    if isinstance(exc, StoreError):
        return 503
    return 500


def _drop_outcome(future: asyncio.Future[Any]) -> None:
    """Retrieve a timed-out call's late outcome so asyncio does not log it as lost."""
    if not future.cancelled() and future.exception() is not None:
        log.info("a timed-out call failed later: %s", type(future.exception()).__name__)


def _check_model(model: str) -> None:
    """Tokenizer files are read from the server's disk and unknown tiktoken encodings
    would be downloaded: neither may be chosen by a client."""
    name = model.strip()
    if name.startswith("hf:") or name.endswith("tokenizer.json"):
        raise InvalidInput(
            f"Budget model {model!r} names a tokenizer file; the server does not read files "
            "named by clients. Pass a model name (e.g. 'gpt-4o', 'claude-sonnet-4')."
        )
    if name.startswith("tiktoken:") and name[len("tiktoken:") :] not in _OFFLINE_ENCODINGS:
        raise InvalidInput(
            f"Budget model {model!r}: only tiktoken:{' or tiktoken:'.join(_OFFLINE_ENCODINGS)} "
            "are available here."
        )


def create_app(
    px: Pertinent,
    keys: KeyStore,
    limits: ServerLimits | None = None,
    *,
    tracing: bool | StageTracer = False,
) -> FastAPI:
    """The FastAPI app over `px`. The caller owns `px` (and closes it). With `tracing`,
    each core call and pipeline stage is an OpenTelemetry span (`StageTracer`; pass one
    to choose its tracer provider)."""
    from pertinent import __version__

    limits = limits or ServerLimits()
    metrics = Metrics(px)
    tracer = tracing if isinstance(tracing, StageTracer) else StageTracer() if tracing else None
    ltm = LongTermMemory(px)

    app = FastAPI(
        title="pertinent",
        version=__version__,
        description="Personalized retrieval for LLM agents: ingest documents, record what "
        "users do, retrieve packed, explained context. See docs/server.md.",
        responses=_ERRORS,
    )
    app.state.px = px
    app.state.metrics = metrics
    app.state.keys = keys
    app.state.limits = limits
    app.state.rate = RateLimiter(limits.rate_per_s, limits.burst)

    # ------------------------------------------------------------------ errors

    def _error(request: Request, status: int, kind: str, message: str, **headers: str) -> Response:
        tenant = getattr(request.state, "tenant_map", None)
        if isinstance(tenant, Tenant):
            message = tenant.strip_text(message)
        body = {"error": {"type": kind, "message": message}}
        request_id = getattr(request.state, "request_id", None)
        return JSONResponse({**body, "request_id": request_id}, status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        if exc.status in (401, 403, 429):
            metrics.rejected.labels(str(exc.status)).inc()
        return _error(request, exc.status, exc.kind, exc.message, **exc.headers)

    @app.exception_handler(PertinentError)
    async def _core_error(request: Request, exc: PertinentError) -> Response:
        status = _status_of(exc)
        headers = {"Retry-After": str(limits.retry_after_s)} if status == 503 else {}
        if status == 500:
            log.error("core error %s: %s", type(exc).__name__, exc)
        return _error(request, status, type(exc).__name__, str(exc), **headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _error(request, 422, "InvalidRequest", problems or "The request is malformed.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return _error(request, exc.status_code, kind, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception(
            "unhandled error", extra={"request_id": getattr(request.state, "request_id", None)}
        )
        return _error(request, 500, "InternalError", "Internal error; the request id is logged.")

    async def run(
        fn: Callable[[], T],
        timeout: float | None = None,
        *,
        name: str = "call",
        stages: Callable[[T], dict[str, float]] | None = None,
    ) -> T:
        """`fn` in a worker thread; 503 when it outlives the timeout. The thread cannot
        be stopped (store calls block), so it is left to finish and its outcome dropped."""
        seconds = timeout or limits.timeout_s
        context = contextvars.copy_context()
        start = time.time_ns()
        future = asyncio.get_running_loop().run_in_executor(None, context.run, fn)
        done, _ = await asyncio.wait({future}, timeout=seconds)
        if not done:
            future.add_done_callback(_drop_outcome)
            raise ApiError(
                503,
                "Timeout",
                f"The store did not answer within {seconds:g} s; retry later.",
                {"Retry-After": str(limits.retry_after_s)},
            )
        if tracer is not None:
            failed = future.exception()
            result = None if failed is not None else future.result()
            tracer.record(
                name,
                start,
                time.time_ns(),
                stages(result) if stages is not None and result is not None else None,
                {"error": type(failed).__name__} if failed is not None else None,
            )
        return future.result()

    # ------------------------------------------------------------------ routes

    @app.get("/v1/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        """Ready when the store answers within the timeout (no key needed)."""
        await run(px.store.count_chunks, name="healthz")
        return Health(status="ok", version=__version__)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v1/documents", response_model=IngestResponse, tags=["documents"])
    async def ingest(body: IngestRequest, who: Auth) -> IngestResponse:
        """Ingest documents (re-ingesting an id replaces it). Shared documents need an
        admin key; documents owned by a user (`owner`) need a writer key."""
        t = who.tenant
        shared = any((d.owner or body.owner) is None for d in body.documents)
        who.need(*(("admin",) if shared else ("writer", "admin")))
        if len(body.documents) > limits.max_documents:
            raise InvalidInput(
                f"{len(body.documents)} documents in one request; send at most "
                f"{limits.max_documents} per request."
            )
        docs = []
        for d in body.documents:
            owner = d.owner or body.owner
            docs.append(
                Document(
                    id=t.doc(d.id),
                    text=d.text,
                    metadata=dict(d.metadata),
                    acl=t.acl(d.acl if d.acl is not None else body.acl),
                    owner=t.user(owner) if owner is not None else None,
                    source=d.source,
                    title=d.title,
                )
            )
        report = await run(
            lambda: px.ingest(docs, show_progress=False), limits.ingest_timeout_s, name="ingest"
        )
        return IngestResponse(
            documents=report.documents,
            chunks=report.chunks,
            doc_ids=[t.strip(d) for d in report.doc_ids],
        )

    @app.post("/v1/events", response_model=EventsResponse, tags=["users"])
    async def events(body: EventsRequest, who: Auth) -> EventsResponse:
        """Record a batch of events (all or none): what the user opened, accepted, asked."""
        who.need("writer", "admin")
        if len(body.events) > limits.max_events:
            raise InvalidInput(
                f"{len(body.events)} events in one request; send at most {limits.max_events}."
            )
        t = who.tenant
        uid = t.user(body.user_id)
        batch = [
            Event(
                kind=e.kind,
                item_id=t.item(e.item_id) if e.item_id is not None else None,
                text=e.text,
                weight=e.weight,
                timestamp=e.timestamp,
                session_id=e.session_id,
            )
            for e in body.events
        ]
        return EventsResponse(recorded=await run(lambda: px.record(uid, batch), name="record"))

    @app.post("/v1/retrieve", response_model=RetrieveResponse, tags=["retrieval"])
    async def retrieve(body: RetrieveRequest, who: Auth, request: Request) -> RetrieveResponse:
        """The packed context for this user and session, with every result's score
        breakdown and the token accounting."""
        who.need("reader", "writer", "admin")
        t = who.tenant
        _check_model(body.budget.model)
        if body.budget.max_tokens > limits.max_tokens:
            raise InvalidInput(
                f"budget.max_tokens {body.budget.max_tokens} is over this server's limit "
                f"of {limits.max_tokens}."
            )
        budget = Budget(model=body.budget.model, max_tokens=body.budget.max_tokens)
        uid = t.user(body.user_id) if body.user_id is not None else None
        principals = t.caller_principals(body.principals)
        if limits.log_user_text:
            log.info(
                json.dumps({"event": "query", "query": body.query}),
                extra={"request_id": request.state.request_id},
            )
        if body.memories and uid is None:
            raise InvalidInput("memories=true needs a user_id: memories belong to a user.")

        def call() -> tuple[PackedContext, dict[str, float]]:
            if body.memories and uid is not None:
                packed = ltm.context(
                    body.query,
                    user_id=uid,
                    session_id=body.session_id,
                    budget=budget,
                    principals=principals,
                    instructions=body.instructions,
                    include_history=body.include_history,
                    top_k=body.top_k,
                )
            else:
                packed = px.retrieve(
                    body.query,
                    user_id=uid,
                    session_id=body.session_id,
                    budget=budget,
                    principals=principals,
                    instructions=body.instructions,
                    include_history=body.include_history,
                    top_k=body.top_k,
                    remember=body.remember,
                )
            times = px.last_times
            return packed, dict(times.ms) if times is not None else {}

        packed, timings = await run(call, name="retrieve", stages=lambda out: out[1])
        metrics.observe_stages(timings)
        return RetrieveResponse(
            text=packed.text,
            token_count=packed.token_count,
            max_tokens=packed.budget.max_tokens,
            model=packed.budget.model,
            tokenizer=packed.tokenizer,
            sections=dict(packed.sections),
            skipped=dict(packed.skipped),
            citations=[
                CitationOut(
                    marker=c.marker,
                    chunk_id=t.strip(c.chunk_id),
                    doc_id=t.strip(c.doc_id),
                    source=c.source,
                    title=c.title,
                    truncated=c.truncated,
                )
                for c in packed.citations
            ],
            results=[
                ResultOut(
                    id=t.strip(r.id),
                    doc_id=t.strip(r.chunk.doc_id),
                    rank=r.rank,
                    score=r.score,
                    text=r.text,
                    title=r.chunk.title,
                    source=r.chunk.source,
                    metadata=dict(r.chunk.metadata),
                    explain=r.explain.as_dict(),
                )
                for r in packed.results
            ],
            degraded=list(packed.degraded),
            timings_ms=timings,
        )

    @app.post("/v1/memories", response_model=MemoriesResponse, tags=["users"])
    async def memories(body: MemoriesRequest, who: Auth) -> MemoriesResponse:
        """Remember conversation turns in the user's long-term memory (one write)."""
        who.need("writer", "admin")
        if len(body.turns) > limits.max_turns:
            raise InvalidInput(
                f"{len(body.turns)} turns in one request; send at most {limits.max_turns}."
            )
        uid = who.tenant.user(body.user_id)
        turns = [
            MemoryTurn(
                text=m.text,
                role=m.role,
                speaker=m.speaker,
                timestamp=m.timestamp,
                turn_id=m.turn_id,
            )
            for m in body.turns
        ]
        report = await run(
            lambda: ltm.add_conversation(uid, turns, session_id=body.session_id, source=body.source)
        )
        return MemoriesResponse(doc_ids=list(report.doc_ids), chunks=report.chunks)

    @app.get("/v1/users/{user_id}", response_model=UserSummary, tags=["users"])
    async def user_summary(user_id: str, who: Auth) -> UserSummary:
        """What the server knows of the user, in numbers (no texts). An unknown user is a
        cold profile, as in retrieval."""
        who.need("reader", "writer", "admin")
        uid = who.tenant.user(user_id)

        def call() -> UserSummary:
            view = px.profile(uid)
            consent = px.consent(uid)
            return UserSummary(
                user_id=user_id,
                events=len(px.store.read_events(uid)),
                cold=view.is_cold,
                gate=view.gate,
                positive_mass=view.positive_mass,
                negative_mass=view.negative_mass,
                interests=len(view.interests),
                personalization=consent.personalization,
                memory=consent.memory,
            )

        return await run(call, name="profile")

    @app.delete("/v1/users/{user_id}", response_model=ForgetResponse, tags=["users"])
    async def forget(user_id: str, who: Auth) -> ForgetResponse:
        """Delete everything the user owns; returns the receipt (idempotent)."""
        who.need("admin")
        uid = who.tenant.user(user_id)

        def call() -> ForgetResponse:
            receipt = px.forget_user(uid)
            ltm.forget(uid)  # drops its per-session cache of the user's last turn too
            return ForgetResponse(
                user_id=user_id,
                deleted=dict(receipt.deleted),
                total=receipt.total,
                at=receipt.at,
                caches_cleared=list(receipt.caches_cleared),
            )

        return await run(call, name="forget")

    # Outermost first: the request id and timing see everything, the body limit runs
    # before any route reads the body.
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(RequestContext, observe=metrics.observe_request)
    return app
