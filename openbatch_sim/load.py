"""Interactive load: Poisson arrivals of chat requests, each request's latency recorded.

The online traffic a batch shares a model server with, for benchmark B7b and the tests, and
for trying `openbatch run --polite` by hand next to `openbatch sim --mode continuous`:

    python -m openbatch_sim.load http://127.0.0.1:8001/v1 --rate 50 --duration 30

The load is open-loop, as users are: the next request is sent at its arrival time whether
or not earlier ones have been answered, so a slow server sees more requests in flight, not
fewer arrivals. Requests stream (`"stream": true`, as chat front ends do), so each sample
has a time to first token (send to the first event carrying content) beside its latency
(send to the end of the stream); `--no-stream` sends plain requests (no first-token time).
The simulator's `x-sim-queue-seconds` header (time spent waiting for a slot) is recorded
too, being the part of a time to first token that a batch adds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import aiohttp

from openbatch_sim.server import QUEUE_HEADER

CONNECTION_ERROR = 0  # `Sample.status` when no HTTP answer came (refused, reset, timeout)


def arrival_offsets(rate: float, rng: random.Random) -> Iterator[float]:
    """Seconds from the start at which requests arrive: a Poisson process of `rate` per
    second (independent exponential gaps of mean 1 / rate)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..100): a value that was observed; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Sample:
    """One interactive request."""

    sent_at: float  # seconds since the load started
    latency: float  # send to the whole answer read (seconds)
    status: int  # HTTP status; CONNECTION_ERROR when there was none
    queue_time: float | None  # the server's x-sim-queue-seconds, when it sent one
    ttft: float | None = None  # send to the first streamed content (seconds); None unstreamed


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts and latency percentiles of the samples sent in a time window."""

    sent: int
    ok: int
    failed: int
    window: float  # seconds the window spans
    rate: float  # arrivals per second in the window
    p50: float  # latency of successful requests (seconds)
    p99: float
    mean: float
    queue_p99: float  # nan when the server reports no queue time
    ttft_p50: float = math.nan  # time to first token of successful streamed requests
    ttft_p99: float = math.nan

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(samples: Sequence[Sample], start: float = 0.0, end: float | None = None) -> Summary:
    """Summary of the samples sent in [start, end] (end: the last send)."""
    if end is None:
        end = max((s.sent_at for s in samples), default=start)
    chosen = [s for s in samples if start <= s.sent_at <= end]
    ok = [s for s in chosen if 200 <= s.status < 300]
    latencies = [s.latency for s in ok]
    queued = [s.queue_time for s in ok if s.queue_time is not None]
    ttfts = [s.ttft for s in ok if s.ttft is not None]
    window = max(0.0, end - start)
    return Summary(
        sent=len(chosen),
        ok=len(ok),
        failed=len(chosen) - len(ok),
        window=window,
        rate=len(chosen) / window if window > 0 else math.nan,
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        mean=sum(latencies) / len(latencies) if latencies else math.nan,
        queue_p99=percentile(queued, 99),
        ttft_p50=percentile(ttfts, 50),
        ttft_p99=percentile(ttfts, 99),
    )


def chat_body(model: str, max_tokens: int, index: int, *, stream: bool = False) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": f"interactive question {index}"}],
        "max_tokens": max_tokens,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def has_content(event: bytes) -> bool:
    """Whether one server-sent event line carries generated text (a first token)."""
    if not event.startswith(b"data:"):
        return False
    data = event[5:].strip()
    if not data or data == b"[DONE]":
        return False
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return False
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        text = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(text, str) and text:
            return True
    return False


class InteractiveLoad:
    """Open-loop Poisson chat load against one OpenAI-compatible base URL."""

    def __init__(
        self,
        base_url: str,
        rate: float,
        *,
        model: str = "interactive",
        max_tokens: int = 16,
        seed: int = 0,
        timeout: float = 60.0,
        stream: bool = True,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.rate = rate
        self.model = model
        self.max_tokens = max_tokens
        self.seed = seed
        self.timeout = timeout
        self.stream = stream
        self.samples: list[Sample] = []
        self.started_at = math.nan  # loop time of the first arrival clock (`run`)

    async def run(self, duration: float | None = None, stop: asyncio.Event | None = None) -> None:
        """Send requests until `duration` seconds have passed or `stop` is set, then wait
        for the answers of those sent; `samples` holds one entry per request sent."""
        if duration is None and stop is None:
            raise ValueError("give a duration, a stop event or both")
        stop = stop if stop is not None else asyncio.Event()
        loop = asyncio.get_running_loop()
        started = self.started_at = loop.time()
        pending: set[asyncio.Task[None]] = set()
        # No connection limit: an open-loop client must not queue behind its own pool.
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for index, offset in enumerate(arrival_offsets(self.rate, random.Random(self.seed))):
                if duration is not None and offset >= duration:
                    break
                delay = started + offset - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
                task = asyncio.create_task(self._one(session, index, started))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)

    async def _one(self, session: aiohttp.ClientSession, index: int, started: float) -> None:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        status, queue_time, ttft = CONNECTION_ERROR, None, None
        try:
            async with session.post(
                self.url,
                data=chat_body(self.model, self.max_tokens, index, stream=self.stream),
                headers={"Content-Type": "application/json"},
            ) as response:
                if self.stream and response.status == 200:
                    async for line in response.content:
                        if ttft is None and has_content(line):
                            ttft = loop.time() - sent
                else:
                    await response.read()
                status = response.status
                header = response.headers.get(QUEUE_HEADER)
                queue_time = float(header) if header is not None else None
        except (aiohttp.ClientError, TimeoutError):
            status = CONNECTION_ERROR
        self.samples.append(Sample(sent - started, loop.time() - sent, status, queue_time, ttft))


class BackgroundLoad:
    """`InteractiveLoad` on its own thread and event loop, for synchronous callers (a
    benchmark that meanwhile waits for an `openbatch run` process)."""

    def __init__(self, load: InteractiveLoad) -> None:
        self.load = load
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._main, name="interactive-load", daemon=True)
        self._error: BaseException | None = None

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self.load.run(stop=self._stop))
        except BaseException as exc:  # reported to the caller by stop()
            self._error = exc
        finally:
            self._loop.close()

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def now(self) -> float:
        """Seconds since the load started, on the samples' clock (asyncio's default loop
        keeps `time.monotonic()`); nan before the thread has started it."""
        return time.monotonic() - self.load.started_at

    def stop(self) -> list[Sample]:
        """Stop sending, wait for the answers outstanding, return every sample."""
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError("interactive load failed") from self._error
        return self.load.samples


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m openbatch_sim.load",
        description="Poisson chat load against an OpenAI-compatible server; prints p50/p99.",
    )
    p.add_argument("base_url", help="e.g. http://127.0.0.1:8001/v1")
    p.add_argument("--rate", type=float, required=True, help="requests per second (mean)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals (30)")
    p.add_argument("--model", default="interactive")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-stream",
        dest="stream",
        action="store_false",
        help="plain requests: no time to first token (for servers that cannot stream)",
    )
    args = p.parse_args(argv)
    load = InteractiveLoad(
        args.base_url,
        args.rate,
        model=args.model,
        max_tokens=args.max_tokens,
        seed=args.seed,
        stream=args.stream,
    )
    asyncio.run(load.run(duration=args.duration))
    print(json.dumps(summarize(load.samples, 0.0, args.duration).to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
