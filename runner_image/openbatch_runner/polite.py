"""The polite window: fill a shared model server's spare capacity, nothing more (issue 10).

One `PoliteController` per model server. Every scrape interval it gets a `Tick`: the
server's load (from its Prometheus metrics) or a failed scrape, the latencies of the
batch's own replies since the last tick, and how the shard stands against its deadline.
It answers with the window for that server. docs/runner.md ("Polite batches") explains
the rules; in short:

* **Metrics**: the server's counts include the batch's own requests, so the online
  traffic's share is `running + waiting - in_flight`. The batch may hold the room the
  server has (`capacity - headroom`, a tenth at least one slot left free for online
  arrivals) minus what online traffic is expected to hold: the higher of its latest
  reading and its recent mean, because online load is bursty and the window is set for
  a whole interval on one reading. The window follows that target each tick, down at
  once, up by at most doubling. Shards of one batch see each other as online traffic:
  each takes only its `shares`-th of the free room, so together they fill it once (each
  taking all of it, they would overshoot and swing). The capacity is the lower of two
  estimates: the running count at the last full queue (a queue above the threshold, or a
  429/503/timeout of the batch's own), and, when the server reports its KV cache, the
  requests that fit in `cache_hold` of it (`running / usage * cache_hold`). While neither
  is known the window grows by half per tick (slow start) and a full queue halves it.
  Without a full queue for `probe_seconds`, the queue's estimate rises by one slot.
* **Latency** (no metrics, or `scrape_failures` scrapes in a row failed): the median of the
  recent replies against the idle baseline (the lowest such median seen, first measured at
  the small starting window): above `latency_factor` × baseline, or on a 429/503/timeout
  of the batch's own, halve; otherwise +1 per tick (slow start until the first cut). Stuck
  at the floor for `rebaseline_seconds`, the latency there becomes the baseline (the work
  got slower, or the server is busy for good).
* **Deadline pressure**: by Little's law the shard needs `remaining × reply time / time
  left` requests in flight (its share per server, times `pressure_margin`) to finish a
  tenth of the whole time early. When that is more than politeness gives, it becomes the
  window's floor, worked out again every tick, so the batch takes only the extra capacity
  the deadline asks for and gives it back as soon as politeness alone would finish in time.
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
    """How the shard stands: lines left, seconds to the deadline, servers sharing the work."""

    remaining: int
    seconds_left: float
    servers: int = 1
    seconds_total: float = 0.0  # from the runner's start to the deadline


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
    shares: int = 1  # runners (shards) gated on the same server, each taking its share
    decrease_factor: float = 0.5
    slow_start_factor: float = 1.5
    headroom_fraction: float = 0.1  # of the capacity, at least one slot, left to others
    cache_hold: float = 0.9  # share of the KV cache the server may fill
    min_cache_reading: float = 0.01  # below this a cache reading says nothing about room
    online_smoothing: float = 0.3  # weight of the latest reading in the online mean
    probe_seconds: float = 30.0
    latency_factor: float = 2.0
    latency_replies: int = 16  # recent replies whose median is judged
    min_replies: int = 3
    rebaseline_seconds: float = 30.0
    scrape_failures: int = 3  # failed scrapes in a row before falling back to latency
    pressure_margin: float = 1.1  # the deadline's window, with room for slower replies
    deadline_reserve: float = 0.1  # of the whole time to the deadline: finish this early
    limit: float = field(init=False)  # what politeness allows
    floor: int = field(init=False, default=0)  # what the deadline needs; 0 when no pressure
    signal: Signal = field(init=False, default=Signal.LATENCY)
    capacity: float | None = field(init=False, default=None)  # from the last full queue
    online: float | None = field(init=False, default=None)  # recent mean of online requests
    baseline: float | None = field(init=False, default=None)
    reply_time: float | None = field(init=False, default=None)  # median of recent replies
    slow_start: bool = field(init=False, default=True)
    cut_pending: bool = field(init=False, default=False)
    failures: int = field(init=False, default=0)
    _recent: deque[float] = field(init=False)
    _last_full: float | None = field(init=False, default=None)  # last full queue / probe
    _low_since: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.max_limit = max(1, self.max_limit)
        self.limit = float(min(self.max_limit, max(1, self.start)))
        self._recent = deque(maxlen=self.latency_replies)

    @property
    def window(self) -> int:
        return min(self.max_limit, max(1, self.floor, int(self.limit)))

    @property
    def _polite(self) -> int:
        """The window politeness alone allows (the deadline's floor left out): what cuts
        halve and growth grows, so a floor never inflates the polite value."""
        return min(self.max_limit, max(1, int(self.limit)))

    @property
    def pressure(self) -> bool:
        """Deadline pressure: the window is above what politeness alone would allow."""
        return self.floor > max(1, int(self.limit))

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
        self.limit = min(float(self.max_limit), max(1.0, self.limit))
        self.floor = self._deadline_floor(tick.deadline)
        return self.window

    # ------------------------------------------------------------------ metrics
    def _by_metrics(self, tick: Tick, load: Load) -> None:
        online = max(0.0, load.running + load.waiting - tick.in_flight)
        mean = online if self.online is None else self.online
        self.online = mean + self.online_smoothing * (online - mean)
        full = load.waiting > tick.queue_threshold or tick.overloads > 0
        if full:
            if load.running >= 1:
                self.capacity = load.running  # the server is full at this many
            self._last_full = tick.now
        elif self.capacity is not None and load.running > self.capacity:
            self.capacity = load.running  # it ran more than we thought it could
        room = self._room(load)
        if room is None:  # nothing known of the server's size yet
            if full:
                self._cut(tick.in_flight)
            else:
                self._settle_cut(tick.in_flight)
                self._grow(tick.in_flight)
            return
        self.slow_start = False
        self.cut_pending = False
        # The free room, less what online traffic is expected to take, split across the
        # shards that see it too (with one, simply `room - expected online`).
        free = room - max(online, self.online) - tick.in_flight
        target = round(tick.in_flight + free / max(1, self.shares))
        window = self._polite
        if target <= window:
            self.limit = target  # online traffic took slots (or a queue formed): give back
        elif tick.in_flight * 2 >= window:  # only a window in use grows
            self.limit = min(target, 2.0 * window + 1)
        if self.capacity is not None and not full:
            last_full = tick.now if self._last_full is None else self._last_full
            if online + tick.in_flight >= room and tick.now - last_full >= self.probe_seconds:
                self.capacity += 1  # no full queue for a while: try one slot more
                self._last_full = tick.now

    def _room(self, load: Load) -> float | None:
        """What the server holds without a queue, less the headroom: the lower estimate."""
        bounds: list[float] = []
        if self.capacity is not None:
            headroom = max(1, round(self.capacity * self.headroom_fraction))
            bounds.append(self.capacity - headroom)
        usage = load.cache_usage
        if usage is not None and usage >= self.min_cache_reading and load.running >= 1:
            bounds.append(load.running / usage * self.cache_hold)
        return min(bounds) if bounds else None

    # ------------------------------------------------------------------ latency
    def _learn_latency(self, latencies: tuple[float, ...]) -> float | None:
        """Add the new replies; the median of the recent ones if there are enough."""
        if not latencies:
            return None
        self._recent.extend(latencies)
        median = self.reply_time = statistics.median(self._recent)
        if len(self._recent) < self.min_replies:
            return None
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
            if self.window <= 1:
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
        window = self._polite
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
        self.limit = max(1.0, math.floor(self._polite * self.decrease_factor))

    def _settle_cut(self, in_flight: int) -> None:
        if in_flight <= self.window:
            self.cut_pending = False

    def _deadline_floor(self, info: DeadlineInfo | None) -> int:
        """The window the deadline needs (Little's law), when politeness gives less; else 0."""
        if info is None or info.remaining <= 0 or self.reply_time is None:
            return 0
        # Aim to finish a tenth of the whole time early (at least one reply's time, for the
        # last requests to come back): worked out again every tick, a target at the deadline
        # itself would be approached ever closer and a late hiccup would expire lines.
        reserve = max(self.reply_time, self.deadline_reserve * info.seconds_total)
        usable = info.seconds_left - reserve
        if usable <= 0:
            need = float(self.max_limit)
        else:
            share = info.remaining / max(1, info.servers)
            need = share * self.reply_time / usable * self.pressure_margin
        if need <= self.limit:
            return 0
        return min(self.max_limit, math.ceil(need - 1e-9))  # 55.000000001 is 55


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
