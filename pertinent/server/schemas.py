"""Request and response bodies of the HTTP API (they are the OpenAPI schema).

Field limits here are the first line of defence (sizes, ranges); everything else is
validated once, in the core, which raises `InvalidInput` → 422 with its message.
Ids the client sends and gets back are its own names: the tenant namespace is added
and removed by the app (`pertinent.server.tenancy`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BudgetIn",
    "CitationOut",
    "DocumentIn",
    "ErrorBody",
    "ErrorOut",
    "EventIn",
    "EventsRequest",
    "EventsResponse",
    "ForgetResponse",
    "Health",
    "IngestRequest",
    "IngestResponse",
    "MemoriesRequest",
    "MemoriesResponse",
    "MemoryTurnIn",
    "ResultOut",
    "RetrieveRequest",
    "RetrieveResponse",
    "UserSummary",
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentIn(_In):
    id: str = Field(min_length=1, max_length=256)
    text: str = Field(max_length=1_000_000)
    title: str | None = Field(None, max_length=1000)
    source: str | None = Field(None, max_length=2000)
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    acl: list[str] | None = Field(
        None, max_length=64, description="principals 'kind:value'; default: the request's acl"
    )
    owner: str | None = Field(
        None, min_length=1, max_length=256, description="a user id: private to that user"
    )


class IngestRequest(_In):
    documents: list[DocumentIn] = Field(min_length=1)
    acl: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="principals allowed to read (e.g. 'role:support'); empty: every key "
        "of the tenant",
    )
    owner: str | None = Field(None, min_length=1, max_length=256)


class IngestResponse(BaseModel):
    documents: int
    chunks: int
    doc_ids: list[str]


class EventIn(_In):
    kind: Literal["query", "open", "click", "accept", "like", "reject", "dislike", "skip"]
    item_id: str | None = Field(
        None, min_length=1, max_length=300, description="a result id (chunk id)"
    )
    text: str | None = Field(None, max_length=20_000)
    weight: float | None = Field(None, ge=-1000, le=1000)
    timestamp: datetime | None = None
    session_id: str | None = Field(None, min_length=1, max_length=256)


class EventsRequest(_In):
    user_id: str = Field(min_length=1, max_length=256)
    events: list[EventIn] = Field(min_length=1)


class EventsResponse(BaseModel):
    recorded: int


class BudgetIn(_In):
    model: str = Field(
        "gpt-4o",
        min_length=1,
        max_length=100,
        description="the model whose tokenizer counts the budget (tokenizer files are not "
        "accepted over the network)",
    )
    max_tokens: int = Field(1500, gt=0)


class RetrieveRequest(_In):
    query: str = Field(min_length=1, max_length=20_000)
    user_id: str | None = Field(None, min_length=1, max_length=256)
    session_id: str | None = Field(None, min_length=1, max_length=256)
    budget: BudgetIn = Field(default_factory=BudgetIn)
    principals: list[str] = Field(default_factory=list, max_length=64)
    instructions: str = Field("", max_length=20_000)
    top_k: int | None = Field(None, ge=1, le=200)
    include_history: bool = False
    memories: bool = Field(
        False,
        description="also pack the user's long-term memories (the query is then not "
        "remembered: memory context is read-only)",
    )
    remember: bool = Field(True, description="record the query as a session turn and event")


class CitationOut(BaseModel):
    marker: int
    chunk_id: str
    doc_id: str
    source: str | None
    title: str | None
    truncated: bool


class ResultOut(BaseModel):
    id: str
    doc_id: str
    rank: int
    score: float
    text: str
    title: str | None
    source: str | None
    metadata: dict[str, Any]
    explain: dict[str, Any]


class RetrieveResponse(BaseModel):
    text: str
    token_count: int
    max_tokens: int
    model: str
    tokenizer: str
    sections: dict[str, int]
    skipped: dict[str, int]
    citations: list[CitationOut]
    results: list[ResultOut]
    degraded: list[str]
    timings_ms: dict[str, float]


class MemoryTurnIn(_In):
    text: str = Field(min_length=1, max_length=100_000)
    role: str = Field("user", min_length=1, max_length=64)
    speaker: str | None = Field(None, min_length=1, max_length=256)
    timestamp: str | float | None = Field(
        None, description="ISO 8601, RFC 2822, epoch seconds or '8 May 2023'"
    )
    turn_id: str | None = Field(None, min_length=1, max_length=256)


class MemoriesRequest(_In):
    user_id: str = Field(min_length=1, max_length=256)
    session_id: str = Field("default", min_length=1, max_length=256)
    turns: list[MemoryTurnIn] = Field(min_length=1)
    source: str | None = Field(None, max_length=2000)


class MemoriesResponse(BaseModel):
    doc_ids: list[str]
    chunks: int


class UserSummary(BaseModel):
    user_id: str
    events: int
    cold: bool
    gate: float
    positive_mass: float
    negative_mass: float
    interests: int
    personalization: bool
    memory: bool


class ForgetResponse(BaseModel):
    user_id: str
    deleted: dict[str, int]
    total: int
    at: datetime
    caches_cleared: list[str]


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody
    request_id: str | None = None
