"""The model servers of a run and their health: which one takes the next request.

An outage is a property of a server, not of the lines sent to it (issue 7). A server that
stops answering (connection refused or reset, timeouts) for `eject_after` different lines,
with no answer from it since any of those requests was sent, is taken out of rotation.
One line failing again and again is that line's problem, and so is a request that hung
while the server kept answering others (its timeout arrives long after those answers).
Requests go to the other servers, a probe watches the ejected one, and it comes back when
the probe (or a late reply) gets an answer. Any HTTP answer counts as one, even a 500: the
server is reachable and its errors are the lines' business (retried per line).

The decisions are pure (`ServerPool`); time comes in as an argument. `HealthMonitor` adds
the asyncio side: waiting while no server is up, probing the ejected ones, and giving up
once every server has been down for the outage timeout.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from openbatch_runner.retry import AttemptKind

NO_ANSWER = frozenset({AttemptKind.CONNECTION, AttemptKind.TIMEOUT})
DEFAULT_EJECT_AFTER = 3


class Health(StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass
class Server:
    base_url: str
    health: Health = Health.UP
    failing_lines: set[int] = field(default_factory=set)  # lines without answer in a row
    last_answer: float = float("-inf")  # when the server last answered anything
    down_since: float | None = None
    last_error: str = ""
    ejections: int = 0


class Verdict(StrEnum):
    """What one attempt's result says about its server."""

    ANSWERED = "answered"  # the server answered (any status)
    FAILED = "failed"  # no answer, but the server is still in rotation: the line's problem
    OUTAGE = "outage"  # no answer from a server that is down: the line spends no attempt


@dataclass
class ServerPool:
    """Round robin over the servers that are up; pure bookkeeping of their health."""

    servers: list[Server]
    eject_after: int = DEFAULT_EJECT_AFTER
    _next: int = field(default=0, init=False)
    _all_down_since: float | None = field(default=None, init=False)

    @classmethod
    def of(cls, urls: list[str], eject_after: int = DEFAULT_EJECT_AFTER) -> "ServerPool":
        return cls([Server(url) for url in urls], eject_after=eject_after)

    @property
    def up(self) -> list[Server]:
        return [s for s in self.servers if s.health is Health.UP]

    @property
    def all_down_since(self) -> float | None:
        """Since when no server has been up (None while one is)."""
        return self._all_down_since

    def pick(
        self, avoid: Server | None = None, room: Callable[[Server], int] | None = None
    ) -> Server | None:
        """The next server that is up, preferring one other than `avoid` (a retry goes
        elsewhere when it can); None when every server is down.

        With `room` (free slots of each server's own window, `--polite`), the up server with
        the most room, ties in round-robin order; `avoid` only if no other has room.
        """
        if room is not None:
            roomy = self._roomiest(avoid, room)
            if roomy is not None:
                return roomy
        servers = self.servers
        count = len(servers)
        fallback: Server | None = None
        for step in range(count):
            server = servers[(self._next + step) % count]
            if server.health is not Health.UP:
                continue
            if server is avoid and count > 1:
                fallback = server
                continue
            self._next = (self._next + step + 1) % count
            return server
        return fallback

    def _roomiest(self, avoid: Server | None, room: Callable[[Server], int]) -> Server | None:
        servers = self.servers
        count = len(servers)
        best: Server | None = None
        best_room = 0
        best_step = 0
        for step in range(count):
            server = servers[(self._next + step) % count]
            if server.health is not Health.UP:
                continue
            free = room(server)
            if server is avoid and count > 1:
                free = min(free, 1)  # only when no other server has room
            if free > best_room:
                best, best_room, best_step = server, free, step
        if best is not None:
            self._next = (self._next + best_step + 1) % count
        return best

    def record(
        self,
        server: Server,
        kind: AttemptKind,
        detail: str,
        now: float,
        *,
        line: int,
        sent_at: float,
    ) -> Verdict:
        if kind not in NO_ANSWER:
            server.last_answer = now
            self.mark_up(server, now)
            return Verdict.ANSWERED
        if server.last_answer >= sent_at and server.health is Health.UP:
            return Verdict.FAILED  # it answered others meanwhile: this request's own failure
        server.failing_lines.add(line)
        server.last_error = detail
        if server.health is Health.UP and len(server.failing_lines) >= self.eject_after:
            self.mark_down(server, now, detail)
        return Verdict.OUTAGE if server.health is Health.DOWN else Verdict.FAILED

    def mark_down(self, server: Server, now: float, detail: str) -> None:
        if server.health is Health.DOWN:
            return
        server.health = Health.DOWN
        server.down_since = now
        server.last_error = detail
        server.ejections += 1
        if not self.up:
            self._all_down_since = now

    def mark_up(self, server: Server, now: float) -> None:
        server.failing_lines.clear()
        if server.health is Health.UP:
            return
        server.health = Health.UP
        server.down_since = None
        self._all_down_since = None


Probe = Callable[[str], Awaitable[str | None]]  # base URL -> None if it answered, else why


class OutageTimeout(Exception):
    """Every model server has been down for longer than the outage timeout."""


class HealthMonitor:
    """Probes ejected servers and lets dispatch wait while none is up."""

    def __init__(
        self,
        pool: ServerPool,
        probe: Probe,
        *,
        outage_timeout: float,
        say: Callable[[str], None],
        probe_interval: float = 0.5,
        max_probe_interval: float = 2.0,
    ) -> None:
        self.pool = pool
        self._probe = probe
        self._outage_timeout = outage_timeout
        self._say = say
        self._interval = probe_interval
        self._max_interval = max_probe_interval
        self._up = asyncio.Event()
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self._sync()

    def _sync(self) -> None:
        if self.pool.up or self._closed:
            self._up.set()
        else:
            self._up.clear()

    async def check_all(self) -> None:
        """Probe every server once before dispatch: one that does not answer is reported
        at once and starts out of rotation."""
        loop = asyncio.get_running_loop()
        servers = self.pool.servers
        results = await asyncio.gather(*(self._probe(s.base_url) for s in servers))
        for server, error in zip(servers, results, strict=True):
            if error is not None:
                self.pool.mark_down(server, loop.time(), error)
                self._say(
                    f"model server {server.base_url} does not answer: {error}; "
                    f"waiting for it (up to {self._outage_timeout:g}s if no server answers)"
                )
                self._watch(server)
        self._sync()

    def record(
        self,
        server: Server,
        kind: AttemptKind,
        detail: str,
        now: float,
        *,
        line: int,
        sent_at: float,
    ) -> Verdict:
        was = server.health
        verdict = self.pool.record(server, kind, detail, now, line=line, sent_at=sent_at)
        if was is Health.UP and server.health is Health.DOWN:
            others = len(self.pool.up)
            self._say(
                f"model server {server.base_url} stopped answering ({detail}); dispatch to it "
                f"paused, probing it ({others} other server(s) up)"
            )
            self._watch(server)
        elif was is Health.DOWN and server.health is Health.UP:
            self._recovered(server, now)
        self._sync()
        return verdict

    async def confirm_down(self, server: Server, detail: str) -> bool:
        """Before a line is failed for getting no answer: is its server there at all?
        True if it is not (it is now out of rotation, and the line should wait instead)."""
        if server.health is Health.DOWN:
            return True
        error = await self._probe(server.base_url)
        if error is None:
            return False  # the server answers: the line's failure is its own
        if server.health is Health.UP:
            self.pool.mark_down(server, asyncio.get_running_loop().time(), detail)
            self._say(
                f"model server {server.base_url} stopped answering ({detail}; probe: {error}); "
                f"dispatch to it paused, probing it ({len(self.pool.up)} other server(s) up)"
            )
            self._watch(server)
            self._sync()
        return True

    async def pick(
        self, avoid: Server | None = None, room: Callable[[Server], int] | None = None
    ) -> Server | None:
        """A server that is up; waits while none is. None once closed; raises
        `OutageTimeout` when every server stayed down for the outage timeout."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            server = self.pool.pick(avoid, room)
            if server is not None:
                return server
            since = self.pool.all_down_since
            start = since if since is not None else loop.time()
            remaining = start + self._outage_timeout - loop.time()
            if remaining <= 0:
                raise OutageTimeout(self._outage_message())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), remaining)
        return None

    def _outage_message(self) -> str:
        details = "; ".join(f"{s.base_url}: {s.last_error}" for s in self.pool.servers)
        return f"no model server answered for {self._outage_timeout:g}s ({details})"

    def _watch(self, server: Server) -> None:
        if self._closed or server.base_url in self._probes:
            return
        task = asyncio.create_task(self._probe_until_up(server))
        self._probes[server.base_url] = task
        task.add_done_callback(lambda _t: self._probes.pop(server.base_url, None))

    async def _probe_until_up(self, server: Server) -> None:
        loop = asyncio.get_running_loop()
        interval = self._interval
        while server.health is Health.DOWN and not self._closed:
            await asyncio.sleep(interval)
            error = await self._probe(server.base_url)
            if error is None and server.health is Health.DOWN:
                self.pool.mark_up(server, loop.time())
                self._recovered(server, loop.time())
                self._sync()
                return
            if error is not None:
                server.last_error = error
            interval = min(self._max_interval, interval * 1.5)

    def _recovered(self, server: Server, now: float) -> None:
        self._say(f"model server {server.base_url} answers again; back in rotation")

    async def close(self) -> None:
        """Stop probing and release every waiter of `pick` (which then returns None)."""
        self._closed = True
        self._up.set()
        tasks = list(self._probes.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
