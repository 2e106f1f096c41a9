"""One `GET` of a model server's metrics page, for `--polite`.

Like `probe`, a fresh connection per call (`Connection: close`): a scrape a second is
nothing next to the batch's own traffic, and it never takes a pooled connection that a
request is waiting for. The response is parsed by llhttp (`httptools`, the runner's HTTP
stack already), so chunked bodies work too. Any failure is a `ScrapeFailed` with a reason.
"""

import asyncio
import ssl
from urllib.parse import urlsplit

import httptools

MAX_METRICS_BYTES = 8 * 1024 * 1024  # a vLLM with many models writes a few hundred KB

_SSL: ssl.SSLContext | None = None


class ScrapeFailed(Exception):
    """The metrics page could not be read; the message says why."""


class _Response:
    """httptools callbacks: the status and the body of one response."""

    def __init__(self) -> None:
        self.status = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_METRICS_BYTES:
            raise ScrapeFailed(f"the metrics page is larger than {MAX_METRICS_BYTES} bytes")
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True


def _tls() -> ssl.SSLContext:
    global _SSL  # noqa: PLW0603  # built once: loading the CA bundle is slow
    if _SSL is None:
        _SSL = ssl.create_default_context()
    return _SSL


def _request(host: str, port: int, target: str, api_key: str | None) -> bytes:
    authority = f"[{host}]" if ":" in host else host
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    return (
        f"GET {target} HTTP/1.1\r\nHost: {authority}:{port}\r\n{auth}"
        "Accept: text/plain\r\nConnection: close\r\nUser-Agent: openbatch-runner\r\n\r\n"
    ).encode("latin-1")


async def fetch_metrics(url: str, wait: float, api_key: str | None = None) -> str:
    """The body of `GET url` if it answers 200 within `wait` seconds; else `ScrapeFailed`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    context = _tls() if https else None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = _request(host, port, target, api_key)
    response = _Response()
    parser = httptools.HttpResponseParser(response)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            writer.write(request)
            await writer.drain()
            while not response.done:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
                response.status = parser.get_status_code()
    except TimeoutError:
        raise ScrapeFailed(f"no answer from {url} within {wait:g}s") from None
    except httptools.HttpParserCallbackError as exc:
        raise ScrapeFailed(str(exc.__context__ or exc)) from None
    except httptools.HttpParserError as exc:
        raise ScrapeFailed(f"{url} did not answer HTTP: {exc}") from None
    except (OSError, ssl.SSLError, UnicodeError, ValueError) as exc:
        raise ScrapeFailed(f"cannot connect to {host}:{port}: {exc!r}") from None
    finally:
        if writer is not None:
            writer.close()
    if not response.done:
        raise ScrapeFailed(f"{url} closed the connection before the end of its answer")
    if response.status != 200:
        raise ScrapeFailed(f"{url} answered HTTP {response.status}")
    return b"".join(response.chunks).decode("utf-8", errors="replace")
