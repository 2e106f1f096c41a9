import random

import pytest

from openbatch_runner.retry import (
    AttemptKind,
    RetryPolicy,
    backoff_delay,
    counts_as_step,
    is_retryable,
    parse_retry_after,
    should_retry,
)


@pytest.mark.parametrize(
    ("kind", "status", "retryable"),
    [
        (AttemptKind.OK, 200, False),
        (AttemptKind.HTTP_ERROR, 400, False),
        (AttemptKind.HTTP_ERROR, 401, False),
        (AttemptKind.HTTP_ERROR, 404, False),
        (AttemptKind.HTTP_ERROR, 408, True),
        (AttemptKind.HTTP_ERROR, 422, False),
        (AttemptKind.HTTP_ERROR, 429, True),
        (AttemptKind.HTTP_ERROR, 500, True),
        (AttemptKind.HTTP_ERROR, 502, True),
        (AttemptKind.HTTP_ERROR, 503, True),
        (AttemptKind.TIMEOUT, None, True),
        (AttemptKind.CONNECTION, None, True),
        (AttemptKind.INVALID_BODY, 200, True),
    ],
)
def test_which_failures_are_retried(kind: AttemptKind, status: int | None, retryable: bool) -> None:
    assert is_retryable(kind, status) is retryable


def test_attempts_are_bounded() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert should_retry(AttemptKind.TIMEOUT, None, 1, policy)
    assert should_retry(AttemptKind.TIMEOUT, None, 2, policy)
    assert not should_retry(AttemptKind.TIMEOUT, None, 3, policy)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("2", 2.0),
        ("0.25", 0.25),
        ("-3", 0.0),
        ("garbage", None),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
    ],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    now = 1445412480.0  # 07:28:00 GMT that day
    got = parse_retry_after(header, now)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_backoff_grows_exponentially_with_jitter_and_cap() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (9, 4.0)]:
        delays = [backoff_delay(attempt, policy, None, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jittered, not lockstep


def test_retry_after_is_honoured_as_given_but_capped() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0, max_retry_after=60)
    rng = random.Random(0)
    assert 7.0 <= backoff_delay(1, policy, 7.0, rng) <= 7.7
    assert 60.0 <= backoff_delay(1, policy, 3600.0, rng) <= 66.0
    # The server asked for 10 ms: no exponential wait on top, whatever the step.
    assert 0.01 <= backoff_delay(4, policy, 0.01, rng) <= 0.011
    # Retry-After: 0 says nothing about when: the exponential backoff applies.
    assert 1.0 <= backoff_delay(3, policy, 0.0, rng) <= 2.0
    assert counts_as_step(None) and counts_as_step(0.0) and not counts_as_step(0.05)
