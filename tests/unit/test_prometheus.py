"""Reading a model server's load from Prometheus text: the parser and the per-kind table."""

import math

import pytest

from openbatch.runner_args import ServerKind
from openbatch_runner.prometheus import (
    KINDS,
    Load,
    MetricsTextError,
    detect_kind,
    parse_metrics,
    read_load,
)

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 5.0
vllm:num_requests_running{engine="1",model_name="llama"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="llama"} 12
vllm:e2e_request_latency_seconds_sum{model_name="llama"} 3.5e+01
"""

# What the real llama.cpp server (xllamacpp) answers, abridged.
LLAMACPP = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 41
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 4
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
llamacpp:n_busy_slots_per_decode 1.66667
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("# only a comment\n\n", {}),
        ("up 1", {"up": 1.0}),
        ("up 1 1700000000000", {"up": 1.0}),  # a timestamp
        ("a_b:c 2.5e-1", {"a_b:c": 0.25}),
        ('x{a="1"} 1\nx{a="2"} 2\nx 4', {"x": 7.0}),  # summed over label sets
        ('x{path="/v1/{id}"} 1', {"x": 1.0}),  # braces inside a label value
        ('x{msg="say \\"}\\" ok"} 3', {"x": 3.0}),  # escaped quotes
        ('x{a="1",} 1', {"x": 1.0}),  # a trailing comma
        ("x +Inf", {"x": math.inf}),
        ("x NaN\ny 1", {"y": 1.0}),  # NaN samples are left out
        ("  x   5  ", {"x": 5.0}),
        ("x 1\n# EOF\n", {"x": 1.0}),  # OpenMetrics' end marker is a comment
    ],
)
def test_parse(text: str, expected: dict[str, float]) -> None:
    assert parse_metrics(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "<html><body>Not Found</body></html>",
        "x",  # no value
        "x one",
        'x{a="1" 1',  # unterminated labels
        "x 1 2 3",
        "9x 1",
        "x-y 1",
    ],
)
def test_what_is_not_prometheus_text_is_refused(text: str) -> None:
    with pytest.raises(MetricsTextError):
        parse_metrics(text)


def test_vllm_load_sums_engines() -> None:
    metrics = parse_metrics(VLLM)
    assert detect_kind(metrics) is ServerKind.VLLM
    assert read_load(ServerKind.VLLM, metrics) == Load(waiting=3.0, running=7.0, cache_usage=0.25)


def test_vllm_older_cache_metric_name() -> None:
    metrics = parse_metrics("vllm:num_requests_waiting 0\nvllm:gpu_cache_usage_perc 0.5")
    assert read_load(ServerKind.VLLM, metrics) == Load(waiting=0.0, running=0.0, cache_usage=0.5)


def test_llamacpp_load() -> None:
    metrics = parse_metrics(LLAMACPP)
    assert detect_kind(metrics) is ServerKind.LLAMACPP
    assert read_load(ServerKind.LLAMACPP, metrics) == Load(waiting=2.0, running=4.0)


@pytest.mark.parametrize(
    ("text", "kind", "load"),
    [
        (
            "sglang:num_queue_reqs 4\nsglang:num_running_reqs 9\nsglang:token_usage 0.7",
            ServerKind.SGLANG,
            Load(4.0, 9.0, 0.7),
        ),
        ("tgi_queue_size 1\ntgi_batch_current_size 3", ServerKind.TGI, Load(1.0, 3.0)),
    ],
)
def test_other_kinds(text: str, kind: ServerKind, load: Load) -> None:
    metrics = parse_metrics(text)
    assert detect_kind(metrics) is kind
    assert read_load(kind, metrics) == load


def test_unknown_server_has_no_kind_and_no_load() -> None:
    metrics = parse_metrics("process_cpu_seconds_total 3\nhttp_requests_total 9")
    assert detect_kind(metrics) is None
    assert read_load(ServerKind.VLLM, metrics) is None


def test_the_table_covers_every_scraped_kind_with_a_threshold() -> None:
    assert set(KINDS) == set(ServerKind) - {ServerKind.AUTO, ServerKind.LATENCY}
    assert KINDS[ServerKind.LLAMACPP].queue_threshold == 0.0  # a deferral is a full server
    assert all(names.queue_threshold >= 0 for names in KINDS.values())
