"""The model-server client port, and the reply parsing every implementation shares.

Implementations turn every way an attempt can end into a `Reply`; raising is for bugs.
Which one the runner uses was decided by benchmark B1 (docs/decisions/0001-http-client.md).
"""

import time
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol

import orjson

from openbatch_runner.outcome import Reply, http_error_body
from openbatch_runner.retry import AttemptKind, parse_retry_after

HeaderGetter = Callable[[str], str | None]


class ModelClient(Protocol):
    async def post(self, url: str, body: bytes) -> Reply: ...

    async def close(self) -> None: ...


class ClientKind(StrEnum):
    AIOHTTP = "aiohttp"
    RAW = "raw"


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


def make_client(
    kind: ClientKind, *, request_timeout: float, api_key: str | None, max_connections: int
) -> ModelClient:
    if kind is ClientKind.RAW:
        from openbatch_runner.http_raw import RawHttpClient

        return RawHttpClient(
            request_timeout=request_timeout, api_key=api_key, max_connections=max_connections
        )
    from openbatch_runner.http_aiohttp import AiohttpClient

    return AiohttpClient(
        request_timeout=request_timeout, api_key=api_key, max_connections=max_connections
    )
