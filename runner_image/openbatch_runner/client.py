"""HTTP client for model servers (aiohttp, chosen by benchmark B1: docs/decisions/).

Turns every way an attempt can end into a `Reply`; raising is reserved for bugs.
"""

import asyncio
import time

import aiohttp
import orjson

from openbatch_runner.outcome import Reply, http_error_body
from openbatch_runner.retry import AttemptKind, parse_retry_after


class ModelClient:
    def __init__(
        self,
        *,
        request_timeout: float,
        api_key: str | None = None,
        max_connections: int = 0,
        connect_timeout: float = 10.0,
    ) -> None:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout, sock_connect=min(connect_timeout, request_timeout)
        )
        self._connector_limit = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._connector_limit, keepalive_timeout=30, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._timeout,
            # Model servers answer JSON; skip aiohttp's cookie handling and auto-raise.
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )
        return self._session

    async def post(self, url: str, body: bytes) -> Reply:
        session = self._session or self._open()
        try:
            async with session.post(url, data=body) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        except TimeoutError:
            return Reply(AttemptKind.TIMEOUT, detail="the model server did not answer in time")
        except aiohttp.ClientError as exc:
            return Reply(
                AttemptKind.CONNECTION, detail=f"connection to the model server failed: {exc!r}"
            )
        request_id = headers.get("x-request-id") or headers.get("request-id")
        if 200 <= status < 300:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                snippet = raw[:200].decode("utf-8", errors="replace")
                return Reply(
                    AttemptKind.INVALID_BODY,
                    status=status,
                    request_id=request_id,
                    detail=f"the model server answered {status} with a body that is not JSON: "
                    f"{snippet!r}",
                )
            return Reply(AttemptKind.OK, status=status, body=parsed, request_id=request_id)
        try:
            err_body = orjson.loads(raw) if raw else http_error_body(status, raw)
        except orjson.JSONDecodeError:
            err_body = http_error_body(status, raw)
        retry_after = None
        if status in (429, 503):
            ms = headers.get("retry-after-ms")
            if ms is not None:
                try:
                    retry_after = max(0.0, float(ms) / 1000.0)
                except ValueError:
                    retry_after = None
            if retry_after is None:
                retry_after = parse_retry_after(headers.get("retry-after"), time.time())
        return Reply(
            AttemptKind.HTTP_ERROR,
            status=status,
            body=err_body,
            request_id=request_id,
            retry_after=retry_after,
            detail=f"HTTP {status}",
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            # Give aiohttp's SSL/keepalive transports a tick to close cleanly.
            await asyncio.sleep(0)
            self._session = None
