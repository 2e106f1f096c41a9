"""The model-server client port, and the factory that picks an implementation.

Implementations turn every way an attempt can end into a `Reply` (see `reply`); raising is
for bugs. Which one the runner uses was decided by benchmark B1
(docs/decisions/0001-http-client-and-json.md).
"""

from typing import Protocol

from openbatch.runner_args import HttpClientKind
from openbatch_runner.reply import Reply


class ModelClient(Protocol):
    async def post(self, url: str, body: bytes) -> Reply: ...

    async def close(self) -> None: ...


def make_client(
    kind: HttpClientKind, *, request_timeout: float, api_key: str | None, max_connections: int
) -> ModelClient:
    # Imported lazily: each client pulls in its own HTTP stack.
    if kind is HttpClientKind.RAW:
        from openbatch_runner.http_raw import RawHttpClient

        return RawHttpClient(
            request_timeout=request_timeout, api_key=api_key, max_connections=max_connections
        )
    from openbatch_runner.http_aiohttp import AiohttpClient

    return AiohttpClient(
        request_timeout=request_timeout, api_key=api_key, max_connections=max_connections
    )
