"""Model-server client on bare asyncio + httptools (one of the two clients benchmark B1 compares).

The runner only ever sends one shape of request — a JSON POST answered by a JSON body — so a
general-purpose HTTP client spends most of its CPU on features this path never uses (cookie
jars, redirects, multidict headers, streaming readers, per-request timer objects). This client
is a minimal HTTP/1.1 implementation for exactly that exchange:

* one `asyncio.Protocol` per TCP connection, its response parsed by llhttp (`httptools`);
* a keep-alive pool per (scheme, host, port): idle connections are reused last-in first-out
  (the warmest socket, and the coldest ones age out), at most `max_connections` per pool;
* one request at a time per connection (no pipelining), written with a single `write`;
* one coarse repeating timer per client enforces every request's deadline;
* a pooled connection found dead before any response byte is replaced once, silently;
* every way an attempt can end becomes a `Reply`, exactly as `AiohttpClient` maps them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

from openbatch_runner.reply import Reply, error_reply, ok_reply
from openbatch_runner.retry import AttemptKind

# A response this large is a broken or hostile server, not a model answer; holding it would
# risk the runner's memory for every other line in flight.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
# Idle connections older than this are closed instead of reused (aiohttp's setting in
# AiohttpClient): the server has likely dropped them, and it bounds idle sockets after a
# burst of concurrency.
KEEPALIVE_IDLE_SECONDS = 30.0
_TARGET_CACHE_SIZE = 4096  # distinct URLs whose request head is kept pre-encoded

# Response headers `ok_reply`/`error_reply` look up (and Connection, for anyone debugging a
# pool); only these are decoded and kept, saving a dict entry and a decode per header.
_KEPT_HEADERS = frozenset(
    {b"x-request-id", b"request-id", b"retry-after", b"retry-after-ms", b"connection"}
)


class _Headers(dict[str, str]):
    """The kept response headers, keyed by lower-case name."""

    __slots__ = ()

    def lookup(self, name: str) -> str | None:
        return self.get(name.lower())


class _Connection(asyncio.Protocol):
    """One keep-alive TCP connection and the state of the exchange it is serving.

    The transport callbacks resolve `_waiter` exactly once per request: when the response
    is complete, when the connection fails, or when the deadline passes (`expire`). The
    caller then reads `complete` / `timed_out` / `error` to see which.
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_framed",
        "_headers_done",
        "_parser",
        "_waiter",
        "complete",
        "deadline",
        "error",
        "headers",
        "idle",
        "idle_since",
        "lost",
        "pool",
        "received",
        "reusable",
        "status",
        "timed_out",
        "transport",
        "uses",
    )

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self.uses = 0  # requests sent; > 1 means the current one reuses the connection
        self.lost = False  # the transport is gone (either side closed it)
        self.idle = False  # sitting in the pool's idle deque
        self.idle_since = 0.0
        self.deadline = 0.0  # loop time at which the current request times out
        self.headers = _Headers()
        self._reset()

    def _reset(self) -> None:
        # Headers are replaced in on_message_begin, the one place a response starts.
        self.status = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._framed = False  # Content-Length or chunked: the body does not end at EOF
        self._headers_done = False
        self.complete = False
        self.reusable = True
        self.received = False  # any response byte arrived for the current request
        self.timed_out = False
        self.error = ""

    # ---- request side -----------------------------------------------------------------

    def send(self, request: bytes, waiter: asyncio.Future[None]) -> None:
        self._reset()
        self.uses += 1
        self._waiter = waiter
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            # Closed between being pooled and now (the server's FIN is still on its way
            # through the loop): fail like a connection reset, so the stale retry applies.
            self._fail("the connection was closed by the model server while idle")
            return
        try:
            transport.write(request)
        except (OSError, RuntimeError) as exc:  # uvloop raises on a transport closing now
            self._fail(f"sending the request failed: {exc!r}")

    def body(self) -> bytes:
        return b"".join(self._body)

    def expire(self) -> None:
        """The current request's deadline passed (called by the client's sweeper)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self.timed_out = True
            waiter.set_result(None)

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, detail: str) -> None:
        self.reusable = False
        if not self.error:
            self.error = detail
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport does not subclass asyncio.Transport, only implements it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for (after a response, or on an idle socket): the stream
            # can no longer be trusted to line up responses with requests.
            self.reusable = False
            if self.transport is not None:
                self.transport.abort()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            # Raised by our own callbacks (the size cap), which set `error` first.
            self._fail(self.error or "the model server sent an unusable HTTP response")
            self.abort()
        except httptools.HttpParserUpgrade:
            self._fail("the model server switched protocols instead of answering")
            self.abort()
        except httptools.HttpParserError as exc:
            self._fail(f"the model server sent an invalid HTTP response: {exc}")
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost sorts out what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._headers_done and not self._framed:
                # A body without Content-Length or chunking ends when the connection does.
                self._finish()
                return
            if not self.received:
                what = "closed the connection before answering"
            elif self._headers_done:
                what = (
                    f"closed the connection in the middle of a response body "
                    f"({self._body_size} bytes received)"
                )
            else:
                what = "closed the connection in the middle of the response headers"
            reason = f": {exc!r}" if exc is not None else ""
            self._fail(f"the model server {what}{reason}")
        else:
            self.pool.forget_idle(self)

    # ---- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # A second response to one request: the server is out of step with us.
            self.reusable = False
            return
        # Also clears what an interim 1xx response left behind.
        self.headers = _Headers()
        self._framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return  # an unsolicited message; it must not overwrite the real answer's headers
        lname = name.lower()
        if lname in _KEPT_HEADERS:
            self.headers[lname.decode("latin-1")] = value.decode("latin-1")
        elif lname == b"content-length":
            self._framed = True
            try:
                length = int(value)
            except ValueError:
                return  # llhttp rejects it with a precise error right after
            if length > self.pool.max_response_bytes:
                self._too_large()
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self._body_size += len(body)
        if self._body_size > self.pool.max_response_bytes:
            self._too_large()
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # Interim response (100 Continue, 103 Early Hints): the real one follows.
            self._headers_done = False
            return
        self._finish()

    def _finish(self) -> None:
        self.status = self._parser.get_status_code()
        self.complete = True
        transport = self.transport
        # llhttp folds `Connection: close`, HTTP/1.0 and read-until-close into
        # should_keep_alive(); a request still being written (the server answered early)
        # would leave its tail in the stream, so that connection is not reused either.
        if (
            self.lost
            or transport is None
            or not self._parser.should_keep_alive()
            or transport.get_write_buffer_size()
        ):
            self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _too_large(self) -> None:
        self.error = (
            f"the model server's response is larger than {self.pool.max_response_bytes} "
            "bytes; the connection was dropped"
        )
        raise _ResponseTooLargeError


class _ResponseTooLargeError(Exception):
    """Raised inside a parser callback to stop llhttp; reported through `error`."""


class _PoolClosedError(ConnectionError):
    pass


class _Pool:
    """Keep-alive connections to one origin.

    `count` is the number of slots taken: connections being opened, busy or idle. When the
    limit is reached, callers queue on `_waiters` and are handed either a connection that
    just finished (reuse it) or None (a slot was freed and reserved for you: connect).
    """

    __slots__ = (
        "_idle",
        "_waiters",
        "closed",
        "connect_timeout",
        "count",
        "host",
        "limit",
        "max_response_bytes",
        "port",
        "ssl",
    )

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        limit: int,
        connect_timeout: float,
        max_response_bytes: int,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.max_response_bytes = max_response_bytes
        self.count = 0
        self.closed = False
        # Right end is the most recently used connection; the left end ages out first.
        self._idle: deque[_Connection] = deque()
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()

    @property
    def idle(self) -> int:
        return len(self._idle)

    def take_idle(self, now: float) -> _Connection | None:
        """The most recently used live idle connection, if any (the no-wait fast path)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            conn.idle = False
            if not conn.lost and now - conn.idle_since < KEEPALIVE_IDLE_SECONDS:
                return conn
            conn.close()
            self._free_slot()
        return None

    async def checkout(self, deadline: float) -> _Connection:
        """A connection for one request: an idle one, a new one, or one handed over."""
        loop = asyncio.get_running_loop()
        conn = self.take_idle(loop.time())
        if conn is not None:
            return conn
        if self.limit <= 0 or self.count < self.limit:
            self.count += 1
            return await self.connect(deadline)
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                handed = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection or slot just as we gave up: pass it on.
                handed_over = waiter.result()
                if handed_over is None:
                    self._free_slot()
                else:
                    self.release(handed_over, loop.time())
            else:
                self._waiters.remove(waiter)
            raise
        if handed is not None:
            return handed
        return await self.connect(deadline)

    async def connect(self, deadline: float) -> _Connection:
        """Open a connection into a slot the caller already holds; frees it on failure."""
        try:
            if self.closed:
                raise _PoolClosedError("the client was closed")
            loop = asyncio.get_running_loop()
            timeout = min(self.connect_timeout, deadline - loop.time())
            async with asyncio.timeout(max(timeout, 0.0)):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except BaseException:
            self._free_slot()
            raise
        return conn

    def release(self, conn: _Connection, now: float) -> None:
        """Return a connection after a fully read response."""
        if not conn.reusable or conn.lost or self.closed:
            self.discard(conn)
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle = True
        conn.idle_since = now
        idle = self._idle
        idle.append(conn)
        while idle and now - idle[0].idle_since >= KEEPALIVE_IDLE_SECONDS:
            oldest = idle.popleft()
            oldest.idle = False
            oldest.close()
            self._free_slot()

    def discard(self, conn: _Connection, *, keep_slot: bool = False) -> None:
        """Close a connection that cannot serve another request (abort: no graceful flush,
        since a response may still be arriving on it)."""
        conn.abort()
        if not keep_slot:
            self._free_slot()

    def forget_idle(self, conn: _Connection) -> None:
        """The server closed an idle connection: drop it now rather than on the next use."""
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)
            self._free_slot()

    def _free_slot(self) -> None:
        self.count -= 1
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self.count += 1  # reserved for the waiter, who connects
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        while self._idle:
            conn = self._idle.pop()
            conn.idle = False
            conn.abort()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # its connect() fails with "client was closed"


class _Target:
    """A URL resolved once: its pool and the request head around Content-Length's value."""

    __slots__ = ("head", "pool", "tail")

    def __init__(self, pool: _Pool, head: bytes, tail: bytes) -> None:
        self.pool = pool
        self.head = head
        self.tail = tail


class RawHttpClient:
    def __init__(
        self,
        *,
        request_timeout: float,
        api_key: str | None = None,
        max_connections: int = 0,
        connect_timeout: float = 10.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if api_key and any(c in api_key for c in "\r\n\0"):
            raise ValueError("the API key must not contain line breaks or NUL")
        self._request_timeout = request_timeout
        self._timeout_detail = f"the model server did not answer within {request_timeout:g}s"
        self._auth = f"Authorization: Bearer {api_key}\r\n".encode() if api_key else b""
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._max_response_bytes = max_response_bytes
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[str, _Target] = {}
        self._ssl: ssl.SSLContext | None = None  # built on first https use (it loads CAs)
        # Connections serving a request right now: the sweeper times them out, close()
        # aborts them.
        self._busy: set[_Connection] = set()
        # One coarse repeating timer instead of a timer per request: under uvloop a
        # call_at + cancel per request cost ~10% of this client's CPU in
        # bench/http_client_micro.py. A request times out between request_timeout and
        # request_timeout + tick after it started.
        self._tick = min(1.0, max(0.01, request_timeout / 20))
        self._sweeper: asyncio.TimerHandle | None = None

    async def post(self, url: str, body: bytes) -> Reply:
        target = self._targets.get(url)
        if target is None:
            try:
                target = self._resolve(url)
            except ValueError as exc:
                return Reply(AttemptKind.CONNECTION, detail=f"cannot send to {url!r}: {exc}")
        loop = asyncio.get_running_loop()
        request = b"".join((target.head, str(len(body)).encode(), target.tail, body))
        pool = target.pool
        sends = [0]  # requests written, counted by _exchange (a stale connection adds one)
        try:
            result = await self._exchange(pool, request, loop, sends)
        except TimeoutError:
            # Waiting for a pool slot or connecting used up the deadline (or connect_timeout).
            return Reply(AttemptKind.TIMEOUT, detail=self._timeout_detail, sent=max(1, sends[0]))
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake, client closed
            return Reply(
                AttemptKind.CONNECTION,
                detail=f"cannot connect to the model server at {pool.host}:{pool.port}: {exc!r}",
                sent=max(1, sends[0]),
            )
        if isinstance(result, Reply):
            return result
        conn = result
        status = conn.status
        raw = conn.body()
        headers = conn.headers
        pool.release(conn, loop.time())
        reply = (
            ok_reply(status, raw, headers.lookup)
            if 200 <= status < 300
            else error_reply(status, raw, headers.lookup)
        )
        reply.sent = sends[0]
        return reply

    async def _exchange(
        self, pool: _Pool, request: bytes, loop: asyncio.AbstractEventLoop, sends: list[int]
    ) -> _Connection | Reply:
        """Send `request` and wait for its response: the connection holding a complete
        response (the caller releases it), or a Reply saying why there is none.
        `sends[0]` counts the requests written (what the error line reports)."""
        now = loop.time()
        deadline = now + self._request_timeout
        conn = pool.take_idle(now)
        if conn is None:
            conn = await pool.checkout(deadline)
        busy = self._busy
        retried = False
        while True:
            conn.deadline = deadline
            busy.add(conn)
            if self._sweeper is None:
                self._sweeper = loop.call_later(self._tick, self._sweep)
            waiter: asyncio.Future[None] = loop.create_future()
            sends[0] += 1
            conn.send(request, waiter)
            try:
                await waiter
            except BaseException:
                # Cancelled (the runner's grace period ran out): the response may still be
                # on its way, so this connection can never be reused.
                pool.discard(conn)
                raise
            finally:
                busy.discard(conn)
            if conn.complete:
                return conn
            if conn.timed_out:
                pool.discard(conn)
                return Reply(AttemptKind.TIMEOUT, detail=self._timeout_detail, sent=sends[0])
            if conn.uses > 1 and not conn.received and not retried:
                # A pooled connection the server closed while it sat idle (keep-alive
                # timeout, restart) fails before any response byte. That is not the model
                # server failing this request, so it must not cost an attempt: retry once on
                # a new connection, within the same deadline. Resending is safe enough:
                # batch lines are processed at-least-once anyway (the runner retries every
                # CONNECTION failure), and a server that closed the socket without a byte of
                # answer has almost always not started on the request. A failure on the new
                # connection is reported as it is.
                retried = True
                pool.discard(conn, keep_slot=True)
                conn = await pool.connect(deadline)
                continue
            pool.discard(conn)
            return Reply(AttemptKind.CONNECTION, detail=conn.error, sent=sends[0])

    def _sweep(self) -> None:
        """Time out the requests whose deadline passed; re-arm while any are in flight."""
        self._sweeper = None
        if not self._busy:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in [c for c in self._busy if c.deadline <= now]:
            conn.expire()
        self._sweeper = loop.call_later(self._tick, self._sweep)

    def _resolve(self, url: str) -> _Target:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError("only http:// and https:// URLs are supported")
        host = parts.hostname
        if not host:
            raise ValueError("the URL has no host")
        default_port = 443 if scheme == "https" else 80
        port = parts.port or default_port  # .port raises ValueError for a bad port
        try:
            host.encode("ascii")
        except UnicodeEncodeError:
            host = host.encode("idna").decode("ascii")
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            ssl_context = None
            if scheme == "https":
                if self._ssl is None:
                    self._ssl = ssl.create_default_context()
                ssl_context = self._ssl
            pool = _Pool(
                host=host,
                port=port,
                ssl_context=ssl_context,
                limit=self._max_connections,
                connect_timeout=self._connect_timeout,
                max_response_bytes=self._max_response_bytes,
            )
            self._pools[key] = pool
        authority = f"[{host}]" if ":" in host else host
        if port != default_port:
            authority = f"{authority}:{port}"
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        # Spaces and non-ASCII would corrupt the request line; everything else passes as is.
        path = quote(path, safe="/?&=%:@!$'()*+,;~-._[]")
        head = (
            f"POST {path} HTTP/1.1\r\n"
            f"Host: {authority}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: application/json\r\n"
            "Content-Length: "
        ).encode("ascii")
        tail = b"\r\n" + self._auth + b"User-Agent: openbatch-runner\r\n\r\n"
        target = _Target(pool, head, tail)
        if len(self._targets) >= _TARGET_CACHE_SIZE:
            self._targets.clear()
        self._targets[url] = target
        return target

    def stats(self) -> dict[str, int]:
        """Open and idle connections over all pools (for tests and benchmarks)."""
        return {
            "open": sum(p.count for p in self._pools.values()),
            "idle": sum(p.idle for p in self._pools.values()),
            "busy": len(self._busy),
        }

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            pool.close()
        for conn in self._busy:
            conn.abort()
        self._busy.clear()
        self._pools.clear()
        self._targets.clear()
        # Let the aborted transports run connection_lost before the loop may stop.
        await asyncio.sleep(0)
