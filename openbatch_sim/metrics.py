"""The simulator's `/metrics`: Prometheus text (format 0.0.4) in vLLM's metric names.

What a load-aware client such as `openbatch run --polite` scrapes from a real vLLM server:
queue and batch gauges, the KV-cache usage (the simulator's stand-in: running / slots),
success and token counters, and latency histograms. Counters only grow for the life of the
process (`/sim/reset` does not touch them), as a real server's do.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Seconds; finer than vLLM's defaults at the low end, where simulated service times live.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
)


@dataclass(slots=True)
class Histogram:
    """A cumulative-bucket histogram as Prometheus exposes it."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; last: +Inf
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out: list[str] = []
        cumulative = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {float(cumulative)}')
        out.append(f"{name}_sum{{{labels}}} {self.total}")
        out.append(f"{name}_count{{{labels}}} {float(self.count)}")
        return out


@dataclass(slots=True)
class ServerMetrics:
    """Counters and histograms of answered requests (API requests only)."""

    success: dict[str, int] = field(default_factory=dict)  # by finished_reason
    prompt_tokens: int = 0
    generation_tokens: int = 0
    e2e_latency: Histogram = field(default_factory=Histogram)
    queue_time: Histogram = field(default_factory=Histogram)

    def record(
        self,
        finished_reason: str,
        prompt_tokens: int,
        generation_tokens: int,
        e2e: float,
        queued: float,
    ) -> None:
        self.success[finished_reason] = self.success.get(finished_reason, 0) + 1
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens
        self.e2e_latency.observe(e2e)
        self.queue_time.observe(queued)


@dataclass(frozen=True, slots=True)
class Load:
    """The gauges at scrape time."""

    running: int
    waiting: int
    slots: int
    api_requests: int


def render(model_name: str, load: Load, metrics: ServerMetrics) -> str:
    """The whole `/metrics` body."""
    label = f'model_name="{model_name}"'
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.")
    lines.append(f"vllm:num_requests_running{{{label}}} {float(load.running)}")
    family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.")
    lines.append(f"vllm:num_requests_waiting{{{label}}} {float(load.waiting)}")
    family(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage (simulated: running / slots).",
    )
    lines.append(f"vllm:kv_cache_usage_perc{{{label}}} {min(1.0, load.running / load.slots)}")
    family("vllm:request_success_total", "counter", "Count of successfully processed requests.")
    for reason in sorted(metrics.success) or ["stop"]:
        count = metrics.success.get(reason, 0)
        lines.append(
            f'vllm:request_success_total{{{label},finished_reason="{reason}"}} {float(count)}'
        )
    family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.")
    lines.append(f"vllm:prompt_tokens_total{{{label}}} {float(metrics.prompt_tokens)}")
    family("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.")
    lines.append(f"vllm:generation_tokens_total{{{label}}} {float(metrics.generation_tokens)}")
    family(
        "vllm:e2e_request_latency_seconds",
        "histogram",
        "Histogram of end to end request latency in seconds.",
    )
    lines.extend(metrics.e2e_latency.lines("vllm:e2e_request_latency_seconds", label))
    family(
        "vllm:request_queue_time_seconds",
        "histogram",
        "Histogram of time spent in WAITING phase for request.",
    )
    lines.extend(metrics.queue_time.lines("vllm:request_queue_time_seconds", label))
    family("sim_requests_total", "counter", "API requests received by the simulator.")
    lines.append(f"sim_requests_total {float(load.api_requests)}")
    return "\n".join(lines) + "\n"
