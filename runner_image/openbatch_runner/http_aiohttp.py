"""Model-server client on aiohttp (one of the two clients benchmark B1 compares)."""

import asyncio

import aiohttp

from openbatch_runner.reply import Reply, error_reply, ok_reply
from openbatch_runner.retry import AttemptKind


class AiohttpClient:
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
        if 200 <= status < 300:
            return ok_reply(status, raw, headers.get)
        return error_reply(status, raw, headers.get)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            # Give aiohttp's SSL/keepalive transports a tick to close cleanly.
            await asyncio.sleep(0)
            self._session = None
