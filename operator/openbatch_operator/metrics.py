"""Prometheus metrics of the operator (scraped from `OPENBATCH_OPERATOR_METRICS_PORT`)."""

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from openbatch.resource import Phase


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batches = Gauge(
            "openbatch_batches", "BatchJobs by phase", ["phase"], registry=self.registry
        )
        self.requests = Gauge(
            "openbatch_requests",
            "requests of non-deleted BatchJobs by result",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "openbatch_reconcile_errors", "reconciles that raised", registry=self.registry
        )
        self.queue_length = Gauge(
            "openbatch_queue_length", "batches waiting for admission", registry=self.registry
        )

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)

    def observe(
        self, phases: Iterable[str | None], completed: int, failed: int, queued: int
    ) -> None:
        counts = dict.fromkeys((p.value for p in Phase), 0)
        for phase in phases:
            if phase in counts:
                counts[phase] += 1
        for phase, n in counts.items():
            self.batches.labels(phase=phase).set(n)
        self.requests.labels(result="completed").set(completed)
        self.requests.labels(result="failed").set(failed)
        self.queue_length.set(queued)
