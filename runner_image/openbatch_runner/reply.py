"""What one HTTP attempt produced (`Reply`), and how a response becomes one.

Shared by every model-server client (`http_raw`, `http_aiohttp`) and read by the dispatcher
and `outcome`; it imports no client, so the clients and the `client` port that picks one do
not import each other in a circle.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from openbatch_runner.retry import AttemptKind, parse_retry_after

HeaderGetter = Callable[[str], str | None]


@dataclass(slots=True)
class Reply:
    """What one HTTP attempt produced."""

    kind: AttemptKind
    status: int | None = None
    body: Any = None  # parsed JSON (always a JSON value when kind is OK or HTTP_ERROR)
    request_id: str | None = None
    retry_after: float | None = None
    detail: str = ""  # why there was no usable answer, for the error line
    sent: int = 1  # requests written for this attempt (2 when a stale connection was replaced)


OVERLOAD_STATUSES = frozenset({429, 503})


def is_overload(reply: Reply) -> bool:
    """A 429/503 or a timeout: the server says it has no room (or answers so at random)."""
    return reply.kind is AttemptKind.TIMEOUT or (
        reply.kind is AttemptKind.HTTP_ERROR and reply.status in OVERLOAD_STATUSES
    )


def http_error_body(status: int, raw: bytes) -> dict[str, Any]:
    """OpenAI's error envelope for a non-JSON error body, so error lines stay uniform."""
    text = raw[:2000].decode("utf-8", errors="replace")
    return {
        "error": {
            "message": text or f"HTTP {status}",
            "type": "server_error" if status >= 500 else "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def ok_reply(status: int, raw: bytes, header: HeaderGetter) -> Reply:
    request_id = header("x-request-id") or header("request-id")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        snippet = raw[:200].decode("utf-8", errors="replace")
        return Reply(
            AttemptKind.INVALID_BODY,
            status=status,
            request_id=request_id,
            detail=f"the model server answered {status} with a body that is not JSON: {snippet!r}",
        )
    if type(parsed) is not dict:
        # Every endpoint answers an object; `[1,2]` or `"ok"` is a broken server, not a result.
        snippet = raw[:200].decode("utf-8", errors="replace")
        return Reply(
            AttemptKind.INVALID_BODY,
            status=status,
            request_id=request_id,
            detail=f"the model server answered {status} with JSON that is not an object: "
            f"{snippet!r}",
        )
    return Reply(AttemptKind.OK, status=status, body=parsed, request_id=request_id)


def error_reply(status: int, raw: bytes, header: HeaderGetter) -> Reply:
    request_id = header("x-request-id") or header("request-id")
    try:
        body = orjson.loads(raw) if raw else http_error_body(status, raw)
    except orjson.JSONDecodeError:
        body = http_error_body(status, raw)
    if not isinstance(body, dict) or "error" not in body:
        body = http_error_body(status, raw)
    retry_after = None
    if status in (429, 503):
        ms = header("retry-after-ms")
        if ms is not None:
            try:
                retry_after = max(0.0, float(ms) / 1000.0)
            except ValueError:
                retry_after = None
        if retry_after is None:
            retry_after = parse_retry_after(header("retry-after"), time.time())
    return Reply(
        AttemptKind.HTTP_ERROR,
        status=status,
        body=body,
        request_id=request_id,
        retry_after=retry_after,
        detail=f"HTTP {status}",
    )
