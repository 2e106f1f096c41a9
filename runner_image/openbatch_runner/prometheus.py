"""A model server's load from its Prometheus text: which metrics, per server kind.

`--polite` reads three things from a server: requests waiting for a slot (the queue),
requests running, and, when the server reports it, how full its KV cache is. Each server
kind spells them differently; `KINDS` is the table docs/runner.md shows. The kind is
detected from the names a server exposes (the first entry of the table whose queue metric
is present), or forced with `--polite-server-kind`.

Values are summed over label sets: a vLLM serving two models (or one model on several
engines) reports one series per label set, and the server's queue is their sum. The
parser is deliberately small: gauges and counters as `name{labels} value [timestamp]`,
comments and blank lines skipped, histogram and summary series read like any other.
Pure: text in, numbers out.
"""

import math
from dataclasses import dataclass

from openbatch.runner_args import ServerKind


@dataclass(frozen=True)
class MetricNames:
    """Where one server kind reports its load; the first present name of each tuple wins."""

    waiting: tuple[str, ...]
    running: tuple[str, ...]
    cache_usage: tuple[str, ...] = ()  # 0..1: how full the KV cache is
    queue_threshold: float = 0.0  # default: waiting requests above this mean back off


# The table of docs/runner.md ("Polite batches"), in detection order.
KINDS: dict[ServerKind, MetricNames] = {
    # vLLM moves a request from waiting to running at its next scheduler step, so a scrape
    # may catch one arrival in the queue at full speed: one waiting request is tolerated.
    ServerKind.VLLM: MetricNames(
        waiting=("vllm:num_requests_waiting",),
        running=("vllm:num_requests_running",),
        cache_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        queue_threshold=1.0,
    ),
    ServerKind.SGLANG: MetricNames(
        waiting=("sglang:num_queue_reqs",),
        running=("sglang:num_running_reqs",),
        cache_usage=("sglang:token_usage",),
        queue_threshold=1.0,
    ),
    # llama.cpp defers a request only when no slot is free: any deferral is a full server.
    ServerKind.LLAMACPP: MetricNames(
        waiting=("llamacpp:requests_deferred",),
        running=("llamacpp:requests_processing",),
        cache_usage=("llamacpp:kv_cache_usage_ratio",),
        queue_threshold=0.0,
    ),
    ServerKind.TGI: MetricNames(
        waiting=("tgi_queue_size",),
        running=("tgi_batch_current_size",),
        queue_threshold=1.0,
    ),
}


@dataclass(frozen=True)
class Load:
    """One reading of a server's load (every request, the batch's own included)."""

    waiting: float
    running: float
    cache_usage: float | None = None


class MetricsTextError(ValueError):
    """The text is not Prometheus' text format."""


def parse_metrics(text: str) -> dict[str, float]:
    """`{metric name: value summed over its label sets}`; NaN samples are left out.

    Raises `MetricsTextError` on a line that is not a sample, so an HTML error page
    answered with status 200 is not read as "no load".
    """
    sums: dict[str, float] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, rest = _split_name(line, number)
        fields = rest.split()
        if not fields or len(fields) > 2:
            raise MetricsTextError(f"line {number}: expected `name value [timestamp]`")
        value = _number(fields[0], number)
        if not math.isnan(value):
            sums[name] = sums.get(name, 0.0) + value
    return sums


def _split_name(line: str, number: int) -> tuple[str, str]:
    """The metric name, and what follows its label set."""
    end = 0
    while end < len(line) and (line[end].isalnum() or line[end] in "_:"):
        end += 1
    name = line[:end]
    if not name or name[0].isdigit():
        raise MetricsTextError(f"line {number}: no metric name")
    if end < len(line) and line[end] == "{":
        end = _end_of_labels(line, end + 1, number)
    elif end < len(line) and not line[end].isspace():
        raise MetricsTextError(f"line {number}: bad character after {name!r}")
    return name, line[end:]


def _end_of_labels(line: str, pos: int, number: int) -> int:
    """The index just past the `}` closing a label set opened before `pos`."""
    quoted = False
    while pos < len(line):
        char = line[pos]
        if quoted:
            if char == "\\":
                pos += 1  # an escaped character (\", \\, \n) never ends the value
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "}":
            return pos + 1
        pos += 1
    raise MetricsTextError(f"line {number}: unterminated label set")


def _number(text: str, number: int) -> float:
    try:
        return float(text)  # also NaN, +Inf, -Inf as Prometheus writes them
    except ValueError:
        raise MetricsTextError(f"line {number}: {text!r} is not a number") from None


def detect_kind(metrics: dict[str, float]) -> ServerKind | None:
    """The first kind of `KINDS` whose queue metric the server reports, if any."""
    for kind, names in KINDS.items():
        if any(name in metrics for name in names.waiting):
            return kind
    return None


def read_load(kind: ServerKind, metrics: dict[str, float]) -> Load | None:
    """The load as `kind` reports it; None when its queue metric is missing."""
    names = KINDS[kind]
    waiting = _first(names.waiting, metrics)
    if waiting is None:
        return None
    running = _first(names.running, metrics)
    usage = _first(names.cache_usage, metrics)
    return Load(waiting=waiting, running=running or 0.0, cache_usage=usage)


def _first(names: tuple[str, ...], metrics: dict[str, float]) -> float | None:
    return next((metrics[n] for n in names if n in metrics), None)
