"""Scheduling of a shard's lines onto the model servers: attempts, retries, outages.

* A window slot is held for one HTTP attempt only. A line waiting out a backoff sits in a
  timer, not in the window, so retries of a few lines never starve everyone else (issue 7,
  item 10); due retries go before new lines.
* Every attempt goes to a server that is up (`servers.HealthMonitor`); a retry prefers
  another server than the one that just failed it. A no-answer result from a server that
  is down (an outage) costs the line no attempt: the line waits for a server instead.
  Before a line is failed for getting no answer on its last attempt, its server is probed:
  if the probe gets no answer either, the server is down and the line waits.
* A line's total backoff is bounded (`max_retry_wait`); past it the last answer is final.
* No line vanishes: whatever goes wrong while handling one ends as an error line.
"""

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from openbatch.lines import LineErrorCode
from openbatch.request_body import body_span
from openbatch.routing import endpoint_url
from openbatch.usage import ZERO_USAGE
from openbatch_runner.client import ModelClient
from openbatch_runner.outcome import LineResult, error_line, result_line
from openbatch_runner.reply import Reply
from openbatch_runner.retry import RetryPolicy, backoff_delay, counts_as_step, should_retry
from openbatch_runner.servers import HealthMonitor, Server, Verdict
from openbatch_runner.window import Window

# Attempts lost to outages are free, but not without end: a server that keeps failing
# requests while answering probes (e.g. too slow for the request timeout) must not keep a
# line forever.
MAX_FREE_RETRIES = 20

ReadBatch = Callable[[], Awaitable[list[tuple[int, bytes]]]]
Deliver = Callable[[int, LineResult], None]
Observe = Callable[[Reply, float, float], None]


class ServerGate(Protocol):
    """Per-server windows (`--polite`): each server takes only as many requests as its own
    load allows. The global `Window` still bounds the total."""

    def room(self, server: Server) -> int:
        """Free slots in `server`'s own window."""
        ...

    def taken(self, server: Server) -> None: ...

    def returned(self, server: Server, reply: Reply | None, latency: float) -> None:
        """An attempt ended: with its reply, or None when it was cut short (a stop)."""
        ...


@dataclass(slots=True)
class LineJob:
    """One line on its way through attempts."""

    index: int
    custom_id: str
    path: str
    body: bytes  # the exact bytes of the line's `body` value
    attempts: int = 0  # counted against max_attempts
    sent: int = 0  # requests sent (or tried), outage retries included: what errors report
    waited: float = 0.0  # seconds of backoff so far
    steps: int = 0  # failures without a Retry-After: the exponent of the backoff
    free: int = 0  # attempts not counted because their server was down
    last: Server | None = None


def parse_job(index: int, raw: bytes) -> LineJob:
    obj = orjson.loads(raw)
    start, end = body_span(raw)
    custom_id, path = obj["custom_id"], obj["url"]
    if type(custom_id) is not str or type(path) is not str:
        raise ValueError("custom_id and url must be strings")
    return LineJob(index, custom_id, path, raw[start:end])


def custom_id_of(index: int, raw: bytes) -> str:
    """The line's custom_id if it has one, else `line-<number>` (for an error line)."""
    try:
        custom_id = orjson.loads(raw)["custom_id"]
    except Exception:  # the line itself may be what is broken
        custom_id = None
    return custom_id if type(custom_id) is str else f"line-{index + 1}"


def runner_error_line(custom_id: str, exc: BaseException) -> LineResult:
    """The error line of a line the runner failed to handle: counted as failed."""
    message = f"The runner could not process this request: {exc!r}"
    data = error_line(custom_id, LineErrorCode.RUNNER_ERROR, message)
    return LineResult(False, False, data, ZERO_USAGE)


class Dispatcher:
    def __init__(
        self,
        *,
        client: ModelClient,
        monitor: HealthMonitor,
        window: Window,
        policy: RetryPolicy,
        max_retry_wait: float,
        deliver: Deliver,
        observe: Observe,
        max_live: int,
        say: Callable[[str], None],
        rng: random.Random | None = None,
        gate: ServerGate | None = None,
    ) -> None:
        self._client = client
        self._monitor = monitor
        self._window = window
        self._policy = policy
        self._max_retry_wait = max_retry_wait
        self._deliver_cb = deliver
        self._observe = observe
        self._max_live = max_live
        self._say = say
        self._rng = rng or random.Random()
        self._gate = gate
        self._ready: deque[LineJob] = deque()  # retries that are due, and outage victims
        self._timers: set[asyncio.TimerHandle] = set()
        self._live = 0  # lines taken and not yet delivered (in flight, waiting or ready)
        self._wake = asyncio.Event()
        self._stopping = False
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def live(self) -> int:
        return self._live

    def stop(self) -> None:
        """Start no further attempt; lines not finished are left for the resume (or unrun)."""
        self._stopping = True
        self._window.close()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._ready.clear()
        self._wake.set()

    async def run(self, read_batch: ReadBatch) -> None:
        """Dispatch every line `read_batch` yields (an empty batch ends the input) and
        return once each is delivered, or at a stop. Raises `OutageTimeout`."""
        new: deque[tuple[int, bytes]] = deque()
        exhausted = False
        while not self._stopping:
            job: LineJob | None = None
            if self._ready:
                job = self._ready.popleft()
            elif new and self._live < self._max_live:
                index, raw = new.popleft()
                job = self._take(index, raw)
                if job is None:
                    continue
            elif not new and not exhausted and self._live < self._max_live:
                batch = await read_batch()
                if batch:
                    new.extend(batch)
                else:
                    exhausted = True
                continue
            elif exhausted and not new and self._live == 0:
                return
            else:
                self._wake.clear()
                await self._wake.wait()
                continue
            if not await self._launch(job):
                return

    async def _launch(self, job: LineJob) -> bool:
        """Start one attempt of `job` on a server; False once dispatch is over."""
        if not await self._window.acquire():
            return False
        gate = self._gate
        try:
            server = await self._monitor.pick(job.last, gate.room if gate else None)
        except BaseException:
            self._window.release()
            raise
        if server is None or self._stopping:
            self._window.release()
            return False
        if gate is not None:
            gate.taken(server)
        task = asyncio.create_task(self._attempt(job, server))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    def _take(self, index: int, raw: bytes) -> LineJob | None:
        try:
            job = parse_job(index, raw)
        except Exception as exc:  # no line may vanish, whatever it holds
            self._deliver_cb(index, runner_error_line(custom_id_of(index, raw), exc))
            return None
        self._live += 1
        return job

    async def _attempt(self, job: LineJob, server: Server) -> None:
        loop = asyncio.get_running_loop()
        holding = True
        try:
            started = loop.time()
            reply = await self._client.post(endpoint_url(server.base_url, job.path), job.body)
            now = loop.time()
            holding = False
            self._release(server, reply, now - started)
            job.sent += reply.sent
            verdict = self._monitor.record(
                server, reply.kind, reply.detail, now, line=job.index, sent_at=started
            )
            self._observe(reply, now - started, now)
            await self._settle(job, reply, server, verdict)
        except asyncio.CancelledError:
            raise  # the grace period ran out: the line is resumed later or written as unrun
        except Exception as exc:  # no line may vanish
            self._finish(job, runner_error_line(job.custom_id, exc))
        finally:
            if holding:
                self._release(server, None, 0.0)

    def _release(self, server: Server, reply: Reply | None, latency: float) -> None:
        self._window.release()
        if self._gate is not None:
            self._gate.returned(server, reply, latency)

    async def _settle(self, job: LineJob, reply: Reply, server: Server, verdict: Verdict) -> None:
        job.last = server
        retry = should_retry(reply.kind, reply.status, job.attempts + 1, self._policy)
        if (
            verdict is Verdict.FAILED
            and not retry
            and job.free < MAX_FREE_RETRIES
            and not self._stopping
            and await self._monitor.confirm_down(server, reply.detail)
        ):
            verdict = Verdict.OUTAGE  # no answer on the last attempt, and none to a probe
        if verdict is Verdict.OUTAGE and job.free < MAX_FREE_RETRIES and not self._stopping:
            job.free += 1  # the server's outage, not the line's failure: no attempt spent
            self._ready.append(job)
            self._wake.set()
            return
        job.attempts += 1
        if retry:
            if self._stopping:
                self._drop(job)  # not finished: resumed later, or written as unrun
                return
            if counts_as_step(reply.retry_after):
                job.steps += 1
            delay = backoff_delay(job.steps, self._policy, reply.retry_after, self._rng)
            if job.waited + delay <= self._max_retry_wait:
                job.waited += delay
                self._schedule(job, delay)
                return
        self._finish(job, result_line(job.custom_id, reply, job.sent))

    def _schedule(self, job: LineJob, delay: float) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def due() -> None:
            self._timers.discard(timer)
            if not self._stopping:
                self._ready.append(job)
                self._wake.set()

        timer = loop.call_later(delay, due)
        self._timers.add(timer)

    def _drop(self, job: LineJob) -> None:
        self._live -= 1
        self._wake.set()

    def _finish(self, job: LineJob, result: LineResult) -> None:
        self._live -= 1
        self._wake.set()
        try:
            self._deliver_cb(job.index, result)
        except Exception as exc:
            self._say(f"error: could not record line {job.index + 1} ({job.custom_id}): {exc!r}")
            raise
