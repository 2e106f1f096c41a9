"""Is a model server answering at all? One `GET <base>/v1/models` on a fresh connection.

Any HTTP status line counts as an answer (a 401 or 404 still proves the server is there);
a refused or reset connection, a TLS failure or silence until the timeout do not. A fresh
connection is used on purpose: a pooled one may be the very socket that went bad.
"""

import asyncio
import ssl
from urllib.parse import urlsplit

from openbatch.routing import endpoint_url

_SSL: ssl.SSLContext | None = None


async def probe(base_url: str, wait: float, api_key: str | None = None) -> str | None:
    """None if the server answered within `wait` seconds, else what went wrong."""
    url = urlsplit(endpoint_url(base_url, "/v1/models"))
    host = url.hostname or ""
    https = url.scheme == "https"
    port = url.port or (443 if https else 80)
    context = None
    if https:
        global _SSL  # noqa: PLW0603  # built once: loading the CA bundle is slow
        if _SSL is None:
            _SSL = ssl.create_default_context()
        context = _SSL
    authority = f"[{host}]" if ":" in host else host
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    request = (
        f"GET {url.path or '/'} HTTP/1.1\r\nHost: {authority}:{port}\r\n{auth}"
        "Accept: application/json\r\nConnection: close\r\nUser-Agent: openbatch-runner\r\n\r\n"
    ).encode("latin-1")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
    except TimeoutError:
        return f"no answer within {wait:g}s"
    except (OSError, ssl.SSLError, UnicodeError, ValueError) as exc:
        return f"cannot connect to {host}:{port}: {exc!r}"
    finally:
        if writer is not None:
            writer.close()
    if not status_line.startswith(b"HTTP/"):
        return "the server closed the connection without an HTTP answer"
    return None
