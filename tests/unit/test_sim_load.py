"""The interactive load generator's arrivals and summaries (seeded, no clock)."""

import itertools
import math
import random
import statistics

import pytest

from openbatch_sim.load import (
    CONNECTION_ERROR,
    Sample,
    arrival_offsets,
    has_content,
    percentile,
    summarize,
)


def offsets(rate: float, n: int, seed: int = 7) -> list[float]:
    return list(itertools.islice(arrival_offsets(rate, random.Random(seed)), n))


def test_arrivals_are_increasing_and_repeat_with_the_seed() -> None:
    first = offsets(50.0, 1000)
    assert first == sorted(first) and first[0] > 0
    assert first == offsets(50.0, 1000)
    assert first != offsets(50.0, 1000, seed=8)


@pytest.mark.parametrize("rate", [5.0, 50.0, 200.0])
def test_arrival_gaps_are_exponential_with_the_set_mean(rate: float) -> None:
    times = offsets(rate, 20_000)
    gaps = [b - a for a, b in itertools.pairwise([0.0, *times])]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.03)
    # An exponential's standard deviation equals its mean (a fixed-rate clock: 0).
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, abs=0.05)
    # Memoryless: P(gap > mean) = 1/e.
    assert sum(g > 1 / rate for g in gaps) / len(gaps) == pytest.approx(math.exp(-1), abs=0.02)


def test_arrivals_per_second_are_poisson_counts() -> None:
    rate = 20.0
    times = offsets(rate, 40_000)
    seconds = int(times[-1])
    counts = [0] * seconds
    for t in times:
        if t < seconds:
            counts[int(t)] += 1
    # A Poisson count's variance equals its mean (index of dispersion 1).
    assert statistics.fmean(counts) == pytest.approx(rate, rel=0.03)
    assert statistics.pvariance(counts) / statistics.fmean(counts) == pytest.approx(1.0, abs=0.1)


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        next(arrival_offsets(0.0, random.Random(0)))


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        (list(map(float, range(1, 101))), 99, 99.0),
        (list(map(float, range(1, 101))), 100, 100.0),
        ([5.0], 99, 5.0),
        ([1.0, 9.0], 0, 1.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


def test_summary_counts_failures_apart_and_windows_by_send_time() -> None:
    samples = [
        Sample(0.5, 0.10, 200, 0.0),
        Sample(1.0, 0.20, 200, 0.05),
        Sample(1.5, 0.30, 429, None),
        Sample(2.0, 0.40, CONNECTION_ERROR, None),
        Sample(3.5, 9.00, 200, 1.0),
    ]
    s = summarize(samples, start=1.0, end=3.0)
    assert (s.sent, s.ok, s.failed) == (3, 1, 2)
    assert s.window == 2.0 and s.rate == 1.5
    assert s.p50 == s.p99 == s.mean == 0.20
    assert s.queue_p99 == 0.05
    whole = summarize(samples)
    assert whole.sent == 5 and whole.ok == 3 and whole.p99 == 9.0


def test_summary_without_queue_headers_has_nan_queue_time() -> None:
    s = summarize([Sample(0.0, 0.1, 200, None), Sample(1.0, 0.1, 200, None)])
    assert s.ok == 2 and math.isnan(s.queue_p99)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n', True),
        (b'data:{"choices": [{"delta": {"role": "assistant", "content": "x"}}]}', True),
        (b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}', False),
        (b'data: {"choices": [{"delta": {"role": "assistant"}}]}', False),
        (b'data: {"choices": [], "usage": {"completion_tokens": 3}}', False),
        (b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}}]}', False),
        (b"data: [DONE]", False),
        (b"data: not json", False),
        (b"data: [1, 2]", False),
        (b": keep-alive comment", False),
        (b"\n", False),
    ],
)
def test_a_first_token_is_the_first_event_with_text(line: bytes, expected: bool) -> None:
    assert has_content(line) is expected


def test_summary_has_first_token_percentiles_of_streamed_successes() -> None:
    samples = [Sample(0.1 * i, 1.0 + i / 100, 200, None, ttft=0.05 + i / 1000) for i in range(100)]
    samples.append(Sample(5.0, 9.0, 500, None, ttft=None))
    summary = summarize(samples)
    assert summary.ttft_p50 == pytest.approx(0.05 + 49 / 1000)
    assert summary.ttft_p99 == pytest.approx(0.05 + 98 / 1000)
    plain = summarize([Sample(0.0, 1.0, 200, None)])
    assert math.isnan(plain.ttft_p50) and math.isnan(plain.ttft_p99)
