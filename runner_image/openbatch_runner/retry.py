"""Pure retry policy: which failures are retried and how long to wait before the next try."""

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum


class AttemptKind(StrEnum):
    """What one HTTP attempt against a model server produced."""

    OK = "ok"  # a 2xx with a JSON body
    HTTP_ERROR = "http_error"  # a non-2xx status
    TIMEOUT = "timeout"  # no answer within the request timeout
    CONNECTION = "connection"  # refused, reset or dropped before a full response
    INVALID_BODY = "invalid_body"  # 2xx whose body is not JSON: a broken server, retried


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5  # seconds before the second attempt (before jitter)
    max_delay: float = 30.0  # cap of the exponential term
    max_retry_after: float = 120.0  # a server's Retry-After is honoured up to this


RETRYABLE_STATUSES = frozenset({408, 429})


def is_retryable(kind: AttemptKind, status: int | None) -> bool:
    """408/429/5xx, timeouts, connection errors and garbled bodies are worth another try;
    other 4xx mean the request itself is wrong and are final."""
    if kind is AttemptKind.OK:
        return False
    if kind is AttemptKind.HTTP_ERROR:
        return status is not None and (status in RETRYABLE_STATUSES or status >= 500)
    return True


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if now is None:
            return None
        seconds = when.timestamp() - now
    return max(0.0, seconds)


def backoff_delay(
    step: int, policy: RetryPolicy, retry_after: float | None, rng: random.Random
) -> float:
    """Delay before the next attempt.

    A server that says when to come back (a positive Retry-After / retry-after-ms) is taken
    at its word, up to `max_retry_after`, plus up to 10 % so that lines it turned away
    together do not return in lockstep (the OpenAI SDK also waits exactly Retry-After).
    Otherwise: full jitter on an exponential ceiling, where `step` counts this line's
    failures that came without a Retry-After (from 1), so a 429 that asked for 50 ms does
    not stretch the wait after a later 500.
    """
    if retry_after is not None and retry_after > 0:
        wait = min(retry_after, policy.max_retry_after)
        return rng.uniform(wait, wait * 1.1)
    ceiling = min(policy.max_delay, policy.base_delay * (2 ** (max(step, 1) - 1)))
    return rng.uniform(ceiling / 2, ceiling)


def counts_as_step(retry_after: float | None) -> bool:
    """Whether a failure grows the exponential backoff (it did not say when to retry)."""
    return retry_after is None or retry_after <= 0


def should_retry(kind: AttemptKind, status: int | None, attempt: int, policy: RetryPolicy) -> bool:
    return attempt < policy.max_attempts and is_retryable(kind, status)
