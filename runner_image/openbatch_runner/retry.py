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
    attempt: int, policy: RetryPolicy, retry_after: float | None, rng: random.Random
) -> float:
    """Delay before attempt `attempt + 1` (attempts count from 1).

    Full jitter on an exponential ceiling spreads retries of many lines so they do not hit a
    recovering server in lockstep; a server's Retry-After is a floor, not a suggestion.
    """
    ceiling = min(policy.max_delay, policy.base_delay * (2 ** (attempt - 1)))
    delay = rng.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_retry_after))
    return delay


def should_retry(kind: AttemptKind, status: int | None, attempt: int, policy: RetryPolicy) -> bool:
    return attempt < policy.max_attempts and is_retryable(kind, status)
