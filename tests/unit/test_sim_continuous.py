"""The simulator's continuous-batching model and its metrics, on an explicit clock."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from openbatch_sim.continuous import SharedSpeed, capacity, slowdown_factor
from openbatch_sim.metrics import Histogram, Load, ServerMetrics, render


def test_a_request_alone_runs_at_the_speed_of_one_occupied_slot() -> None:
    speed = SharedSpeed(slots=2, slowdown=1.0)
    speed.add(1, work=1.0, now=0.0)
    assert speed.next_finish() == pytest.approx(1.5)  # 1 * (1 + 1 * 1/2)
    assert speed.finished(1.49) == []
    assert speed.finished(1.5) == [1]
    assert speed.running == 0 and speed.next_finish() is None


def test_a_joining_request_slows_the_one_already_running() -> None:
    speed = SharedSpeed(slots=2, slowdown=1.0)
    speed.add(1, work=1.0, now=0.0)
    speed.add(2, work=1.0, now=0.75)  # 1 has done 0.75 / 1.5 = 0.5 of its work
    # Two running: factor 2, so 1's remaining 0.5 takes 1.0 s.
    assert speed.next_finish() == pytest.approx(1.75)
    assert speed.finished(1.75) == [1]
    # 2 did 0.5 of its work alongside 1; alone again, its last 0.5 takes 0.75 s.
    assert speed.next_finish() == pytest.approx(2.5)
    assert speed.finished(2.5) == [2]


def test_a_request_that_leaves_speeds_the_others_up() -> None:
    speed = SharedSpeed(slots=4, slowdown=2.0)
    for key in range(4):
        speed.add(key, work=1.0, now=0.0)
    assert speed.next_finish() == pytest.approx(3.0)  # factor 1 + 2 * 4/4
    speed.remove(3, now=1.5)  # all have 0.5 left; three running: factor 2.5
    assert speed.next_finish() == pytest.approx(1.5 + 0.5 * 2.5)
    assert sorted(speed.finished(2.75)) == [0, 1, 2]


def test_retune_applies_from_then_on() -> None:
    speed = SharedSpeed(slots=1, slowdown=1.0)
    speed.add(1, work=1.0, now=0.0)  # factor 2
    speed.retune(slots=1, slowdown=0.0, now=1.0)  # half done; no slowdown from now on
    assert speed.next_finish() == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("running", "slots", "slowdown", "factor"),
    [(0, 16, 0.5, 1.0), (8, 16, 0.5, 1.25), (16, 16, 0.5, 1.5), (4, 4, 0.0, 1.0)],
)
def test_latency_grows_with_occupancy(
    running: int, slots: int, slowdown: float, factor: float
) -> None:
    assert slowdown_factor(running, slots, slowdown) == factor
    speed = SharedSpeed(slots=slots, slowdown=slowdown)
    for key in range(max(1, running)):
        speed.add(key, work=0.1, now=0.0)
    expected = 0.1 * slowdown_factor(max(1, running), slots, slowdown)
    assert speed.next_finish() == pytest.approx(expected)


def test_capacity_is_reached_with_every_slot_busy() -> None:
    slots, work, k = 16, 0.1, 0.5
    throughput = [n / (work * slowdown_factor(n, slots, k)) for n in range(1, slots + 1)]
    assert throughput == sorted(throughput)
    assert capacity(slots, work, k) == pytest.approx(throughput[-1])
    assert capacity(slots, work, k) == pytest.approx(16 / 0.15)


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = Histogram(bounds=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        h.observe(value)
    assert h.lines("x", 'model_name="m"') == [
        'x_bucket{model_name="m",le="0.1"} 2.0',
        'x_bucket{model_name="m",le="1.0"} 3.0',
        'x_bucket{model_name="m",le="+Inf"} 4.0',
        'x_sum{model_name="m"} 2.65',
        'x_count{model_name="m"} 4.0',
    ]


def test_metrics_text_parses_as_prometheus_with_vllm_names() -> None:
    metrics = ServerMetrics()
    metrics.record("stop", 10, 16, e2e=0.2, queued=0.05)
    metrics.record("length", 5, 8, e2e=0.1, queued=0.0)
    text = render("m", Load(running=3, waiting=2, slots=4, api_requests=7), metrics)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    kinds = {name: f.type for name, f in families.items()}
    assert kinds["vllm:num_requests_running"] == "gauge"
    assert kinds["vllm:num_requests_waiting"] == "gauge"
    assert kinds["vllm:kv_cache_usage_perc"] == "gauge"
    assert kinds["vllm:request_success"] == "counter"
    assert kinds["vllm:e2e_request_latency_seconds"] == "histogram"
    assert kinds["vllm:request_queue_time_seconds"] == "histogram"
    for line in text.splitlines():
        if line.startswith("vllm:"):
            assert 'model_name="m"' in line

    def value(name: str, **labels: str) -> float:
        family = families[name]
        return next(
            s.value
            for s in family.samples
            if all(s.labels.get(k) == v for k, v in labels.items())
            and s.name.endswith(("_total", "_count") if family.type != "gauge" else "")
        )

    assert value("vllm:num_requests_running") == 3
    assert value("vllm:num_requests_waiting") == 2
    assert value("vllm:kv_cache_usage_perc") == 0.75
    assert value("vllm:request_success", finished_reason="stop") == 1
    assert value("vllm:request_success", finished_reason="length") == 1
    assert value("vllm:prompt_tokens") == 15
    assert value("vllm:generation_tokens") == 24
    assert value("vllm:request_queue_time_seconds") == 2


def test_success_counter_is_exposed_before_the_first_request() -> None:
    text = render("m", Load(0, 0, 8, 0), ServerMetrics())
    assert 'vllm:request_success_total{model_name="m",finished_reason="stop"} 0.0' in text
    assert 'vllm:kv_cache_usage_perc{model_name="m"} 0.0' in text
    assert "sim_requests_total 0.0" in text.splitlines()
