"""An in-process Weaviate that speaks its REST and gRPC protocols, for tests.

The real client (`weaviate.connect_to_custom`) talks to it unchanged: a stdlib HTTP
server answers the REST calls (meta, readiness, schema, tenants) and a grpcio server
implements the `weaviate.v1.Weaviate` service from the stubs that ship in
weaviate-client (Search, BatchObjects, BatchDelete, Aggregate, TenantsGet) plus the gRPC
health check. Nothing here is canned: objects are kept per collection and tenant, and
queries are answered with Weaviate's documented semantics, so ranking assertions mean
something:

- tenants: multi-tenant collections need a tenant on every request, auto-create it
  on write when `autoTenantCreation` is on, and fail reads of a missing tenant with
  Weaviate's `tenant not found: "<name>"`;
- filters: Equal, NotEqual, ContainsAny/All/None, And, Or, Not, on `_id` and on
  properties that have a filterable index (`field` tokenization compares whole values),
  and LessThan / GreaterThan (or equal) on date and number properties;
- BM25 (k1, b from the schema, word tokenization: lowercase alphanumeric runs), exact
  cosine for vectors, and hybrid search with `relativeScoreFusion` exactly as
  Weaviate's `hybrid` package does it: each leg fetches max(100, limit) results, is
  min-max normalised (all-equal scores get the full weight), weighted by alpha
  (vector) and 1-alpha (keyword), summed, sorted, cut to `limit`; `explainScore`
  carries each leg's original and normalised score in Weaviate's wording;
- cursors (`after`), `limit`, `offset`, and `QUERY_MAXIMUM_RESULTS` (10 000).

Every request is recorded (`calls`) so wire tests can read the exact gRPC messages
and REST bodies, and faults can be injected (`inject`, `reject_objects`, `stop`) to
make the cluster refuse, stall, answer UNAVAILABLE / DEADLINE_EXCEEDED / HTTP 500, or
fail some objects of a batch.
"""

from __future__ import annotations

import json
import math
import re
import struct
import threading
import uuid as uuid_lib
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    base_search_pb2,
    batch_delete_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    tenants_pb2,
    weaviate_pb2_grpc,
)

__all__ = ["Call", "FakeWeaviate", "Fault"]

VERSION = "1.32.4"
QUERY_MAXIMUM_RESULTS = 10_000
QUERY_DEFAULTS_LIMIT = 10
HYBRID_LEG_LIMIT = 100  # Weaviate's hybrid.DefaultLimit: each leg fetches at least this many
_CLASS_NAME = re.compile(r"^[A-Z][_0-9A-Za-z]*$")
_PROP_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,64}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_WORD = re.compile(r"[^\W_]+")
_DATA_TYPES = {"text", "text[]", "int", "int[]", "number", "number[]", "boolean", "date", "uuid"}
_Op = base_pb2.Filters.Operator
_RANGE = {
    _Op.OPERATOR_LESS_THAN,
    _Op.OPERATOR_LESS_THAN_EQUAL,
    _Op.OPERATOR_GREATER_THAN,
    _Op.OPERATOR_GREATER_THAN_EQUAL,
}


class _Abort(Exception):
    """Fail the current RPC with a status, as Weaviate would."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass
class Call:
    """One request as the fake received it."""

    kind: str  # "grpc" or "rest"
    method: str  # gRPC method name ("Search"), or the HTTP verb
    path: str = ""  # REST path
    message: Any = None  # the decoded protobuf request (gRPC)
    body: Any = None  # the decoded JSON body (REST)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    """Misbehaviour for calls whose target matches `target`.

    `target` is a gRPC method name ("Search", "BatchObjects", …), optionally with a
    collection ("Search PertinentEvents"), or a REST call written "VERB /path-prefix"
    ("GET /v1/meta", "POST /v1/schema"). The first `skip` matching
    calls pass; the next `times` ones wait `delay` seconds, then fail with `code`
    (gRPC) or `http_status` (REST); with neither they are served after the delay.
    """

    target: str
    code: grpc.StatusCode | None = None
    http_status: int | None = None
    delay: float = 0.0
    times: int = 1
    skip: int = 0
    details: str = "injected fault"
    seen: int = 0

    def matches(self, target: str) -> bool:
        """gRPC calls are offered as "Method Collection": a fault on "Search" hits every
        search, one on "Search PertinentEvents" only that collection's."""
        if self.target == target or target.startswith(self.target + " "):
            return True
        return " " in self.target and target.startswith(self.target)


@dataclass
class _Object:
    uuid: str
    props: dict[str, Any]
    vectors: dict[str, np.ndarray]
    order: int


@dataclass
class _Collection:
    schema: dict[str, Any]
    shards: dict[str, dict[str, _Object]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.schema["class"])

    @property
    def multi_tenant(self) -> bool:
        return bool(self.schema["multiTenancyConfig"]["enabled"])

    @property
    def props(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.schema["properties"]}

    def vector_names(self) -> list[str]:
        return sorted(self.schema.get("vectorConfig", {}))


def _tokens(text: str) -> list[str]:
    """Weaviate's `word` tokenization: alphanumeric runs, lowercased."""
    return _WORD.findall(text.lower())


def _unpack(data: bytes) -> np.ndarray:
    return np.asarray(struct.unpack(f"<{len(data) // 4}f", data), dtype=np.float32)


def _pack(vector: np.ndarray) -> bytes:
    return struct.pack(f"<{len(vector)}f", *[float(x) for x in vector])


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0
    return 1.0 - float(a @ b) / (na * nb)


def _go_float(x: float) -> str:
    """Format like Go's %v for a float32, close enough for the explainScore text."""
    return repr(float(np.float32(x)))


class FakeWeaviate:
    """Start with `FakeWeaviate().start()`; `url` and `grpc_port` go to the client.

    `api_key` turns on authentication: REST and gRPC calls must carry
    ``Authorization: Bearer <api_key>`` or get 401 / UNAUTHENTICATED.
    """

    def __init__(self, *, api_key: str | None = None, version: str = VERSION) -> None:
        self.api_key = api_key
        self.version = version
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self._rejects: list[tuple[Callable[[str, dict[str, Any]], bool], str]] = []
        self._collections: dict[str, _Collection] = {}
        self._lock = threading.RLock()
        self._order = 0
        self._stopping = threading.Event()
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self.http_port = 0
        self.grpc_port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeWeaviate:
        self._stopping.clear()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_Servicer(self), self._grpc)
        self._grpc.add_generic_rpc_handlers((self._health_handler(),))
        self.grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        self._grpc.start()
        handler = type("_BoundHandler", (_RestHandler,), {"fake": self})
        self._http = ThreadingHTTPServer(("127.0.0.1", self.http_port), handler)
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        """Close both ports: clients now get connection refused. Data is kept, so
        `start()` again brings the same cluster back (on the same ports)."""
        self._stopping.set()
        if self._grpc is not None:
            self._grpc.stop(grace=0).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> FakeWeaviate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # ------------------------------------------------------------------ test helpers

    def inject(self, target: str, **kwargs: Any) -> Fault:
        """Add a `Fault` (see its fields); returns it so tests can read `seen`."""
        fault = Fault(target=target, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def reject_objects(self, predicate: Callable[[str, dict[str, Any]], bool], error: str) -> None:
        """Fail (per object, inside a successful BatchObjects reply) every object whose
        (uuid, properties) satisfy `predicate`, as Weaviate does for invalid objects."""
        with self._lock:
            self._rejects.append((predicate, error))

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()
            self._rejects.clear()

    def grpc_calls(self, method: str) -> list[Any]:
        return [c.message for c in self.calls if c.kind == "grpc" and c.method == method]

    def rest_calls(self, method: str, path_prefix: str = "") -> list[Call]:
        return [
            c
            for c in self.calls
            if c.kind == "rest" and c.method == method and c.path.startswith(path_prefix)
        ]

    def objects(self, collection: str, tenant: str = "") -> list[dict[str, Any]]:
        """The stored objects' properties (for assertions)."""
        with self._lock:
            coll = self._collections.get(collection)
            if coll is None:
                return []
            shard = coll.shards.get(tenant, {})
            return [dict(o.props, _id=o.uuid) for o in sorted(shard.values(), key=_by_order)]

    def vectors(self, collection: str, tenant: str = "") -> list[np.ndarray]:
        """The stored objects' vectors, every named vector of each (for assertions)."""
        with self._lock:
            coll = self._collections.get(collection)
            shard = coll.shards.get(tenant, {}) if coll is not None else {}
            return [v for o in sorted(shard.values(), key=_by_order) for v in o.vectors.values()]

    def set_property(self, collection: str, prop: str, value: Any, tenant: str = "") -> None:
        """Overwrite a property on every object of a collection (to fake older data)."""
        with self._lock:
            for o in self._collections[collection].shards.get(tenant, {}).values():
                o.props[prop] = value

    def tenants(self, collection: str) -> list[str]:
        with self._lock:
            coll = self._collections.get(collection)
            return sorted(coll.shards) if coll is not None and coll.multi_tenant else []

    def collection_names(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    # ------------------------------------------------------------------ plumbing

    def _fault_for(self, target: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.matches(target):
                    f.seen += 1
                    if f.skip < f.seen <= f.skip + f.times:
                        return f
            return None

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _authorized(self, header: str | None) -> bool:
        return self.api_key is None or header == f"Bearer {self.api_key}"

    def _health_handler(self) -> grpc.GenericRpcHandler:
        def check(
            request: health_weaviate_pb2.WeaviateHealthCheckRequest, context: grpc.ServicerContext
        ) -> health_weaviate_pb2.WeaviateHealthCheckResponse:
            self.calls.append(Call("grpc", "HealthCheck", message=request))
            return health_weaviate_pb2.WeaviateHealthCheckResponse(
                status=health_weaviate_pb2.WeaviateHealthCheckResponse.SERVING
            )

        return grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    check,
                    request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
                    response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString,
                )
            },
        )

    def _collection(self, name: str) -> _Collection:
        coll = self._collections.get(name)
        if coll is None:
            raise _Abort(
                grpc.StatusCode.UNKNOWN,
                f"could not find class {name} in schema",
            )
        return coll

    def _shard_for_read(self, coll: _Collection, tenant: str) -> dict[str, _Object]:
        if coll.multi_tenant:
            if not tenant:
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    f"class {coll.name} has multi-tenancy enabled, but request was without tenant",
                )
            shard = coll.shards.get(tenant)
            if shard is None:
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    f"explorer: get class: search: object search at index {coll.name.lower()}: "
                    f'tenant not found: "{tenant}"',
                )
            return shard
        if tenant:
            raise _Abort(
                grpc.StatusCode.UNKNOWN,
                f"class {coll.name} has multi-tenancy disabled, but request was with tenant",
            )
        return coll.shards.setdefault("", {})

    # ------------------------------------------------------------------ schema (REST)

    def create_class(self, body: dict[str, Any]) -> tuple[int, Any]:
        name = str(body.get("class", ""))
        name = name[:1].upper() + name[1:]
        if not _CLASS_NAME.match(name):
            return 422, _error(f"'{name}' is not a valid class name")
        with self._lock:
            if name in self._collections:
                return 422, _error(f'class name "{name}" already exists')
            props = []
            for p in body.get("properties") or []:
                pname = p.get("name", "")
                dtype = (p.get("dataType") or [""])[0]
                if not _PROP_NAME.match(pname):
                    return 422, _error(f"'{pname}' is not a valid property name")
                if dtype not in _DATA_TYPES:
                    return 422, _error(f"property '{pname}': unknown data type {dtype!r}")
                if any(q["name"] == pname for q in props):
                    return 422, _error(f"class {name}: conflict for property {pname}")
                text = dtype in ("text", "text[]")
                props.append(
                    {
                        "name": pname,
                        "dataType": [dtype],
                        "description": p.get("description", ""),
                        "indexFilterable": p.get("indexFilterable", True),
                        "indexSearchable": p.get("indexSearchable", text),
                        "indexRangeFilters": p.get("indexRangeFilters", False),
                        **({"tokenization": p.get("tokenization", "word")} if text else {}),
                    }
                )
            vector_config = body.get("vectorConfig") or {}
            for vname, vc in vector_config.items():
                vectorizer = vc.get("vectorizer") or {}
                if list(vectorizer) != ["none"]:
                    return 422, _error(
                        f"vector {vname!r}: no module with name {next(iter(vectorizer), '')!r} "
                        "present (this cluster has no vectorizer modules)"
                    )
            inverted = body.get("invertedIndexConfig") or {}
            bm25 = inverted.get("bm25") or {}
            stopwords = inverted.get("stopwords") or {}
            mt = body.get("multiTenancyConfig") or {}
            schema = {
                "class": name,
                "description": body.get("description", ""),
                "properties": props,
                "invertedIndexConfig": {
                    "bm25": {"k1": bm25.get("k1", 1.2), "b": bm25.get("b", 0.75)},
                    "stopwords": {
                        "preset": stopwords.get("preset", "en"),
                        "additions": stopwords.get("additions"),
                        "removals": stopwords.get("removals"),
                    },
                    "cleanupIntervalSeconds": 60,
                },
                "multiTenancyConfig": {
                    "enabled": bool(mt.get("enabled", False)),
                    "autoTenantCreation": bool(mt.get("autoTenantCreation", False)),
                    "autoTenantActivation": bool(mt.get("autoTenantActivation", False)),
                },
                "replicationConfig": {"factor": 1},
                "vectorConfig": vector_config,
            }
            self._collections[name] = _Collection(schema)
            return 200, schema

    def _rest(self, verb: str, path: str, body: Any, auth: str | None) -> tuple[int, Any]:
        self.calls.append(Call("rest", verb, path=path, body=body))
        fault = self._fault_for(f"{verb} {path}")
        if fault is not None:
            self._sleep(fault.delay)
            if fault.http_status is not None:
                return fault.http_status, _error(fault.details)
        if path.startswith("/v1/.well-known/"):
            if path in ("/v1/.well-known/ready", "/v1/.well-known/live"):
                return 200, None
            return 404, None
        if not self._authorized(auth):
            return 401, {"code": 401, "message": "unauthorized: invalid api key"}
        if path == "/v1/meta" and verb == "GET":
            return 200, {
                "hostname": "http://[::]:8080",
                "modules": {},
                "version": self.version,
                "grpcMaxMessageSize": 104858000,
            }
        if path == "/v1/schema":
            if verb == "GET":
                with self._lock:
                    return 200, {"classes": [c.schema for c in self._collections.values()]}
            if verb == "POST":
                if not isinstance(body, dict):
                    return 422, _error("the request body must be a class object")
                return self.create_class(body)
        m = re.fullmatch(r"/v1/schema/([^/]+)(/tenants)?", path)
        if m:
            name, tenants = m.group(1), m.group(2)
            with self._lock:
                coll = self._collections.get(name)
                if coll is None:
                    return 404, None if verb == "GET" and not tenants else _error(
                        f"class {name!r} not found"
                    )
                if not tenants:
                    if verb == "GET":
                        return 200, coll.schema
                    if verb == "DELETE":
                        del self._collections[name]
                        return 200, None
                elif not coll.multi_tenant:
                    return 422, _error(f"multi-tenancy is not enabled for class {name!r}")
                elif verb == "GET":
                    return 200, [{"name": t, "activityStatus": "HOT"} for t in sorted(coll.shards)]
                elif verb == "POST":
                    names = [t.get("name", "") for t in body or []]
                    for t in names:
                        if not _TENANT_NAME.match(t):
                            return 422, _error(f"tenant name {t!r} is invalid")
                    for t in names:
                        coll.shards.setdefault(t, {})
                    return 200, [{"name": t, "activityStatus": "HOT"} for t in names]
                elif verb == "DELETE":
                    for t in body or []:
                        coll.shards.pop(str(t), None)
                    return 200, None
        return 404, _error(f"no route for {verb} {path}")

    # ------------------------------------------------------------------ gRPC methods

    def batch_objects(self, req: batch_pb2.BatchObjectsRequest) -> batch_pb2.BatchObjectsReply:
        errors = []
        with self._lock:
            for index, obj in enumerate(req.objects):
                try:
                    self._put_object(obj)
                except _Abort as exc:
                    errors.append(
                        batch_pb2.BatchObjectsReply.BatchError(index=index, error=exc.details)
                    )
        return batch_pb2.BatchObjectsReply(took=0.001, errors=errors)

    def _put_object(self, obj: batch_pb2.BatchObject) -> None:
        coll = self._collections.get(obj.collection)
        if coll is None:
            raise _Abort(grpc.StatusCode.UNKNOWN, f"class {obj.collection!r} not present in schema")
        if coll.multi_tenant:
            if not obj.tenant:
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    f"class {coll.name} has multi-tenancy enabled, but request was without tenant",
                )
            if obj.tenant not in coll.shards:
                if not coll.schema["multiTenancyConfig"]["autoTenantCreation"]:
                    raise _Abort(grpc.StatusCode.UNKNOWN, f'tenant not found: "{obj.tenant}"')
                if not _TENANT_NAME.match(obj.tenant):
                    raise _Abort(grpc.StatusCode.UNKNOWN, f"tenant name {obj.tenant!r} is invalid")
            shard_name = obj.tenant
        elif obj.tenant:
            raise _Abort(
                grpc.StatusCode.UNKNOWN,
                f"class {coll.name} has multi-tenancy disabled, but request was with tenant",
            )
        else:
            shard_name = ""
        try:
            uid = str(uuid_lib.UUID(obj.uuid))
        except ValueError as exc:
            raise _Abort(grpc.StatusCode.UNKNOWN, f"invalid uuid {obj.uuid!r}") from exc
        props = self._decode_props(coll, obj.properties)
        vectors: dict[str, np.ndarray] = {}
        names = coll.vector_names()
        for v in obj.vectors:
            if v.name not in names:
                raise _Abort(grpc.StatusCode.UNKNOWN, f"target vector {v.name!r} not found")
            vectors[v.name] = _unpack(v.vector_bytes)
        if obj.vector_bytes:
            if names:
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    f"class {coll.name} has named vectors {names}; send vectors with their name",
                )
            vectors[""] = _unpack(obj.vector_bytes)
        shard = coll.shards.get(shard_name, {})
        for name, vec in vectors.items():
            for other in shard.values():
                have = other.vectors.get(name)
                if have is not None and other.uuid != uid and len(have) != len(vec):
                    raise _Abort(
                        grpc.StatusCode.UNKNOWN,
                        f"insert to vector index: new node has a vector with length {len(vec)}. "
                        f"Existing nodes have vectors with length {len(have)}",
                    )
                if have is not None:
                    break
        for predicate, error in self._rejects:
            if predicate(uid, props):
                raise _Abort(grpc.StatusCode.UNKNOWN, error)
        self._order += 1
        coll.shards.setdefault(shard_name, {})[uid] = _Object(uid, props, vectors, self._order)

    def _decode_props(
        self, coll: _Collection, p: batch_pb2.BatchObject.Properties
    ) -> dict[str, Any]:
        schema = coll.props
        raw: dict[str, Any] = json_format.MessageToDict(p.non_ref_properties)
        for arr in p.text_array_properties:
            raw[arr.prop_name] = list(arr.values)
        for arr in p.int_array_properties:
            raw[arr.prop_name] = [int(x) for x in arr.values]
        for arr in p.number_array_properties:
            raw[arr.prop_name] = list(arr.values) or list(_unpack_f64(arr.values_bytes))
        for name in p.empty_list_props:
            raw[name] = []
        out: dict[str, Any] = {}
        for name, value in raw.items():
            prop = schema.get(name)
            if prop is None:
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    f"no such prop with name '{name}' found in class '{coll.name}' in the schema. "
                    "Check your schema files for which properties in this class are available",
                )
            if value is None:
                continue
            out[name] = _coerce(name, prop["dataType"][0], value)
        return out

    def search(self, req: search_get_pb2.SearchRequest) -> search_get_pb2.SearchReply:
        with self._lock:
            coll = self._collection(req.collection)
            shard = self._shard_for_read(coll, req.tenant)
            limit = req.limit or QUERY_DEFAULTS_LIMIT
            if limit + req.offset > QUERY_MAXIMUM_RESULTS:
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    f"query maximum results exceeded: limit {limit} + offset {req.offset} > "
                    f"{QUERY_MAXIMUM_RESULTS}",
                )
            objs = sorted(shard.values(), key=_by_order)
            has_search = any(
                req.HasField(f) for f in ("hybrid_search", "near_vector", "bm25_search")
            )
            if req.after:
                if has_search or req.HasField("filters") or req.offset or req.sort_by:
                    raise _Abort(
                        grpc.StatusCode.UNKNOWN,
                        "explorer: list class: search: invalid 'after' parameter: other params "
                        "cannot be set along with after",
                    )
                ordered = sorted(objs, key=lambda o: o.uuid)
                rows = [(o, {}) for o in ordered if o.uuid > req.after][:limit]
                return self._reply(coll, req, rows)
            allowed = (
                [o for o in objs if self._match(coll, req.filters, o)]
                if req.HasField("filters")
                else objs
            )
            if req.HasField("hybrid_search"):
                scored = self._hybrid(coll, shard, allowed, req.hybrid_search, limit + req.offset)
            elif req.HasField("near_vector"):
                scored = self._near_vector(coll, allowed, req.near_vector, limit + req.offset)
            elif req.HasField("bm25_search"):
                bm = req.bm25_search
                props = list(bm.properties) or self._searchable(coll)
                ranked = self._bm25(coll, shard, allowed, bm.query, props)
                scored = [(o, {"score": s}) for o, s in ranked[: limit + req.offset]]
            else:
                scored = [(o, {}) for o in allowed]
            return self._reply(coll, req, scored[req.offset : req.offset + limit])

    def _reply(
        self,
        coll: _Collection,
        req: search_get_pb2.SearchRequest,
        rows: list[tuple[_Object, dict[str, Any]]],
    ) -> search_get_pb2.SearchReply:
        results = []
        meta_req = req.metadata
        for obj, info in rows:
            meta = search_get_pb2.MetadataResult()
            if req.uses_127_api:
                meta.id_as_bytes = uuid_lib.UUID(obj.uuid).bytes
            else:
                meta.id = obj.uuid
            if "score" in info and (meta_req.score or req.HasField("hybrid_search")):
                meta.score = float(np.float32(info["score"]))
                meta.score_present = True
            if "explain" in info and meta_req.explain_score:
                meta.explain_score = info["explain"]
                meta.explain_score_present = True
            if "distance" in info and meta_req.distance:
                meta.distance = float(np.float32(info["distance"]))
                meta.distance_present = True
            wanted = set(meta_req.vectors) if meta_req.vectors else set()
            if meta_req.vector:
                wanted |= set(obj.vectors)
            for name in sorted(wanted):
                vec = obj.vectors.get(name)
                if vec is None:
                    continue
                if name == "":
                    meta.vector_bytes = _pack(vec)
                else:
                    meta.vectors.append(
                        base_pb2.Vectors(
                            name=name,
                            vector_bytes=_pack(vec),
                            type=base_pb2.Vectors.VECTOR_TYPE_SINGLE_FP32,
                        )
                    )
            results.append(
                search_get_pb2.SearchResult(
                    metadata=meta,
                    properties=search_get_pb2.PropertiesResult(
                        target_collection=coll.name,
                        non_ref_props=self._props_out(coll, obj, req),
                    ),
                )
            )
        return search_get_pb2.SearchReply(took=0.001, results=results)

    def _props_out(
        self, coll: _Collection, obj: _Object, req: search_get_pb2.SearchRequest
    ) -> properties_pb2.Properties:
        if not req.HasField("properties") or req.properties.return_all_nonref_properties:
            names = list(obj.props)
        else:
            names = [n for n in req.properties.non_ref_properties if n in obj.props]
        out = properties_pb2.Properties()
        for name in names:
            dtype = coll.props[name]["dataType"][0]
            out.fields[name].CopyFrom(_value(dtype, obj.props[name]))
        return out

    # ------------------------------------------------------------------ search legs

    def _searchable(self, coll: _Collection) -> list[str]:
        return [
            p["name"]
            for p in coll.schema["properties"]
            if p["dataType"][0] in ("text", "text[]") and p.get("indexSearchable")
        ]

    def _bm25(
        self,
        coll: _Collection,
        shard: dict[str, _Object],
        allowed: list[_Object],
        query: str,
        props: list[str],
    ) -> list[tuple[_Object, float]]:
        """BM25F as Weaviate scores it: corpus statistics over the whole shard, the
        filter only decides which objects may be returned."""
        preset = coll.schema["invertedIndexConfig"]["stopwords"]["preset"]
        if preset != "none":
            raise _Abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"the fake scores BM25 with stopwords preset 'none' only (got {preset!r})",
            )
        for p in props:
            spec = coll.props.get(p)
            if spec is None or not spec.get("indexSearchable"):
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    f"property {p!r} is not searchable (indexSearchable is off or it is unknown)",
                )
        bm25 = coll.schema["invertedIndexConfig"]["bm25"]
        k1, b = float(bm25["k1"]), float(bm25["b"])
        terms = list(dict.fromkeys(_tokens(query)))
        if not terms:
            return []

        def doc_tokens(o: _Object, p: str) -> list[str]:
            value = o.props.get(p)
            if value is None:
                return []
            if isinstance(value, list):
                return [t for v in value for t in _tokens(str(v))]
            return _tokens(str(value))

        scores: dict[str, float] = {}
        for p in props:
            docs = {o.uuid: doc_tokens(o, p) for o in shard.values()}
            n_docs = len(docs)
            if n_docs == 0:
                continue
            avgdl = sum(len(t) for t in docs.values()) / n_docs or 1.0
            for term in terms:
                n_t = sum(1 for t in docs.values() if term in t)
                if n_t == 0:
                    continue
                idf = math.log(1 + (n_docs - n_t + 0.5) / (n_t + 0.5))
                for o in allowed:
                    toks = docs[o.uuid]
                    tf = toks.count(term)
                    if tf == 0:
                        continue
                    norm = tf + k1 * (1 - b + b * len(toks) / avgdl)
                    scores[o.uuid] = scores.get(o.uuid, 0.0) + idf * tf * (k1 + 1) / norm
        by_id = {o.uuid: o for o in allowed}
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(by_id[u], s) for u, s in ranked]

    def _target(self, coll: _Collection, targets: base_search_pb2.Targets | None) -> str:
        names = coll.vector_names()
        if targets is not None and targets.target_vectors:
            if len(targets.target_vectors) != 1 or targets.target_vectors[0] not in names:
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    f"target vectors {list(targets.target_vectors)} not in {names}",
                )
            return str(targets.target_vectors[0])
        if len(names) > 1:
            raise _Abort(
                grpc.StatusCode.UNKNOWN,
                f"class {coll.name} has multiple vectors {names}, but no target vector was given",
            )
        return names[0] if names else ""

    def _query_vector(self, nv: base_search_pb2.NearVector) -> np.ndarray:
        if nv.vector_bytes:
            return _unpack(nv.vector_bytes)
        if nv.vectors:
            return _unpack(nv.vectors[0].vector_bytes)
        if nv.vector_for_targets:
            return _unpack(nv.vector_for_targets[0].vector_bytes)
        if nv.vector:
            return np.asarray(nv.vector, dtype=np.float32)
        raise _Abort(grpc.StatusCode.UNKNOWN, "nearVector: no vector given")

    def _dense(
        self, coll: _Collection, allowed: list[_Object], q: np.ndarray, target: str, depth: int
    ) -> list[tuple[_Object, float]]:
        out = []
        for o in allowed:
            vec = o.vectors.get(target)
            if vec is None:
                continue
            if len(vec) != len(q):
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    f"vector search: knn search: distance between entrypoint and query node: "
                    f"vector lengths don't match: {len(vec)} vs {len(q)}",
                )
            out.append((o, _cosine_distance(q, vec)))
        out.sort(key=lambda t: (t[1], t[0].uuid))
        return out[:depth]

    def _near_vector(
        self, coll: _Collection, allowed: list[_Object], nv: base_search_pb2.NearVector, depth: int
    ) -> list[tuple[_Object, dict[str, Any]]]:
        target = self._target(coll, nv.targets if nv.HasField("targets") else None)
        q = self._query_vector(nv)
        return [(o, {"distance": d}) for o, d in self._dense(coll, allowed, q, target, depth)]

    def _hybrid(
        self,
        coll: _Collection,
        shard: dict[str, _Object],
        allowed: list[_Object],
        h: base_search_pb2.Hybrid,
        limit: int,
    ) -> list[tuple[_Object, dict[str, Any]]]:
        if h.fusion_type == base_search_pb2.Hybrid.FUSION_TYPE_RANKED:
            raise _Abort(grpc.StatusCode.UNIMPLEMENTED, "the fake implements relativeScoreFusion")
        alpha = h.alpha_param if h.use_alpha_param and h.HasField("alpha_param") else h.alpha
        if h.use_alpha_param and not h.HasField("alpha_param"):
            alpha = 0.75
        depth = max(HYBRID_LEG_LIMIT, limit)
        legs: list[tuple[str, float, list[tuple[_Object, float]]]] = []
        if alpha < 1:
            props = list(h.properties) or self._searchable(coll)
            sparse = self._bm25(coll, shard, allowed, h.query, props)[:depth]
            legs.append(("keyword,bm25", 1 - alpha, sparse))
        if alpha > 0:
            if h.vector_bytes:
                q = _unpack(h.vector_bytes)
            elif h.vectors:
                q = _unpack(h.vectors[0].vector_bytes)
            elif h.HasField("near_vector"):
                q = self._query_vector(h.near_vector)
            else:
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    "hybrid: no vector given and this cluster has no vectorizer module",
                )
            target = self._target(coll, h.targets if h.HasField("targets") else None)
            dense = [(o, 1.0 - d) for o, d in self._dense(coll, allowed, q, target, depth)]
            legs.append(("vector,hybridVector", alpha, dense))
        fused: dict[str, dict[str, Any]] = {}
        for set_name, weight, results in legs:
            if not results:
                continue
            values = [s for _, s in results]
            lo, hi = min(values), max(values)
            for o, s in results:
                score = weight if hi == lo else weight * (s - lo) / (hi - lo)
                line = (
                    f"Hybrid (Result Set {set_name}) Document {o.uuid}: original score "
                    f"{_go_float(s)}, normalized score: {_go_float(score)}"
                )
                entry = fused.get(o.uuid)
                if entry is None:
                    fused[o.uuid] = {"obj": o, "score": score, "explain": "\n" + line, "sec": s}
                else:
                    entry["score"] += score
                    entry["explain"] = entry["explain"] + " - \n" + line
                    entry["sec"] = s
        ranked = sorted(fused.values(), key=lambda e: (-e["score"], -e["sec"], e["obj"].uuid))
        return [(e["obj"], {"score": e["score"], "explain": e["explain"]}) for e in ranked][:limit]

    # ------------------------------------------------------------------ filters

    def _match(self, coll: _Collection, f: base_pb2.Filters, o: _Object) -> bool:
        op = f.operator
        if op == _Op.OPERATOR_AND:
            return all(self._match(coll, c, o) for c in f.filters)
        if op == _Op.OPERATOR_OR:
            return any(self._match(coll, c, o) for c in f.filters)
        if op == _Op.OPERATOR_NOT:
            return not all(self._match(coll, c, o) for c in f.filters)
        prop = f.target.property if f.HasField("target") else (f.on[0] if f.on else "")
        if op in _RANGE:
            return self._range(coll, f, o, prop)
        if prop == "_id":
            have: list[str] = [o.uuid]
            tokenization = "field"
        else:
            spec = coll.props.get(prop)
            if spec is None:
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    f"no such prop with name '{prop}' found in class '{coll.name}'",
                )
            if not spec.get("indexFilterable"):
                raise _Abort(
                    grpc.StatusCode.UNKNOWN,
                    f"Filtering by property '{prop}' requires inverted index. Is "
                    f"`indexFilterable` option of property '{prop}' enabled? Set it to `true` "
                    "or leave empty",
                )
            value = o.props.get(prop)
            values = value if isinstance(value, list) else ([] if value is None else [value])
            tokenization = spec.get("tokenization", "field")
            have = [str(v) for v in values]
        wanted = (
            list(f.value_text_array.values)
            if f.HasField("value_text_array")
            else [f.value_text]
            if f.HasField("value_text")
            else []
        )
        if not wanted:
            raise _Abort(grpc.StatusCode.UNKNOWN, f"filter on {prop!r}: the fake needs text values")

        def norm(values: Iterable[str]) -> set[str]:
            if prop == "_id":
                return {str(v).lower() for v in values}
            if tokenization == "word":
                return {t for v in values for t in _tokens(v)}
            return {v.strip() for v in values}

        have_set, want_set = norm(have), norm(wanted)
        if op == _Op.OPERATOR_EQUAL:
            return want_set <= have_set if tokenization == "word" else bool(want_set & have_set)
        if op == _Op.OPERATOR_NOT_EQUAL:
            return not (want_set & have_set)
        if op == _Op.OPERATOR_CONTAINS_ANY:
            return bool(want_set & have_set)
        if op == _Op.OPERATOR_CONTAINS_ALL:
            return want_set <= have_set
        if op == _Op.OPERATOR_CONTAINS_NONE:
            return not (want_set & have_set)
        raise _Abort(grpc.StatusCode.UNIMPLEMENTED, f"the fake does not implement operator {op}")

    def _range(self, coll: _Collection, f: base_pb2.Filters, o: _Object, prop: str) -> bool:
        """LessThan & co on date (RFC 3339 text) and number properties."""
        spec = coll.props.get(prop)
        if spec is None or not (spec.get("indexFilterable") or spec.get("indexRangeFilters")):
            raise _Abort(
                grpc.StatusCode.UNKNOWN,
                f"Filtering by property '{prop}' requires inverted index",
            )
        dtype = spec["dataType"][0]
        have = o.props.get(prop)
        if have is None:
            return False
        if dtype == "date":
            if not f.HasField("value_text"):
                raise _Abort(grpc.StatusCode.UNKNOWN, f"date filter on {prop!r} needs text")
            a, b = _instant(str(have)), _instant(f.value_text)
        elif dtype in ("int", "number"):
            a = float(have)
            b = float(f.value_int if f.HasField("value_int") else f.value_number)
        else:
            raise _Abort(grpc.StatusCode.UNKNOWN, f"cannot compare {dtype} property {prop!r}")
        return {
            _Op.OPERATOR_LESS_THAN: a < b,
            _Op.OPERATOR_LESS_THAN_EQUAL: a <= b,
            _Op.OPERATOR_GREATER_THAN: a > b,
            _Op.OPERATOR_GREATER_THAN_EQUAL: a >= b,
        }[f.operator]

    def batch_delete(
        self, req: batch_delete_pb2.BatchDeleteRequest
    ) -> batch_delete_pb2.BatchDeleteReply:
        with self._lock:
            coll = self._collection(req.collection)
            shard = self._shard_for_read(coll, req.tenant)
            if not req.HasField("filters"):
                raise _Abort(grpc.StatusCode.UNKNOWN, "batch delete needs a filter")
            matched = [
                o
                for o in sorted(shard.values(), key=_by_order)
                if self._match(coll, req.filters, o)
            ][:QUERY_MAXIMUM_RESULTS]
            if not req.dry_run:
                for o in matched:
                    del shard[o.uuid]
            objects = (
                [
                    batch_delete_pb2.BatchDeleteObject(
                        uuid=uuid_lib.UUID(o.uuid).bytes, successful=True
                    )
                    for o in matched
                ]
                if req.verbose
                else []
            )
            return batch_delete_pb2.BatchDeleteReply(
                took=0.001,
                failed=0,
                matches=len(matched),
                successful=0 if req.dry_run else len(matched),
                objects=objects,
            )

    def aggregate(self, req: aggregate_pb2.AggregateRequest) -> aggregate_pb2.AggregateReply:
        with self._lock:
            coll = self._collection(req.collection)
            shard = self._shard_for_read(coll, req.tenant)
            objs = list(shard.values())
            if req.HasField("filters"):
                objs = [o for o in objs if self._match(coll, req.filters, o)]
            return aggregate_pb2.AggregateReply(
                took=0.001,
                single_result=aggregate_pb2.AggregateReply.Single(objects_count=len(objs)),
            )

    def tenants_get(self, req: tenants_pb2.TenantsGetRequest) -> tenants_pb2.TenantsGetReply:
        with self._lock:
            coll = self._collection(req.collection)
            if not coll.multi_tenant:
                raise _Abort(
                    grpc.StatusCode.UNKNOWN, f"multi-tenancy is not enabled for {coll.name}"
                )
            names = list(req.names.values) if req.HasField("names") else sorted(coll.shards)
            return tenants_pb2.TenantsGetReply(
                took=0.001,
                tenants=[
                    tenants_pb2.Tenant(
                        name=n, activity_status=tenants_pb2.TENANT_ACTIVITY_STATUS_HOT
                    )
                    for n in names
                    if n in coll.shards
                ],
            )


def _instant(text: str) -> datetime:
    """An RFC 3339 time (fraction up to 9 digits) as an aware datetime."""
    if not _DATE.match(text):
        raise _Abort(grpc.StatusCode.UNKNOWN, f"invalid date {text!r}")
    frac = re.search(r"\.(\d+)", text)
    when = datetime.fromisoformat(re.sub(r"\.\d+", "", text).replace("Z", "+00:00"))
    return when.replace(microsecond=int((frac.group(1) + "000000")[:6]) if frac else 0)


def _by_order(o: _Object) -> int:
    return o.order


def _error(message: str) -> dict[str, Any]:
    return {"error": [{"message": message}]}


def _unpack_f64(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 8}d", data)) if data else []


def _coerce(name: str, dtype: str, value: Any) -> Any:
    def bad() -> _Abort:
        return _Abort(
            grpc.StatusCode.UNKNOWN,
            f"invalid {dtype} property '{name}' on class: value {value!r} has the wrong type",
        )

    if dtype == "text":
        if not isinstance(value, str):
            raise bad()
        return value
    if dtype == "text[]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad()
        return list(value)
    if dtype == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise bad()
        return int(value)
    if dtype == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if dtype == "boolean":
        if not isinstance(value, bool):
            raise bad()
        return value
    if dtype == "date":
        if not isinstance(value, str) or not _DATE.match(value):
            raise bad()
        return _instant(value).isoformat().replace("+00:00", "Z")
    if dtype == "uuid":
        return str(uuid_lib.UUID(str(value)))
    return value


def _value(dtype: str, value: Any) -> properties_pb2.Value:
    if dtype == "text":
        return properties_pb2.Value(text_value=value)
    if dtype == "int":
        return properties_pb2.Value(int_value=int(value))
    if dtype == "number":
        return properties_pb2.Value(number_value=float(value))
    if dtype == "boolean":
        return properties_pb2.Value(bool_value=bool(value))
    if dtype == "date":
        return properties_pb2.Value(date_value=value)
    if dtype == "uuid":
        return properties_pb2.Value(uuid_value=value)
    if dtype == "text[]":
        return properties_pb2.Value(
            list_value=properties_pb2.ListValue(
                text_values=properties_pb2.TextValues(values=list(value))
            )
        )
    if dtype == "int[]":
        return properties_pb2.Value(
            list_value=properties_pb2.ListValue(
                int_values=properties_pb2.IntValues(values=struct.pack(f"<{len(value)}q", *value))
            )
        )
    raise _Abort(grpc.StatusCode.UNIMPLEMENTED, f"the fake cannot return {dtype} values")


class _Servicer(weaviate_pb2_grpc.WeaviateServicer):
    """Records each call, applies injected faults and auth, then delegates."""

    def __init__(self, fake: FakeWeaviate) -> None:
        self.fake = fake

    def _run(self, method: str, request: Any, context: grpc.ServicerContext, fn: Any) -> Any:
        fake = self.fake
        metadata = {k: v for k, v in context.invocation_metadata()}
        copy = type(request)()
        copy.CopyFrom(request)
        fake.calls.append(Call("grpc", method, message=copy, metadata=metadata))
        collection = getattr(request, "collection", "")
        fault = fake._fault_for(f"{method} {collection}" if collection else method)
        if fault is not None:
            fake._sleep(fault.delay)
            if fault.code is not None:
                context.abort(fault.code, fault.details)
        if not fake._authorized(metadata.get("authorization")):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthorized: invalid api key")
        try:
            return fn(request)
        except _Abort as exc:
            context.abort(exc.code, exc.details)

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run("Search", request, context, self.fake.search)

    def BatchObjects(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run("BatchObjects", request, context, self.fake.batch_objects)

    def BatchDelete(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run("BatchDelete", request, context, self.fake.batch_delete)

    def TenantsGet(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run("TenantsGet", request, context, self.fake.tenants_get)

    def Aggregate(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run("Aggregate", request, context, self.fake.aggregate)


class _RestHandler(BaseHTTPRequestHandler):
    """Routes REST calls to `FakeWeaviate._rest`; keep-alive like the real server."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    fake: FakeWeaviate

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self, verb: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = self.path.split("?", 1)[0]
        status, payload = self.fake._rest(verb, path, body, self.headers.get("Authorization"))
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
