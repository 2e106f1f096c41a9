"""The polite window: fill a shared model server's spare capacity, nothing more (issue 10).

One `PoliteController` per model server. Every scrape interval it gets a `Tick`: the
server's load (from its Prometheus metrics) or a failed scrape, the latencies of the
batch's own replies since the last tick, and how the shard stands against its deadline.
It answers with the window for that server. docs/runner.md ("Polite batches") explains
the rules; in short:

* **Metrics**: the server's queue counts everyone's requests, the batch's own included, so
  a queue above the threshold means the batch holds slots that others need: the window is
  halved (once, until the batch's requests in flight have drained to the new window). The
  server's running count at that moment is its capacity; from then on the batch fills only
  the free slots below `capacity - headroom` (a tenth, at least one slot, stays free for
  online arrivals), growing by at most a quarter of the window per tick and shrinking as
  soon as online traffic takes more slots. Before the first full queue the window grows
  by half per tick (slow start). A nearly full KV cache holds growth. Without a full queue
  for `probe_seconds`, the capacity estimate rises by one slot (the server may have room).
* **Latency** (no metrics, or `scrape_failures` scrapes in a row failed): the median of the
  recent replies against the idle baseline (the lowest such median seen, first measured at
  the small starting window): above `latency_factor` × baseline, halve; otherwise +1 per
  tick (slow start until the first cut). Stuck at the floor for `rebaseline_seconds`, the
  latency there becomes the baseline (the work got slower, or the server is busy for good).
* **Both**: a 429, 503 or timeout of the batch's own requests is a full server.
* **Deadline pressure**: when the recent completion rate would finish the shard's
  remaining lines later than `on_track` of the time left, the window's floor rises by a
  tenth of the ceiling every `pressure_step_seconds`, so the batch takes capacity
  gradually; once it is comfortably on track again (`release`), the floor steps back down.
  The window never exceeds `max_limit` (the shard's `maxInFlight` share) nor goes below 1.

Pure: time and measurements come in as arguments, so it is table-tested without clocks.
"""

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from openbatch_runner.prometheus import Load

POLITE_START = 2  # the first window of every server: measure before taking


@dataclass(frozen=True)
class ScrapeError:
    """The metrics could not be read (no answer, not 200, not Prometheus text)."""

    reason: str


@dataclass(frozen=True)
class DeadlineInfo:
    """How the shard stands: lines left, seconds to the deadline, recent lines per second."""

    remaining: int
    seconds_left: float
    rate: float | None  # None while too little has been measured


@dataclass(frozen=True)
class Tick:
    """What one scrape interval showed about one server."""

    now: float
    in_flight: int  # the batch's requests to this server right now
    load: Load | ScrapeError | None = None  # None: not scraped (latency mode by choice)
    queue_threshold: float = 0.0
    latencies: tuple[float, ...] = ()  # the batch's successful replies since the last tick
    overloads: int = 0  # ... and its 429/503/timeouts
    deadline: DeadlineInfo | None = None


class Signal(StrEnum):
    """What the window follows."""

    METRICS = "metrics"
    LATENCY = "latency"


@dataclass
class PoliteController:
    max_limit: int
    start: int = POLITE_START
    decrease_factor: float = 0.5
    slow_start_factor: float = 1.5
    growth_fraction: float = 0.25  # growth towards the free slots per tick, of the window
    headroom_fraction: float = 0.1  # of the capacity, at least one slot, left to others
    cache_hold: float = 0.9  # KV cache usage at which the window stops growing
    probe_seconds: float = 30.0
    latency_factor: float = 2.0
    latency_replies: int = 16  # recent replies whose median is judged
    min_replies: int = 3
    rebaseline_seconds: float = 30.0
    scrape_failures: int = 3  # failed scrapes in a row before falling back to latency
    on_track: float = 0.9  # finish within this share of the time left: no pressure
    release: float = 0.6  # finish within this share: the pressure steps back
    pressure_step_seconds: float = 5.0
    pressure_step_fraction: float = 0.1  # of max_limit, at least 1
    limit: float = field(init=False)
    floor: int = field(init=False, default=0)  # raised by deadline pressure
    signal: Signal = field(init=False, default=Signal.LATENCY)
    capacity: float | None = field(init=False, default=None)
    baseline: float | None = field(init=False, default=None)
    slow_start: bool = field(init=False, default=True)
    cut_pending: bool = field(init=False, default=False)
    failures: int = field(init=False, default=0)
    _recent: deque[float] = field(init=False)
    _last_full: float | None = field(init=False, default=None)  # last full queue / probe
    _low_since: float | None = field(init=False, default=None)
    _last_step: float = field(init=False, default=float("-inf"))

    def __post_init__(self) -> None:
        self.max_limit = max(1, self.max_limit)
        self.limit = float(min(self.max_limit, max(1, self.start)))
        self._recent = deque(maxlen=self.latency_replies)

    @property
    def window(self) -> int:
        return min(self.max_limit, max(self._lower, int(self.limit)))

    @property
    def pressure(self) -> bool:
        """Deadline pressure: the floor is raised above what politeness alone would allow."""
        return self.floor > 0

    @property
    def _lower(self) -> int:
        return max(1, self.floor)

    def observe(self, tick: Tick) -> int:
        """Take one interval's measurements; the window for the next one."""
        fresh = self._learn_latency(tick.latencies)
        load = tick.load
        if isinstance(load, Load):
            self.failures = 0
            self.signal = Signal.METRICS
            self._by_metrics(tick, load)
        elif isinstance(load, ScrapeError):
            self.failures += 1
            if self.failures >= self.scrape_failures:
                self.signal = Signal.LATENCY
            if self.signal is Signal.LATENCY:
                self._by_latency(tick, fresh)
            elif tick.overloads:
                self._cut(tick.in_flight)  # metrics unreadable for now; "no room" is plain
        else:
            self.signal = Signal.LATENCY
            self._by_latency(tick, fresh)
        if tick.deadline is not None:
            self._pressure(tick.now, tick.deadline)
        self.limit = min(float(self.max_limit), max(float(self._lower), self.limit))
        return self.window

    # ------------------------------------------------------------------ metrics
    def _by_metrics(self, tick: Tick, load: Load) -> None:
        if load.waiting > tick.queue_threshold or tick.overloads:
            if load.running >= 1:
                self.capacity = load.running  # the server is full at this many
            self._last_full = tick.now
            self._cut(tick.in_flight)
            return
        self._settle_cut(tick.in_flight)
        if self.capacity is not None and load.running > self.capacity:
            self.capacity = load.running  # it ran more than we thought it could
        if load.cache_usage is not None and load.cache_usage >= self.cache_hold:
            return  # memory nearly full: the next requests would queue or preempt
        capacity = self.capacity
        if capacity is None:
            self._grow(tick.in_flight)
            return
        target = capacity - max(1, round(capacity * self.headroom_fraction))
        free = target - load.running
        desired = tick.in_flight + free
        window = self.window
        if desired > window and tick.in_flight * 2 >= window:
            step = max(1.0, math.ceil(window * self.growth_fraction))
            self.limit = min(desired, window + step)
        elif desired < window:
            self.limit = max(float(self._lower), desired)  # online traffic took slots
        last_full = tick.now if self._last_full is None else self._last_full
        if free <= 0 and tick.now - last_full >= self.probe_seconds:
            self.capacity = capacity + 1  # no full queue for a while: try one slot more
            self._last_full = tick.now

    # ------------------------------------------------------------------ latency
    def _learn_latency(self, latencies: tuple[float, ...]) -> float | None:
        """Add the new replies; the median of the recent ones if there are enough."""
        if not latencies:
            return None
        self._recent.extend(latencies)
        if len(self._recent) < self.min_replies:
            return None
        median = statistics.median(self._recent)
        if self.baseline is None or median < self.baseline:
            self.baseline = median
        return median

    def _by_latency(self, tick: Tick, median: float | None) -> None:
        if tick.overloads:
            self._cut(tick.in_flight)
            return
        if median is None or self.baseline is None:
            return  # nothing new to judge
        if median > self.latency_factor * self.baseline:
            if self.window <= self._lower:
                if self._low_since is None:
                    self._low_since = tick.now
                elif tick.now - self._low_since >= self.rebaseline_seconds:
                    self.baseline = median  # as idle as the batch can make it: the new normal
                    self._low_since = None
            self._cut(tick.in_flight)
            return
        self._low_since = None
        self._settle_cut(tick.in_flight)
        self._grow(tick.in_flight)

    # ------------------------------------------------------------------ shared
    def _grow(self, in_flight: int) -> None:
        """Slow start (by half) until the first cut, then +1; only a window in use grows."""
        window = self.window
        if in_flight * 2 < window:
            return
        grown = window + 1.0
        if self.slow_start:
            grown = max(grown, window * self.slow_start_factor)
        self.limit = min(float(self.max_limit), grown)

    def _cut(self, in_flight: int) -> None:
        """Multiplicative decrease, once until the batch's requests drained to the window
        (requests already queued leave the queue only as they finish)."""
        self.slow_start = False
        self._recent.clear()  # replies sent before the cut say nothing about the new window
        self._settle_cut(in_flight)
        if self.cut_pending:
            return
        self.cut_pending = True
        self.limit = max(float(self._lower), math.floor(self.window * self.decrease_factor))

    def _settle_cut(self, in_flight: int) -> None:
        if in_flight <= self.window:
            self.cut_pending = False

    def _pressure(self, now: float, info: DeadlineInfo) -> None:
        if info.rate is None or info.remaining <= 0 or info.seconds_left <= 0:
            return
        finish = info.remaining / info.rate if info.rate > 0 else math.inf
        if now - self._last_step < self.pressure_step_seconds:
            return
        step = max(1, math.ceil(self.max_limit * self.pressure_step_fraction))
        if finish > info.seconds_left * self.on_track:
            self.floor = min(self.max_limit, max(self.floor, self.window) + step)
            self._last_step = now
        elif finish < info.seconds_left * self.release and self.floor > 0:
            self.floor = max(0, self.floor - step)
            self._last_step = now


@dataclass
class RateMeter:
    """Lines finished per second over the last `horizon` seconds (pure; time as argument)."""

    horizon: float = 20.0
    min_span: float = 5.0
    _points: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, done: int) -> None:
        self._points.append((now, done))
        while len(self._points) > 2 and now - self._points[1][0] >= self.horizon:
            self._points.popleft()

    def rate(self) -> float | None:
        if len(self._points) < 2:
            return None
        (t0, d0), (t1, d1) = self._points[0], self._points[-1]
        if t1 - t0 < self.min_span:
            return None
        return (d1 - d0) / (t1 - t0)
