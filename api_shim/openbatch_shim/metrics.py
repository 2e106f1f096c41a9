"""Prometheus metrics of the shim: requests by route and status, upload bytes, batches by status."""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from openbatch.batch_mapping import STATUS_OF_PHASE
from openbatch.resource import Phase
from openbatch_shim.backends.base import BatchBackend


class _BatchesByStatus(Collector):
    """Counted at scrape time from the backend's index: never out of date, nothing to update."""

    def __init__(self, backend: BatchBackend) -> None:
        self._backend = backend

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "openbatch_shim_batches",
            "batches known to the shim, by OpenAI status",
            labels=["status"],
        )
        counts = dict.fromkeys((s.value for s in STATUS_OF_PHASE.values()), 0)
        indexes = getattr(self._backend, "indexes", None)
        if callable(indexes):
            for index in indexes():
                for job in index.ordered():
                    counts[STATUS_OF_PHASE[job.status.phase or Phase.VALIDATING].value] += 1
        for status, n in counts.items():
            family.add_metric([status], n)
        yield family


class ShimMetrics:
    def __init__(self, backend: BatchBackend) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "openbatch_shim_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "openbatch_shim_request_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "openbatch_shim_upload_bytes", "bytes of files uploaded", registry=self.registry
        )
        self.registry.register(_BatchesByStatus(backend))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)
