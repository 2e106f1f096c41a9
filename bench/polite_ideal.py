"""The best any polite batch could do on the simulator's continuous server (B7b's ideal rows).

An event simulation, on a virtual clock, of exactly the model `openbatch sim --mode
continuous` serves: `openbatch_sim.continuous.SharedSpeed` for the running requests, one
FIFO queue in front of the slots, streamed interactive answers whose first token comes
after `prefill_share` of their service, Poisson arrivals. The batch in it is *ideal*: it
knows the server's occupancy at every instant and sends a request whenever fewer than
`slots - headroom` requests are in the server, so its requests never wait and online ones
wait only when their own burst fills the headroom. A controller that reads metrics once an
interval cannot do better; the benchmark prints these figures beside the measured ones, so
a target the server's own physics forbids shows as such.

Pure: no sockets, no sleeping; the same seed gives the same figures.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from enum import Enum

from openbatch_sim.continuous import SharedSpeed
from openbatch_sim.load import percentile


class _Phase(Enum):
    PREFILL = 1  # an interactive request before its first token
    DECODE = 2  # ... after it
    BATCH = 3  # a batch request (not streamed: one piece of work)


@dataclass(frozen=True)
class Outcome:
    """Interactive latency (seconds) and the batch's rate over the measured span."""

    headroom: int | None  # None: no batch
    ttft_p50: float
    ttft_p99: float
    p50: float
    p99: float
    batch_rate: float  # batch requests finished per second


@dataclass(frozen=True)
class Server:
    slots: int
    service_time: float
    slowdown: float
    prefill_share: float


def simulate(
    server: Server,
    rate: float,
    *,
    headroom: int | None,
    seconds: float = 200.0,
    warmup: float = 20.0,
    seed: int = 1,
) -> Outcome:
    """Interactive arrivals at `rate` per second, and an ideal batch keeping the server at
    `slots - headroom` requests (`headroom` None: no batch); figures after `warmup`."""
    rng = random.Random(seed)
    speed = SharedSpeed(server.slots, server.slowdown)
    work = server.service_time
    prefill = work * server.prefill_share
    phase: dict[int, tuple[_Phase, float]] = {}  # running request -> (phase, arrival)
    queue: deque[tuple[int, _Phase, float]] = deque()
    held = 0  # slots taken (a request keeps its slot from prefill to the end)
    ids = 0
    ttfts: list[float] = []
    latencies: list[float] = []
    batch_done = 0
    now = 0.0
    arrival = rng.expovariate(rate)

    def start(key: int, kind: _Phase, arrived: float) -> None:
        nonlocal held
        held += 1
        phase[key] = (kind, arrived)
        speed.add(key, prefill if kind is _Phase.PREFILL else work, now)

    def top_up() -> None:
        """Admit the queue's head while slots are free, then the ideal batch's requests."""
        nonlocal ids
        while queue and held < server.slots:
            start(*queue.popleft())
        if headroom is None:
            return
        while held + len(queue) < server.slots - headroom:
            ids += 1
            start(ids, _Phase.BATCH, now)

    top_up()
    end = warmup + seconds
    while now < end:
        finish = speed.next_finish()
        if finish is None or arrival <= finish:
            now = arrival
            arrival = now + rng.expovariate(rate)
            ids += 1
            queue.append((ids, _Phase.PREFILL, now))
            top_up()
            continue
        now = finish
        for key in speed.finished(now):
            kind, arrived = phase.pop(key)
            measured = arrived >= warmup
            if kind is _Phase.PREFILL:
                if measured:
                    ttfts.append(now - arrived)
                phase[key] = (_Phase.DECODE, arrived)
                speed.add(key, work - prefill, now)
                continue
            held -= 1
            if kind is _Phase.DECODE and measured:
                latencies.append(now - arrived)
            elif kind is _Phase.BATCH and now >= warmup:
                batch_done += 1
        top_up()
    return Outcome(
        headroom=headroom,
        ttft_p50=percentile(ttfts, 50),
        ttft_p99=percentile(ttfts, 99),
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        batch_rate=batch_done / seconds,
    )


def frontier(server: Server, rate: float, *, seed: int = 1) -> tuple[Outcome, list[Outcome]]:
    """The server alone, then the ideal batch at headrooms from 0 to a quarter of the slots
    (about 12 steps)."""
    alone = simulate(server, rate, headroom=None, seed=seed)
    step = max(1, server.slots // 48)
    rows = [
        simulate(server, rate, headroom=h, seed=seed) for h in range(0, server.slots // 4 + 1, step)
    ]
    return alone, rows


def best_within(alone: Outcome, rows: list[Outcome], limit: float) -> Outcome | None:
    """The row with the highest batch rate whose TTFT p99 and p99 both stay within
    `limit` (0.2: +20 %) of the server alone."""
    fitting = [
        r
        for r in rows
        if r.ttft_p99 <= (1 + limit) * alone.ttft_p99 and r.p99 <= (1 + limit) * alone.p99
    ]
    return max(fitting, key=lambda r: r.batch_rate, default=None)
