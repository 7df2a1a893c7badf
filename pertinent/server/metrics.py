"""Prometheus metrics of one server: request latency per route, time per pipeline stage,
query-embedding cache hits.

Each app has its own registry (two apps in one process, as in tests, do not collide).
Routes are labelled by their template (``/v1/users/{user_id}``), never the raw path,
which would put user ids in the metrics. Stage times come from the core's own
`StageTimes` of the call just made (`Pertinent.last_times`); under concurrent requests a
sample can belong to a neighbouring request, which is fine for a histogram.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pertinent.errors import MissingDependency

if TYPE_CHECKING:
    from pertinent.client import Pertinent

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _CacheCollector:
    """Reads the query-embedding cache's counters at scrape time."""

    def __init__(self, px: Pertinent) -> None:
        self.px = px

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        emb = self.px.embedder
        hits, misses = getattr(emb, "hits", None), getattr(emb, "misses", None)
        if isinstance(hits, int) and isinstance(misses, int):
            family = CounterMetricFamily(
                "pertinent_query_embedding_cache",
                "Query-embedding cache lookups by outcome",
                labels=["outcome"],
            )
            family.add_metric(["hit"], hits)
            family.add_metric(["miss"], misses)
            yield family

    def describe(self) -> Iterator[Any]:
        return iter(())


class Metrics:
    def __init__(self, px: Pertinent) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Histogram
        except ImportError as exc:
            raise MissingDependency("prometheus-client", "server") from exc
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "pertinent_http_request_duration_seconds",
            "Time to answer a request, by route template, method and status",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "pertinent_pipeline_stage_seconds",
            "Time per retrieval pipeline stage (embed_query, candidates, rank, pack, ...)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "pertinent_http_rejected",
            "Requests refused before the core ran, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_CacheCollector(px))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).observe(seconds)

    def observe_stages(self, ms: Mapping[str, float]) -> None:
        for stage, value in ms.items():
            self.stages.labels(stage).observe(value / 1000.0)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
