"""The scale-out store: the `Store` contract on a Weaviate cluster (weaviate-client v4).

How pertinent's data maps onto Weaviate (docs/weaviate.md has the long form):

- chunks, shared and user-owned → one collection `<prefix>Chunks`: self-provided vector
  `default` (HNSW, cosine), BM25 on `text`; ACLs, owner, document id and write generation
  are field-tokenized filter properties (`acl_keys`, `owner_key`, `doc_key`, `generation`).
- events and session turns → multi-tenant collections `<prefix>Events` / `<prefix>Turns`,
  one tenant per user, created on first write (`autoTenantCreation`); forgetting a user
  drops their tenants, so Weaviate itself keeps one user's log from another's.
- known users → `<prefix>Users` (user id ↔ tenant name); the embedding model the store
  was built with → one object in `<prefix>Meta`, checked on every open.

Owned chunks live in the shared collection, not in per-user tenants, because a search
must rank a user's own documents against the shared ones in one hybrid query with one
fusion, and a Weaviate query reads one tenant. Their isolation is the owner clause that
`_visibility` puts in every chunk query; no chunk read path goes without it.

The data plane (Search, BatchObjects, BatchDelete, Aggregate) calls the gRPC stub of the
client's own connection (its channel, TLS and auth headers) with requests built here,
rather than through `collection.query`: the client retries UNAVAILABLE with sleeps of
1, 2, 4 … 32 s (about a minute) and no jitter, which would hang a retrieval far past any
timeout when a node is down. Here every store call has one deadline (`timeout_s`), and
UNAVAILABLE / DEADLINE_EXCEEDED / HTTP 5xx are retried a bounded number of times with
jittered exponential backoff inside it. Schema and tenant management use the client's
public REST API. The requests target Weaviate >= 1.29 (the first with gRPC Aggregate).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from pertinent.errors import (
    ConfigurationError,
    DimensionMismatch,
    EmbeddingModelMismatch,
    InvalidInput,
    MissingDependency,
    PartialWrite,
    StoreCorrupted,
    StoreError,
    StoreUnavailable,
)
from pertinent.stores.base import (
    EventArrays,
    SearchFilter,
    StoredEvent,
    StoredTurn,
    event_arrays,
    vector_matrix,
)
from pertinent.types import Chunk, Hit, Vector

if TYPE_CHECKING:
    from weaviate import WeaviateClient
    from weaviate.proto.v1 import base_pb2, search_get_pb2

__all__ = ["WeaviateStore", "open_meta", "tenant_for"]

T = TypeVar("T")

_SCHEMA_VERSION = "1"
_MIN_VERSION = (1, 29, 0)  # gRPC Aggregate (count_chunks, delete_user's counts)
_VECTOR = "default"
_NAMESPACE = uuid.UUID("5b0f3c8e-4a57-4c1e-9d59-6f2f1d0b7a11")
_SHARED_OWNER = "shared"  # owner_key of shared chunks; tenant names start with u- or h-
_PUBLIC_ACL = "*"  # acl_keys entry of chunks with an empty ACL; real entries are <…>
_PAGE = 1000  # objects per cursor page
_MAX_RESULTS = 10_000  # Weaviate's default QUERY_MAXIMUM_RESULTS
_SAFE_USER = re.compile(r"[a-z0-9_-]{1,60}")
_PREFIX = re.compile(r"[A-Z][A-Za-z0-9_]{0,40}")
_DATE = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$")
_EXPLAIN_BM25 = re.compile(r"Result Set keyword,bm25\) Document [^:]+: original score ([^,\s]+)")
_CHUNK_PROPS = [
    "chunk_id",
    "doc_id",
    "owner",
    "position",
    "text",
    "title",
    "source",
    "metadata",
    "acl",
    "model_id",
]
_EVENT_PROPS = [
    "event_id",
    "user_id",
    "kind",
    "weight",
    "ts",
    "item_id",
    "text",
    "session_id",
    "model_id",
]
_TURN_PROPS = ["turn_id", "user_id", "session_id", "role", "text", "ts", "model_id"]


_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def tenant_for(user_id: str) -> str:
    """The tenant (and owner key) of a user.

    Weaviate tenant names allow `[A-Za-z0-9_-]{1,64}`; ids made of lowercase letters,
    digits, `_` and `-` keep a readable name, any other id (case, spaces, quotes,
    unicode) becomes a hash, so no two user ids can share a tenant.
    """
    if _SAFE_USER.fullmatch(user_id):
        return "u-" + user_id
    digest = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()
    return "h-" + digest[:40]


def _key(value: str) -> str:
    """A filter value for a `field`-tokenized property. Weaviate trims white space from
    such values; the brackets keep " a" and "a" apart."""
    return f"<{value}>"


def _uid(kind: str, value: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{value}"))


def _rfc3339(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_date(text: str) -> datetime:
    m = _DATE.match(text)
    if m is None:
        raise StoreCorrupted(f"Weaviate returned a date pertinent cannot read: {text!r}.")
    base = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    micros = int(((m.group(2) or "") + "000000")[:6])
    zone = m.group(3)
    offset = timedelta(0)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return (base.replace(microsecond=micros, tzinfo=timezone.utc) - offset).astimezone(timezone.utc)


def _exists(client: WeaviateClient, name: str, _: float) -> bool:
    return client.collections.exists(name)


def _create(client: WeaviateClient, name: str, spec: Mapping[str, Any], _: float) -> None:
    client.collections.create(name, **spec)


def _drop_tenant(client: WeaviateClient, collection: str, tenant: str, _: float) -> None:
    client.collections.use(collection).tenants.remove([tenant])


def _drop(client: WeaviateClient, name: str, _: float) -> None:
    client.collections.delete(name)


@dataclass(frozen=True)
class _Names:
    meta: str
    chunks: str
    events: str
    turns: str
    users: str
    settings: str

    @classmethod
    def of(cls, prefix: str) -> _Names:
        return cls(*(f"{prefix}{kind}" for kind in _KINDS))

    def all(self) -> tuple[str, ...]:
        return (self.meta, self.chunks, self.events, self.turns, self.users, self.settings)


_KINDS = ("Meta", "Chunks", "Events", "Turns", "Users", "Settings")


@dataclass(frozen=True)
class _Pending:
    """One object to write, and the id the caller knows it by (for error reports)."""

    label: str
    obj: Any  # batch_pb2.BatchObject


class WeaviateStore:
    """Chunks, events and session turns in a Weaviate cluster.

    `url` is the REST endpoint (``http://localhost:8080``); gRPC is reached on the same
    host at `grpc_port`. `timeout_s` bounds every store call, retries included. Collection
    names start with `prefix`, so several stores can share a cluster.
    """

    def __init__(
        self,
        url: str = "http://localhost:8080",
        *,
        model_id: str,
        dim: int,
        api_key: str | None = None,
        grpc_port: int = 50051,
        timeout_s: float = 30.0,
        retries: int = 3,
        prefix: str = "Pertinent",
        batch_size: int = 200,
    ) -> None:
        try:
            import grpc  # type: ignore[import-untyped]
            import weaviate
            from weaviate.classes.init import AdditionalConfig, Auth, GrpcConfig, Timeout
            from weaviate.proto.v1 import (
                aggregate_pb2,
                base_pb2,
                base_search_pb2,
                batch_delete_pb2,
                batch_pb2,
                search_get_pb2,
                tenants_pb2,
            )
        except ImportError as exc:
            raise MissingDependency("weaviate-client", "weaviate") from exc
        self._grpc = grpc
        self._pb_aggregate = aggregate_pb2
        self._pb_base = base_pb2
        self._pb_search_base = base_search_pb2
        self._pb_delete = batch_delete_pb2
        self._pb_batch = batch_pb2
        self._pb_search = search_get_pb2
        self._pb_tenants = tenants_pb2
        from weaviate import exceptions as wexc

        self._wexc = wexc
        if not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"Weaviate collection prefix {prefix!r} is invalid: use a capital letter "
                "followed by letters, digits or '_' (at most 41 characters)."
            )
        if timeout_s <= 0 or retries < 0 or batch_size <= 0:
            raise ConfigurationError("timeout_s and batch_size must be > 0 and retries >= 0.")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"Weaviate URL {url!r} is not an http(s) URL; pass e.g. http://localhost:8080."
            )
        self.url = url.rstrip("/")
        self._dim = dim
        self._model_id = model_id
        self._timeout = float(timeout_s)
        self._retries = retries
        self._batch_size = batch_size
        self._grpc_port = grpc_port
        self._has_key = bool(api_key)
        self.prefix = prefix
        self._names = _Names.of(prefix)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        self._client: WeaviateClient | None = None

        def connect(_: float) -> WeaviateClient:
            return weaviate.connect_to_custom(
                http_host=parts.hostname or "",
                http_port=port,
                http_secure=secure,
                grpc_host=parts.hostname or "",
                grpc_port=grpc_port,
                grpc_secure=secure,
                auth_credentials=Auth.api_key(api_key) if api_key else None,
                additional_config=AdditionalConfig(
                    timeout=Timeout(query=timeout_s, insert=timeout_s, init=timeout_s),
                    # gRPC's reconnect backoff grows to 120 s: a cluster back after a long
                    # outage would go unnoticed for up to two minutes. Capped at 1 s, the
                    # circuit breaker's half-open trial finds it within a second.
                    grpc_config=GrpcConfig(channel_options=_CHANNEL_OPTIONS),
                ),
                # init checks ask PyPI for the latest client version and ping gRPC health;
                # the first is impossible offline, and the first real call tests gRPC anyway.
                skip_init_checks=True,
            )

        self._client = self._call("connect", connect)
        try:
            version = self._client._connection._weaviate_version
            if version.is_lower_than(*_MIN_VERSION):
                raise ConfigurationError(
                    f"Weaviate at {self.url} runs {version}; pertinent needs Weaviate >= "
                    f"{'.'.join(map(str, _MIN_VERSION))} (gRPC aggregate). Upgrade the cluster."
                )
            self._ensure_schema()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ setup

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_id(self) -> str:
        return self._model_id

    def _ensure_schema(self) -> None:
        from weaviate.classes.config import (
            Configure,
            DataType,
            Property,
            StopwordsPreset,
            Tokenization,
            VectorDistances,
        )

        def prop(
            name: str,
            dtype: Any = DataType.TEXT,
            *,
            key: bool = False,
            search: bool = False,
            filterable: bool | None = None,
        ) -> Property:
            text = dtype in (DataType.TEXT, DataType.TEXT_ARRAY)
            return Property(
                name=name,
                data_type=dtype,
                tokenization=(Tokenization.WORD if search else Tokenization.FIELD)
                if text
                else None,
                index_searchable=search if text else None,
                index_filterable=key if filterable is None else filterable,
            )

        hnsw = Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
        flat = Configure.VectorIndex.flat(distance_metric=VectorDistances.COSINE)
        # BM25 without stop words: the query "how do I rotate keys" keeps every term, the
        # same terms the embedded store's index sees; IDF already discounts common words.
        inverted = Configure.inverted_index(
            bm25_k1=1.2, bm25_b=0.75, stopwords_preset=StopwordsPreset.NONE
        )
        per_user = Configure.multi_tenancy(
            enabled=True, auto_tenant_creation=True, auto_tenant_activation=True
        )
        n = self._names
        specs: dict[str, dict[str, Any]] = {
            n.meta: {
                "description": "pertinent: the embedding model this store was built with",
                "properties": [prop("key", key=True), prop("value")],
                "vector_config": Configure.Vectors.self_provided(vector_index_config=flat),
            },
            n.chunks: {
                "description": "pertinent: document chunks, shared and user-owned",
                "properties": [
                    prop("chunk_id"),
                    prop("doc_id"),
                    prop("doc_key", key=True),
                    prop("owner"),
                    prop("owner_key", key=True),
                    prop("position", DataType.INT),
                    prop("text", search=True),
                    prop("title"),
                    prop("source"),
                    prop("metadata"),
                    prop("acl", DataType.TEXT_ARRAY),
                    prop("acl_keys", DataType.TEXT_ARRAY, key=True),
                    prop("model_id"),
                    prop("generation", key=True),
                ],
                "vector_config": Configure.Vectors.self_provided(vector_index_config=hnsw),
                "inverted_index_config": inverted,
            },
            n.events: {
                "description": "pertinent: each user's event log (one tenant per user)",
                "properties": [
                    prop("event_id"),
                    prop("user_id"),
                    prop("kind"),
                    prop("weight", DataType.NUMBER),
                    prop("ts", DataType.DATE, filterable=True),
                    prop("item_id"),
                    prop("text"),
                    prop("session_id"),
                    prop("model_id"),
                ],
                "vector_config": Configure.Vectors.self_provided(vector_index_config=flat),
                "multi_tenancy_config": per_user,
            },
            n.turns: {
                "description": "pertinent: each user's session turns (one tenant per user)",
                "properties": [
                    prop("turn_id"),
                    prop("user_id"),
                    prop("session_id"),
                    prop("session_key", key=True),
                    prop("role"),
                    prop("text"),
                    prop("ts", DataType.DATE, filterable=True),
                    prop("model_id"),
                ],
                "vector_config": Configure.Vectors.self_provided(vector_index_config=flat),
                "multi_tenancy_config": per_user,
            },
            n.users: {
                "description": "pertinent: user id of each tenant",
                "properties": [prop("user_id"), prop("tenant", key=True)],
                "vector_config": Configure.Vectors.self_provided(vector_index_config=flat),
            },
            n.settings: {
                "description": "pertinent: per-user settings such as consent",
                "properties": [
                    prop("user_id"),
                    prop("settings"),
                    prop("updated", DataType.DATE, filterable=True),
                ],
                "vector_config": Configure.Vectors.self_provided(vector_index_config=flat),
            },
        }
        client = self._connected()
        created: set[str] = set()
        for name, spec in specs.items():
            if self._call(f"look up collection {name}", partial(_exists, client, name)):
                continue
            try:
                self._call(f"create collection {name}", partial(_create, client, name, spec))
                created.add(name)
            except StoreError as exc:
                # Another process may have created it between our check and our create.
                if "already exists" not in str(exc):
                    raise
        self._check_meta(chunks_is_new=n.chunks in created)

    def _check_meta(self, *, chunks_is_new: bool) -> None:
        reply = self._search(
            "read the store's model",
            self._request(
                self._names.meta,
                limit=1,
                props=["key", "value"],
                vectors=False,
                filters=self._filter("_id", "eq", _uid("meta", "model")),
            ),
        )
        if not reply.results:
            if not chunks_is_new and self.count_chunks() > 0:
                raise StoreCorrupted(
                    f"Collection {self._names.chunks} at {self.url} holds chunks but no "
                    f"{self._names.meta} record of their embedding model; it was written by "
                    "something else or damaged. Use another collection prefix."
                )
            meta = {"model_id": self._model_id, "dim": self._dim, "schema": _SCHEMA_VERSION}
            self._write(
                "record the store's model",
                [
                    _Pending(
                        "meta",
                        self._object(
                            self._names.meta,
                            _uid("meta", "model"),
                            {"key": "model", "value": json.dumps(meta, sort_keys=True)},
                        ),
                    )
                ],
            )
            return
        props = self._props(reply.results[0])
        meta = json.loads(props.get("value") or "{}")
        if meta.get("schema") != _SCHEMA_VERSION:
            raise StoreCorrupted(
                f"The Weaviate store at {self.url} (prefix {self._names.meta[:-4]!r}) has "
                f"schema version {meta.get('schema')!r}; this pertinent reads version "
                f"{_SCHEMA_VERSION!r}. Use the pertinent version that wrote it, or another "
                "collection prefix."
            )
        if meta.get("model_id") != self._model_id or meta.get("dim") != self._dim:
            raise EmbeddingModelMismatch(
                f"The Weaviate store at {self.url} (collections {self._names.chunks}, …) was "
                f"built with embedding model {meta.get('model_id')!r} (dim {meta.get('dim')}), "
                f"not {self._model_id!r} (dim {self._dim}). Open it with the same model, or use "
                "another collection prefix for the new model."
            )

    # ------------------------------------------------------------------ calls and errors

    def _connected(self) -> WeaviateClient:
        if self._client is None:
            raise StoreError(f"The Weaviate store at {self.url} is closed; open a new one.")
        return self._client

    def _call(self, what: str, fn: Callable[[float], T]) -> T:
        """Run `fn(remaining_seconds)` under this store's deadline and retry policy, and
        map every driver error to the pertinent error tree (in this one place)."""
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreUnavailable(
                    f"Weaviate at {self.url} did not answer ({what}) within {self._timeout:g} s "
                    f"({attempt - 1} attempts). Check the cluster's health and load, or raise "
                    "the timeout (PERTINENT_WEAVIATE_TIMEOUT_S)."
                )
            try:
                return fn(remaining)
            except Exception as exc:  # mapped below; nothing is swallowed
                transient, mapped = self._classify(exc, what, attempt)
                if not (
                    transient and attempt <= self._retries and self._backoff(attempt, deadline)
                ):
                    raise mapped from exc

    def _backoff(self, attempt: int, deadline: float) -> bool:
        """Sleep before the next attempt (full jitter, capped); False if the deadline
        would pass first."""
        delay = random.uniform(0.0, min(2.0, 0.1 * 2 ** (attempt - 1)))
        if time.monotonic() + delay >= deadline:
            return False
        time.sleep(delay)
        return True

    def _classify(self, exc: Exception, what: str, attempt: int) -> tuple[bool, Exception]:
        grpc, wexc = self._grpc, self._wexc
        where = f"Weaviate at {self.url}"
        tries = f"after {attempt} attempt{'s' if attempt > 1 else ''}"
        auth = ConfigurationError(
            f"{where} rejected the credentials ({what}): "
            + ("check the API key and its permissions" if self._has_key else "it needs an API key")
            + " (--api-key or PERTINENT_WEAVIATE_API_KEY)."
        )
        if isinstance(exc, StoreError | ConfigurationError):
            return False, exc
        if isinstance(exc, grpc.RpcError):
            code, details = exc.code(), exc.details()
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return False, auth
            if code == grpc.StatusCode.UNAVAILABLE:
                return True, StoreUnavailable(
                    f"{where} (gRPC port {self._grpc_port}) cannot be reached ({what}) {tries}: "
                    f"{details}. Check that the cluster is running and that the URL and gRPC "
                    "port are right."
                )
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                # Overloaded (rate limit, memory pressure): worth a later try, and if it
                # persists the breaker gives the cluster room instead of piling on.
                return True, StoreUnavailable(
                    f"{where} is overloaded ({what}) {tries}: [RESOURCE_EXHAUSTED] {details}. "
                    "Reduce the request rate or scale the cluster."
                )
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return True, StoreUnavailable(
                    f"{where} did not answer ({what}) within {self._timeout:g} s {tries}. "
                    "Check the cluster's load, or raise the timeout (PERTINENT_WEAVIATE_TIMEOUT_S)."
                )
            return False, StoreError(f"{where} refused {what}: [{code.name}] {details}")
        if isinstance(exc, wexc.UnexpectedStatusCodeError):
            status = exc.status_code
            if status in (401, 403):
                return False, auth
            if status >= 500:
                return True, StoreUnavailable(
                    f"{where} failed ({what}) with HTTP {status} {tries}: {exc.message}"
                )
            return False, StoreError(f"{where} refused {what}: HTTP {status}: {exc.message}")
        if isinstance(exc, wexc.AuthenticationFailedError):
            return False, auth
        if isinstance(
            exc,
            wexc.WeaviateStartUpError | wexc.WeaviateConnectionError | wexc.WeaviateTimeoutError,
        ):
            text = str(exc)
            if "401" in text or "403" in text:
                return False, auth
            return True, StoreUnavailable(
                f"{where} cannot be reached ({what}) {tries}: {text.strip()} Check that the "
                "cluster is running and the URL is right."
            )
        if isinstance(exc, wexc.WeaviateClosedClientError):
            return False, StoreError(f"The Weaviate store at {self.url} is closed; open a new one.")
        if isinstance(exc, wexc.WeaviateBaseError):
            return False, StoreError(f"{where} failed ({what}): {exc}")
        import httpx  # weaviate-client's REST transport

        if isinstance(exc, httpx.TransportError):
            return True, StoreUnavailable(f"{where} cannot be reached ({what}) {tries}: {exc}")
        raise exc

    def _grpc_call(self, what: str, method: str, request: Any) -> Any:
        conn = self._connected()._connection

        def attempt(remaining: float) -> Any:
            stub = conn.grpc_stub
            assert stub is not None
            return getattr(stub, method)(request, metadata=conn.grpc_headers(), timeout=remaining)

        return self._call(what, attempt)

    def _search(self, what: str, request: search_get_pb2.SearchRequest) -> Any:
        return self._grpc_call(what, "Search", request)

    @contextmanager
    def _missing_tenant_is_empty(self) -> Iterator[None]:
        """Reads of a user who never wrote anything: Weaviate answers `tenant not found`;
        for pertinent that user simply has no records."""
        try:
            yield
        except StoreError as exc:
            if "tenant not found" not in str(exc):
                raise

    # ------------------------------------------------------------------ wire helpers

    def _filter(self, prop: str, op: str, value: str | Sequence[str]) -> Any:
        """A leaf filter: `op` is eq, ne, lt or any (ContainsAny), on a property or `_id`;
        dates are compared as RFC 3339 text, as Weaviate takes them."""
        base = self._pb_base
        ops = {
            "eq": base.Filters.OPERATOR_EQUAL,
            "ne": base.Filters.OPERATOR_NOT_EQUAL,
            "any": base.Filters.OPERATOR_CONTAINS_ANY,
            "lt": base.Filters.OPERATOR_LESS_THAN,
        }
        target = base.FilterTarget(property=prop)
        if isinstance(value, str):
            return base.Filters(operator=ops[op], target=target, value_text=value)
        return base.Filters(
            operator=ops[op], target=target, value_text_array=base.TextArray(values=list(value))
        )

    def _and(self, *filters: Any) -> Any:
        parts = [f for f in filters if f is not None]
        if len(parts) == 1:
            return parts[0]
        return self._pb_base.Filters(operator=self._pb_base.Filters.OPERATOR_AND, filters=parts)

    def _visibility(self, where: SearchFilter) -> base_pb2.Filters:
        """Owner, ACL and exclusion clauses of every chunk query (see SearchFilter)."""
        mine = [tenant_for(where.user_id)] if where.user_id is not None else []
        # owned_only with no user matches nothing: "-" is no tenant name and not shared.
        owners = (mine or ["-"]) if where.owned_only else [_SHARED_OWNER, *mine]
        parts = [
            self._filter("owner_key", "any", owners),
            self._filter("acl_keys", "any", [_PUBLIC_ACL, *(_key(p) for p in where.principals)]),
        ]
        parts += [self._filter("_id", "ne", _uid("chunk", i)) for i in where.exclude_ids]
        if where.doc_ids is not None:  # an empty tuple restricts to no document at all
            keys = [_key(d) for d in where.doc_ids] or ["-"]
            parts.append(self._filter("doc_key", "any", keys))
        result: base_pb2.Filters = self._and(*parts)
        return result

    def _request(
        self,
        collection: str,
        *,
        limit: int,
        props: list[str],
        vectors: bool = True,
        filters: Any = None,
        tenant: str = "",
        after: str = "",
        score: bool = False,
        explain: bool = False,
        distance: bool = False,
        **search: Any,
    ) -> search_get_pb2.SearchRequest:
        pb = self._pb_search
        request: search_get_pb2.SearchRequest = pb.SearchRequest(
            collection=collection,
            tenant=tenant,
            limit=limit,
            after=after,
            filters=filters,
            properties=pb.PropertiesRequest(
                non_ref_properties=props, return_all_nonref_properties=False
            ),
            metadata=pb.MetadataRequest(
                uuid=True,
                vector=vectors,
                vectors=[_VECTOR] if vectors else [],
                score=score,
                explain_score=explain,
                distance=distance,
            ),
            uses_123_api=True,
            uses_125_api=True,
            uses_127_api=True,
            **search,
        )
        return request

    def _object(
        self,
        collection: str,
        uid: str,
        props: Mapping[str, Any],
        *,
        vector: Vector | None = None,
        tenant: str = "",
    ) -> Any:
        from google.protobuf.struct_pb2 import Struct  # type: ignore[import-untyped]

        base, batch = self._pb_base, self._pb_batch
        scalars = Struct()
        scalars.update(
            {k: v for k, v in props.items() if v is not None and not isinstance(v, list)}
        )
        arrays = [
            base.TextArrayProperties(prop_name=k, values=v)
            for k, v in props.items()
            if isinstance(v, list) and v
        ]
        vectors = (
            [
                base.Vectors(
                    name=_VECTOR,
                    vector_bytes=np.asarray(vector, dtype="<f4").tobytes(),
                    type=base.Vectors.VECTOR_TYPE_SINGLE_FP32,
                )
            ]
            if vector is not None
            else []
        )
        return batch.BatchObject(
            collection=collection,
            uuid=uid,
            tenant=tenant,
            properties=batch.BatchObject.Properties(
                non_ref_properties=scalars, text_array_properties=arrays
            ),
            vectors=vectors,
        )

    def _write(self, what: str, pending: Sequence[_Pending]) -> None:
        """BatchObjects in slices of `batch_size`. Every object is accounted for: one the
        cluster rejected, or one of a slice that could not be sent, is reported in a
        `PartialWrite` after the remaining slices were tried."""
        failed: dict[str, str] = {}
        cause: Exception | None = None
        for start in range(0, len(pending), self._batch_size):
            part = pending[start : start + self._batch_size]
            request = self._pb_batch.BatchObjectsRequest(objects=[p.obj for p in part])
            try:
                reply = self._grpc_call(what, "BatchObjects", request)
            except ConfigurationError:
                raise
            except StoreError as exc:
                cause = exc
                for p in part:
                    failed[p.label] = str(exc)
                if isinstance(exc, StoreUnavailable):
                    # The cluster is gone: do not wait out the deadline once per slice.
                    for p in pending[start + self._batch_size :]:
                        failed[p.label] = "not sent: " + str(exc)
                    break
                continue
            for err in reply.errors:
                failed[part[err.index].label] = err.error
        if failed:
            shown = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:5])
            more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
            raise PartialWrite(
                f"Weaviate at {self.url} did not write {len(failed)} of {len(pending)} objects "
                f"({what}): {shown}{more}. The other objects were written; repeat the call to "
                "retry (writes are idempotent). `.failed` lists every id.",
                failed,
            ) from cause

    def _delete_where(self, what: str, collection: str, filters: Any, tenant: str = "") -> int:
        """BatchDelete until nothing matches (Weaviate deletes at most QUERY_MAXIMUM_RESULTS
        objects per call); returns how many were deleted."""
        total = 0
        for _ in range(1_000):
            reply = self._grpc_call(
                what,
                "BatchDelete",
                self._pb_delete.BatchDeleteRequest(
                    collection=collection, filters=filters, tenant=tenant
                ),
            )
            total += int(reply.successful)
            if reply.failed:
                raise StoreError(
                    f"Weaviate at {self.url} failed to delete {reply.failed} objects ({what}); "
                    "repeat the call."
                )
            if reply.matches < _MAX_RESULTS:
                break
        return total

    def _count(self, what: str, collection: str, tenant: str = "") -> int:
        request = self._pb_aggregate.AggregateRequest(
            collection=collection, tenant=tenant, objects_count=True
        )
        reply = self._grpc_call(what, "Aggregate", request)
        return int(reply.single_result.objects_count)

    def _scan(
        self,
        what: str,
        collection: str,
        props: list[str],
        *,
        tenant: str = "",
        vectors: bool = True,
    ) -> Iterator[Any]:
        """Every object of a collection (or tenant), in pages, with Weaviate's cursor."""
        after = ""
        while True:
            reply = self._search(
                what,
                self._request(
                    collection,
                    limit=_PAGE,
                    props=props,
                    vectors=vectors,
                    tenant=tenant,
                    after=after,
                ),
            )
            yield from reply.results
            if len(reply.results) < _PAGE:
                return
            after = str(self._uuid(reply.results[-1]))

    @staticmethod
    def _uuid(result: Any) -> uuid.UUID:
        meta = result.metadata
        return uuid.UUID(bytes=meta.id_as_bytes) if meta.id_as_bytes else uuid.UUID(meta.id)

    def _props(self, result: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in result.properties.non_ref_props.fields.items():
            kind = value.WhichOneof("kind")
            if kind is None or kind == "null_value":
                continue
            if kind == "list_value":
                lv = value.list_value
                inner = lv.WhichOneof("kind")
                out[name] = list(getattr(lv, inner).values) if inner == "text_values" else []
            else:
                out[name] = getattr(value, kind)
        return out

    def _vector(self, result: Any) -> Vector | None:
        meta = result.metadata
        for v in meta.vectors:
            if v.name == _VECTOR:
                return np.frombuffer(v.vector_bytes, dtype="<f4").astype(np.float32)
        if meta.vector_bytes:
            return np.frombuffer(meta.vector_bytes, dtype="<f4").astype(np.float32)
        return None

    def _chunk(self, result: Any) -> Chunk:
        p = self._props(result)
        vector = self._vector(result)
        if vector is None or vector.shape != (self._dim,):
            raise StoreCorrupted(
                f"Chunk {p.get('chunk_id')!r} in {self._names.chunks} at {self.url} has no "
                f"{self._dim}-dim vector; re-ingest its document."
            )
        metadata = p.get("metadata")
        return Chunk(
            id=p["chunk_id"],
            doc_id=p["doc_id"],
            text=p.get("text", ""),
            position=int(p.get("position", 0)),
            metadata=json.loads(metadata) if metadata else {},
            acl=tuple(p.get("acl", ())),
            owner=p.get("owner") or None,
            source=p.get("source"),
            title=p.get("title"),
            model_id=p.get("model_id", ""),
            vector=vector,
        )

    # ------------------------------------------------------------------ chunks

    def upsert_chunks(self, chunks: Sequence[Chunk]) -> int:
        """Write the chunks, then delete the same documents' chunks of earlier writes.

        Weaviate has no multi-object transaction: the new chunks are written first (each
        replaces the object of the same id), and the leftovers of a document that now has
        fewer chunks are deleted after, by `generation`. If a write fails nothing is
        deleted, so a document is never left with fewer chunks than either version had.
        """
        if not chunks:
            return 0
        vectors = vector_matrix([c.vector for c in chunks], self._dim, "upsert_chunks")
        for c in chunks:
            if c.model_id != self._model_id:
                raise EmbeddingModelMismatch(
                    f"Chunk {c.id!r} was embedded with {c.model_id!r}; this store holds "
                    f"{self._model_id!r} vectors."
                )
        generation = uuid.uuid4().hex
        pending = [
            _Pending(
                c.id,
                self._object(
                    self._names.chunks,
                    _uid("chunk", c.id),
                    {
                        "chunk_id": c.id,
                        "doc_id": c.doc_id,
                        "doc_key": _key(c.doc_id),
                        "owner": c.owner or "",
                        "owner_key": tenant_for(c.owner) if c.owner else _SHARED_OWNER,
                        "position": int(c.position),
                        "text": c.text,
                        "title": c.title,
                        "source": c.source,
                        "metadata": json.dumps(dict(c.metadata), sort_keys=True),
                        "acl": list(c.acl),
                        "acl_keys": [_key(a) for a in c.acl] or [_PUBLIC_ACL],
                        "model_id": c.model_id,
                        "generation": generation,
                    },
                    vector=vectors[i],
                ),
            )
            for i, c in enumerate(chunks)
        ]
        self._write("upsert chunks", pending)
        doc_keys = sorted({_key(c.doc_id) for c in chunks})
        self._delete_where(
            "delete replaced chunks",
            self._names.chunks,
            self._and(
                self._filter("doc_key", "any", doc_keys),
                self._filter("generation", "ne", generation),
            ),
        )
        return len(chunks)

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        if not doc_ids:
            return 0
        return self._delete_where(
            "delete documents",
            self._names.chunks,
            self._filter("doc_key", "any", [_key(d) for d in doc_ids]),
        )

    def get_chunks(self, ids: Sequence[str], *, user_id: str | None = None) -> list[Chunk]:
        if not ids:
            return []
        owners = [_SHARED_OWNER] + ([tenant_for(user_id)] if user_id else [])
        # ACLs are not checked here (as in the embedded store): this serves events that
        # name an item the caller already saw. Ownership is.
        found: dict[str, Chunk] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _MAX_RESULTS):
            part = unique[start : start + _MAX_RESULTS]
            reply = self._search(
                "get chunks",
                self._request(
                    self._names.chunks,
                    limit=len(part),
                    props=_CHUNK_PROPS,
                    filters=self._and(
                        self._filter("_id", "any", [_uid("chunk", i) for i in part]),
                        self._filter("owner_key", "any", owners),
                    ),
                ),
            )
            for r in reply.results:
                chunk = self._chunk(r)
                found[chunk.id] = chunk
        return [found[i] for i in ids if i in found]

    def get_vectors(self, ids: Sequence[str], *, user_id: str | None = None) -> dict[str, Vector]:
        # One search returns properties and vectors together; no narrower read saves a trip.
        return {
            c.id: c.vector for c in self.get_chunks(ids, user_id=user_id) if c.vector is not None
        }

    def count_chunks(self) -> int:
        return self._count("count chunks", self._names.chunks)

    def document_ids(self) -> list[str]:
        return sorted(
            {
                self._props(r)["doc_id"]
                for r in self._scan("list documents", self._names.chunks, ["doc_id"], vectors=False)
            }
        )

    # ------------------------------------------------------------------ search

    def _check_query_vector(self, vector: Vector) -> Vector:
        arr = np.asarray(vector, dtype=np.float32)
        if arr.shape != (self._dim,):
            raise DimensionMismatch(
                f"Query vector has shape {arr.shape}; the store's dimension is {self._dim}."
            )
        return arr

    def _targets(self) -> Any:
        return self._pb_search_base.Targets(target_vectors=[_VECTOR])

    def hybrid_search(
        self, text: str, vector: Vector, *, k: int, alpha: float, where: SearchFilter
    ) -> list[Hit]:
        """One Weaviate hybrid query (relativeScoreFusion) that returns the fused score,
        each hit's vector and the explain text the raw BM25 score is read from."""
        q = self._check_query_vector(vector)
        if where.doc_ids is not None and not where.doc_ids:
            return []
        sb = self._pb_search_base
        # Servers from 1.36.6 read alpha from the optional `alpha_param` (so 0 is not
        # "unset"); older ones from `alpha`. Same switch as weaviate-client's.
        if self._connected()._connection._weaviate_version.is_at_least(1, 36, 6):
            weight: dict[str, Any] = {"alpha_param": float(alpha), "use_alpha_param": True}
        else:
            weight = {"alpha": float(alpha)}
        hybrid = sb.Hybrid(
            query=text,
            properties=["text"],
            fusion_type=sb.Hybrid.FUSION_TYPE_RELATIVE_SCORE,
            vector_bytes=q.astype("<f4").tobytes(),
            targets=self._targets(),
            **weight,
        )
        reply = self._search(
            "hybrid search",
            self._request(
                self._names.chunks,
                limit=k,
                props=_CHUNK_PROPS,
                filters=self._visibility(where),
                score=True,
                explain=True,
                hybrid_search=hybrid,
            ),
        )
        hits = []
        for r in reply.results:
            chunk = self._chunk(r)
            assert chunk.vector is not None
            m = _EXPLAIN_BM25.search(r.metadata.explain_score)
            hits.append(
                Hit(
                    chunk=chunk,
                    bm25=float(m.group(1)) if m else None,
                    vector_cosine=float(chunk.vector @ q),
                    hybrid=min(1.0, max(0.0, float(r.metadata.score))),
                )
            )
        return hits

    def vector_search(self, vector: Vector, *, k: int, where: SearchFilter) -> list[Hit]:
        q = self._check_query_vector(vector)
        if where.doc_ids is not None and not where.doc_ids:
            return []
        near = self._pb_search_base.NearVector(
            vector_bytes=q.astype("<f4").tobytes(), targets=self._targets()
        )
        reply = self._search(
            "vector search",
            self._request(
                self._names.chunks,
                limit=k,
                props=_CHUNK_PROPS,
                filters=self._visibility(where),
                distance=True,
                near_vector=near,
            ),
        )
        hits = []
        for r in reply.results:
            chunk = self._chunk(r)
            assert chunk.vector is not None
            hits.append(Hit(chunk=chunk, vector_cosine=float(chunk.vector @ q)))
        return hits

    def keyword_search(self, text: str, *, k: int, where: SearchFilter) -> list[Hit]:
        if not text.strip() or (where.doc_ids is not None and not where.doc_ids):
            return []
        bm25 = self._pb_search_base.BM25(query=text, properties=["text"])
        reply = self._search(
            "keyword search",
            self._request(
                self._names.chunks,
                limit=k,
                props=_CHUNK_PROPS,
                filters=self._visibility(where),
                score=True,
                bm25_search=bm25,
            ),
        )
        return [Hit(chunk=self._chunk(r), bm25=float(r.metadata.score)) for r in reply.results]

    # ------------------------------------------------------------------ user logs

    def _registry(self, user_ids: set[str]) -> list[_Pending]:
        """Registry objects written with every log append (same request, no extra call),
        so `known_users` lists users even after another process forgot and re-added them."""
        return [
            _Pending(
                f"user {u!r}",
                self._object(
                    self._names.users, _uid("user", u), {"user_id": u, "tenant": tenant_for(u)}
                ),
            )
            for u in sorted(user_ids)
        ]

    def append_events(self, events: Sequence[StoredEvent]) -> None:
        if not events:
            return
        vectors = vector_matrix([e.vector for e in events], self._dim, "append_events")
        pending = [self._event_object(e, vectors[i]) for i, e in enumerate(events)]
        self._write("append events", pending + self._registry({e.user_id for e in events}))

    def _event_object(self, e: StoredEvent, vector: Vector) -> _Pending:
        """The object of an event in its user's tenant; its uuid is the event id's, so
        writing it again replaces the event."""
        return _Pending(
            e.id,
            self._object(
                self._names.events,
                _uid("event", e.id),
                {
                    "event_id": e.id,
                    "user_id": e.user_id,
                    "kind": e.kind,
                    "weight": float(e.weight),
                    "ts": _rfc3339(e.timestamp),
                    "item_id": e.item_id,
                    "text": e.text,
                    "session_id": e.session_id,
                    "model_id": e.model_id,
                },
                vector=vector,
                tenant=tenant_for(e.user_id),
            ),
        )

    def read_events(self, user_id: str) -> list[StoredEvent]:
        rows: list[Any] = []
        with self._missing_tenant_is_empty():
            rows = list(
                self._scan(
                    "read events", self._names.events, _EVENT_PROPS, tenant=tenant_for(user_id)
                )
            )
        out = []
        for r in rows:
            p = self._props(r)
            vector = self._vector(r)
            if p.get("user_id") != user_id or vector is None:
                continue  # another id hashed to the same tenant (never expected), or damage
            out.append(
                StoredEvent(
                    id=p["event_id"],
                    user_id=p["user_id"],
                    kind=p["kind"],
                    weight=float(p["weight"]),
                    timestamp=_parse_date(p["ts"]),
                    item_id=p.get("item_id"),
                    text=p.get("text"),
                    session_id=p.get("session_id"),
                    model_id=p.get("model_id", ""),
                    vector=vector,
                )
            )
        out.sort(key=lambda e: (e.timestamp, e.id))
        return out

    def read_event_arrays(self, user_id: str) -> EventArrays:
        return event_arrays(self.read_events(user_id), self._dim)

    def append_turns(self, turns: Sequence[StoredTurn]) -> None:
        if not turns:
            return
        vectors = vector_matrix([t.vector for t in turns], self._dim, "append_turns")
        pending = [self._turn_object(t, vectors[i]) for i, t in enumerate(turns)]
        self._write("append turns", pending + self._registry({t.user_id for t in turns}))

    def _turn_object(self, t: StoredTurn, vector: Vector) -> _Pending:
        """The object of a session turn in its user's tenant (uuid from the turn id)."""
        return _Pending(
            t.id,
            self._object(
                self._names.turns,
                _uid("turn", t.id),
                {
                    "turn_id": t.id,
                    "user_id": t.user_id,
                    "session_id": t.session_id,
                    "session_key": _key(t.session_id),
                    "role": t.role,
                    "text": t.text,
                    "ts": _rfc3339(t.timestamp),
                    "model_id": t.model_id,
                },
                vector=vector,
                tenant=tenant_for(t.user_id),
            ),
        )

    def read_turns(self, user_id: str, session_id: str) -> list[StoredTurn]:
        tenant = tenant_for(user_id)
        rows: list[Any] = []
        with self._missing_tenant_is_empty():
            reply = self._search(
                "read turns",
                self._request(
                    self._names.turns,
                    limit=_MAX_RESULTS,
                    props=_TURN_PROPS,
                    tenant=tenant,
                    filters=self._filter("session_key", "eq", _key(session_id)),
                ),
            )
            rows = list(reply.results)
            if len(rows) >= _MAX_RESULTS:
                # Past Weaviate's result cap a filter cannot page; scan the user's turns.
                rows = list(self._scan("read turns", self._names.turns, _TURN_PROPS, tenant=tenant))
        out = [
            t
            for t in map(self._stored_turn, rows)
            if t is not None and t.user_id == user_id and t.session_id == session_id
        ]
        out.sort(key=lambda t: (t.timestamp, t.id))
        return out

    def _stored_turn(self, result: Any) -> StoredTurn | None:
        """A turn object as a `StoredTurn`; None for one without its vector (damage)."""
        p = self._props(result)
        vector = self._vector(result)
        if vector is None:
            return None
        return StoredTurn(
            id=p["turn_id"],
            user_id=p["user_id"],
            session_id=p["session_id"],
            role=p["role"],
            text=p["text"],
            timestamp=_parse_date(p["ts"]),
            model_id=p.get("model_id", ""),
            vector=vector,
        )

    # ------------------------------------------------------------------ rewriting
    # What key rotation needs (`RewritableStore`): every user-owned object, and
    # rewriting objects in place. An object is rewritten by writing it again under the
    # same uuid in the same tenant; Weaviate's batch write replaces the object whole, so
    # no property of the old version (a plaintext item id, say) survives.

    def chunk_owners(self) -> list[str]:
        """Every user that owns at least one chunk. A scan of every chunk without
        vectors: Weaviate's cursor cannot be combined with a filter."""
        rows = self._scan("list chunk owners", self._names.chunks, ["owner"], vectors=False)
        return sorted({owner for r in rows if (owner := self._props(r).get("owner"))})

    def owned_chunks(self, user_id: str) -> list[Chunk]:
        """Every chunk `user_id` owns, with vectors, by id."""
        mine = self._filter("owner_key", "eq", tenant_for(user_id))
        reply = self._search(
            "read owned chunks",
            self._request(self._names.chunks, limit=_MAX_RESULTS, props=_CHUNK_PROPS, filters=mine),
        )
        rows = list(reply.results)
        if len(rows) >= _MAX_RESULTS:
            # Past Weaviate's result cap a filter cannot page; scan every chunk.
            rows = list(self._scan("read owned chunks", self._names.chunks, _CHUNK_PROPS))
        chunks = (self._chunk(r) for r in rows)
        return sorted((c for c in chunks if c.owner == user_id), key=lambda c: c.id)

    def read_user_turns(self, user_id: str) -> list[StoredTurn]:
        """Every turn of every session of `user_id`, oldest first."""
        rows: list[Any] = []
        with self._missing_tenant_is_empty():
            rows = list(
                self._scan("read turns", self._names.turns, _TURN_PROPS, tenant=tenant_for(user_id))
            )
        out = [t for t in map(self._stored_turn, rows) if t is not None and t.user_id == user_id]
        out.sort(key=lambda t: (t.timestamp, t.id))
        return out

    def rewrite_events(self, events: Sequence[StoredEvent]) -> int:
        """Replace the events with these ids. An event that is gone (its user forgotten
        meanwhile) is not written back, which would recreate the user's tenant."""
        if not events:
            return 0
        vectors = vector_matrix([e.vector for e in events], self._dim, "rewrite_events")
        present = self._present(self._names.events, "event", [(e.id, e.user_id) for e in events])
        pending = [
            self._event_object(e, vectors[i])
            for i, e in enumerate(events)
            if (tenant_for(e.user_id), _uid("event", e.id)) in present
        ]
        self._write("rewrite events", pending)
        return len(pending)

    def rewrite_turns(self, turns: Sequence[StoredTurn]) -> int:
        """Replace the turns with these ids, like `rewrite_events`."""
        if not turns:
            return 0
        vectors = vector_matrix([t.vector for t in turns], self._dim, "rewrite_turns")
        present = self._present(self._names.turns, "turn", [(t.id, t.user_id) for t in turns])
        pending = [
            self._turn_object(t, vectors[i])
            for i, t in enumerate(turns)
            if (tenant_for(t.user_id), _uid("turn", t.id)) in present
        ]
        self._write("rewrite turns", pending)
        return len(pending)

    def _present(
        self, collection: str, kind: str, records: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """(tenant, uuid) of those (record id, user id) whose object exists."""
        by_tenant: dict[str, list[str]] = {}
        for record_id, user_id in records:
            by_tenant.setdefault(tenant_for(user_id), []).append(_uid(kind, record_id))
        found: set[tuple[str, str]] = set()
        for tenant, uids in by_tenant.items():
            with self._missing_tenant_is_empty():
                for start in range(0, len(uids), _MAX_RESULTS):
                    part = uids[start : start + _MAX_RESULTS]
                    reply = self._search(
                        f"find the {kind}s to rewrite",
                        self._request(
                            collection,
                            limit=len(part),
                            props=[f"{kind}_id"],
                            vectors=False,
                            filters=self._filter("_id", "any", part),
                            tenant=tenant,
                        ),
                    )
                    found.update((tenant, str(self._uuid(r))) for r in reply.results)
        return found

    def drop_old_versions(self) -> None:
        """Nothing to drop through the API: Weaviate keeps no readable versions of a
        replaced or deleted object. Its old bytes stay in the cluster's on-disk segments
        until Weaviate's background compaction merges them, so a disk image or backup
        taken right after a rotation may still hold them (docs/privacy.md)."""

    def known_users(self) -> list[str]:
        return sorted(
            {
                self._props(r)["user_id"]
                for r in self._scan("list users", self._names.users, ["user_id"], vectors=False)
            }
        )

    def purge_before(self, log: str, cutoff: datetime) -> int:
        """Retention: delete `events` or `turns` older than `cutoff` in every user's tenant
        (one TenantsGet, then one BatchDelete per tenant)."""
        collection = {"events": self._names.events, "turns": self._names.turns}.get(log)
        if collection is None:
            raise InvalidInput(f"Unknown log {log!r}; expected 'events' or 'turns'.")
        reply = self._grpc_call(
            f"list the tenants of {log}",
            "TenantsGet",
            self._pb_tenants.TenantsGetRequest(collection=collection),
        )
        older = self._filter("ts", "lt", _rfc3339(cutoff))
        return sum(
            self._delete_where(f"purge {log}", collection, older, tenant=t.name)
            for t in reply.tenants
        )

    def get_user_settings(self, user_id: str) -> dict[str, Any] | None:
        reply = self._search(
            "read user settings",
            self._request(
                self._names.settings,
                limit=1,
                props=["settings"],
                vectors=False,
                filters=self._filter("_id", "eq", _uid("settings", user_id)),
            ),
        )
        if not reply.results:
            return None
        value: dict[str, Any] = json.loads(self._props(reply.results[0]).get("settings") or "{}")
        return value

    def put_user_settings(self, user_id: str, settings: Mapping[str, Any]) -> None:
        props = {
            "user_id": user_id,
            "settings": json.dumps(dict(settings), sort_keys=True),
            "updated": _rfc3339(datetime.now(timezone.utc)),
        }
        self._write(
            "write user settings",
            [
                _Pending(
                    f"settings of {user_id!r}",
                    self._object(self._names.settings, _uid("settings", user_id), props),
                )
            ],
        )

    def delete_user(self, user_id: str) -> Mapping[str, int]:
        """Drop the user's tenants (events, turns), their owned chunks, their settings
        (consent) and their registry entry. Counts are taken just before the drops."""
        tenant = tenant_for(user_id)
        client = self._connected()
        counts: dict[str, int] = {}
        for kind, collection in (("events", self._names.events), ("turns", self._names.turns)):
            n = 0
            with self._missing_tenant_is_empty():
                n = self._count(f"count {kind}", collection, tenant)
            if n:
                self._call(
                    f"drop the tenant of {kind}", partial(_drop_tenant, client, collection, tenant)
                )
            counts[kind] = n
        counts["owned_chunks"] = self._delete_where(
            "delete owned chunks",
            self._names.chunks,
            self._filter("owner_key", "eq", tenant),
        )
        counts["user_settings"] = self._delete_where(
            "delete user settings",
            self._names.settings,
            self._filter("_id", "eq", _uid("settings", user_id)),
        )
        self._delete_where(
            "delete user registry entry",
            self._names.users,
            self._filter("_id", "eq", _uid("user", user_id)),
        )
        return counts

    # ------------------------------------------------------------------ embedding versions
    # What re-embedding needs (pertinent/versions.py): every shared chunk and every user
    # with settings (read-only scans), small named records in `<prefix>Meta` (the version
    # registry), and dropping the collections of a version that failed half-way.

    def shared_chunks(self) -> list[Chunk]:
        """Every shared (unowned) chunk, with vectors, by id. A scan of every chunk:
        Weaviate's cursor cannot be combined with a filter."""
        rows = self._scan("read shared chunks", self._names.chunks, _CHUNK_PROPS)
        chunks = (self._chunk(r) for r in rows)
        return sorted((c for c in chunks if not c.owner), key=lambda c: c.id)

    def user_settings_ids(self) -> list[str]:
        """Every user with stored settings (consent), whether or not they have data."""
        rows = self._scan("list user settings", self._names.settings, ["user_id"], vectors=False)
        return sorted({u for r in rows if (u := self._props(r).get("user_id"))})

    def _meta_of(self, prefix: str | None) -> str:
        return _Names.of(prefix).meta if prefix is not None else self._names.meta

    def read_meta(self, key: str, *, prefix: str | None = None) -> str | None:
        """The value of the `<prefix>Meta` record `key` (this store's prefix by default);
        None if there is none, or no such collection yet (a store never opened)."""
        request = self._request(
            self._meta_of(prefix),
            limit=1,
            props=["value"],
            vectors=False,
            filters=self._filter("_id", "eq", _uid("meta", key)),
        )
        try:
            reply = self._search(f"read {key}", request)
        except StoreError:
            if not self.collections_exist(prefix=prefix):
                return None
            raise
        if not reply.results:
            return None
        value = self._props(reply.results[0]).get("value")
        return str(value) if value is not None else None

    def write_meta(self, key: str, value: str, *, prefix: str | None = None) -> None:
        """Replace the `<prefix>Meta` record `key` whole: one object written under one
        uuid, so a reader sees the old value or the new one, never a mix."""
        obj = self._object(self._meta_of(prefix), _uid("meta", key), {"key": key, "value": value})
        self._write(f"write {key}", [_Pending(key, obj)])

    def collections_exist(self, *, prefix: str | None = None) -> bool:
        """Whether the `<prefix>Meta` collection exists (this store's prefix by default)."""
        client = self._connected()
        name = self._meta_of(prefix)
        return self._call(f"look up collection {name}", partial(_exists, client, name))

    def drop_collections(self, *, prefix: str) -> None:
        """Delete every collection of the store under `prefix`: a version that is to be
        rebuilt. Irreversible; only re-embedding calls it, never on the open store."""
        if prefix == self.prefix:
            raise ConfigurationError(
                f"Refusing to drop the open store's own collections ({prefix})."
            )
        client = self._connected()
        for name in _Names.of(prefix).all():
            if self._call(f"look up collection {name}", partial(_exists, client, name)):
                self._call(f"drop collection {name}", partial(_drop, client, name))

    def close(self) -> None:
        """Close the client's HTTP and gRPC connections. Safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


class _MetaOnly(WeaviateStore):
    """A connection for the `<prefix>Meta` records and collection management only: it
    creates no collection and checks no model, because the version registry must be
    read before the model (and so the store to open) is known."""

    def _ensure_schema(self) -> None:
        return None


def open_meta(
    url: str,
    *,
    prefix: str,
    api_key: str | None = None,
    grpc_port: int = 50051,
    timeout_s: float = 30.0,
) -> WeaviateStore:
    """A `WeaviateStore` connection for `read_meta` / `write_meta` / `collections_exist`
    / `drop_collections` (`prefix` is the default one); its chunk and log methods are
    not to be used."""
    return _MetaOnly(
        url,
        model_id="",
        dim=0,
        api_key=api_key,
        grpc_port=grpc_port,
        timeout_s=timeout_s,
        prefix=prefix,
    )
