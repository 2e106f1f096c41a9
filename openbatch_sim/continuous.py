"""Continuous batching as the simulator models it: running requests share the server's speed.

A continuous-batching server (vLLM, SGLang, TGI, llama.cpp) runs one forward step for every
request in its batch; a bigger batch makes each step slower, so *every* running request
slows down while the batch is full, not only the ones that joined last. The model:

* a request needs `work` seconds of service at idle speed (`--service-time`);
* while `n` requests run on `S` slots, each advances at `1 / (1 + k * n / S)` of idle
  speed, `k` being `--occupancy-slowdown`; so a request that runs at a constant occupancy
  `n` takes `work * (1 + k * n / S)`, and one that runs alone `work * (1 + k / S)`;
* the server's throughput with `n` running is `n / (work * (1 + k * n / S))`, growing
  with `n`, so its capacity is reached with every slot busy: `S / (work * (1 + k))`.

`SharedSpeed` is the arithmetic on an explicit clock (table-tested without sleeping);
`ContinuousBatch` drives it with one event-loop timer for the next request to finish.
"""

from __future__ import annotations

import asyncio
import itertools

_DONE = 1e-9  # remaining idle-speed seconds below which a request has finished


def slowdown_factor(running: int, slots: int, slowdown: float) -> float:
    """How much longer a step takes with `running` requests in the batch than at idle."""
    return 1.0 + slowdown * running / slots


def capacity(slots: int, service_time: float, slowdown: float) -> float:
    """Requests per second with every slot busy: the most this server can answer."""
    return slots / (service_time * slowdown_factor(slots, slots, slowdown))


class SharedSpeed:
    """Remaining work of each running request, advanced at the speed the occupancy allows.

    Times are plain floats from the caller's clock; nothing here sleeps.
    """

    __slots__ = ("_now", "_remaining", "slots", "slowdown")

    def __init__(self, slots: int, slowdown: float, now: float = 0.0) -> None:
        self.slots = slots
        self.slowdown = slowdown
        self._now = now
        self._remaining: dict[int, float] = {}

    @property
    def running(self) -> int:
        return len(self._remaining)

    def _factor(self) -> float:
        return slowdown_factor(len(self._remaining), self.slots, self.slowdown)

    def advance(self, now: float) -> None:
        """Credit every running request with the work done since the last call."""
        elapsed = now - self._now
        if elapsed > 0 and self._remaining:
            done = elapsed / self._factor()
            for key in self._remaining:
                self._remaining[key] -= done
        self._now = max(self._now, now)

    def retune(self, slots: int, slowdown: float, now: float) -> None:
        """A new slot count or slowdown applies from `now` on (runtime `/sim/config`)."""
        self.advance(now)
        self.slots = slots
        self.slowdown = slowdown

    def add(self, key: int, work: float, now: float) -> None:
        self.advance(now)
        self._remaining[key] = work

    def remove(self, key: int, now: float) -> None:
        """A request that left before finishing (its client went away)."""
        self.advance(now)
        self._remaining.pop(key, None)

    def finished(self, now: float) -> list[int]:
        """Requests whose work is done by `now`; they leave the batch."""
        self.advance(now)
        done = [key for key, left in self._remaining.items() if left <= _DONE]
        for key in done:
            del self._remaining[key]
        return done

    def next_finish(self) -> float | None:
        """When the first running request will finish if nobody joins or leaves."""
        if not self._remaining:
            return None
        return self._now + max(0.0, min(self._remaining.values())) * self._factor()


class ContinuousBatch:
    """`await batch.serve(work)` returns when `work` is done at the shared speed."""

    __slots__ = ("_ids", "_timer", "_waiters", "speed")

    def __init__(self, slots: int, slowdown: float) -> None:
        self.speed = SharedSpeed(slots, slowdown, asyncio.get_running_loop().time())
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._ids = itertools.count()

    def retune(self, slots: int, slowdown: float) -> None:
        self.speed.retune(slots, slowdown, asyncio.get_running_loop().time())
        self._reschedule()

    async def serve(self, work: float) -> None:
        loop = asyncio.get_running_loop()
        key = next(self._ids)
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters[key] = waiter
        self.speed.add(key, work, loop.time())
        self._reschedule()
        try:
            await waiter
        except asyncio.CancelledError:
            if self._waiters.pop(key, None) is not None:
                self.speed.remove(key, loop.time())
                self._reschedule()
            raise

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.speed.next_finish()
        if when is not None:
            self._timer = asyncio.get_running_loop().call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for key in self.speed.finished(asyncio.get_running_loop().time()):
            waiter = self._waiters.pop(key)
            if not waiter.done():
                waiter.set_result(None)
        self._reschedule()
