"""Additive-increase / multiplicative-decrease control of the in-flight window.

A batch should fill a model server's spare capacity without overloading it (DESIGN §6):
the window grows by about one request per round trip while latency stays near the best
seen, and halves on 429/503/timeouts or when latency shows requests queueing
inside the server. Like TCP, it cuts at most once per round trip: only a reply to a request
sent after the last cut can cut again, so one congestion episode costs one cut.
It starts in slow start (+1 per reply, doubling per round trip) until the first sign of
congestion, so a batch reaches a large server's capacity in a few round trips rather than
one request per round trip from a standing start.
Pure: time comes in as an argument, so it is table-tested without clocks.
"""

from dataclasses import dataclass, field


@dataclass
class AimdController:
    initial: int
    min_limit: int = 1
    max_limit: int = 1024
    decrease_factor: float = 0.5  # on an explicit "no room" (429/503/timeout)
    queueing_factor: float = 0.5  # on queueing latency: back to where no queue builds
    latency_factor: float = 2.0  # latency above this many times the baseline means queueing
    epoch_seconds: float = 10.0  # the baseline is the best latency of the last 1-2 epochs
    limit: float = field(init=False)
    baseline: float | None = field(init=False, default=None)
    _last_decrease: float = field(init=False, default=float("-inf"))
    _epoch_start: float | None = field(init=False, default=None)
    _epoch_min: float = field(init=False, default=float("inf"))
    _previous_min: float = field(init=False, default=float("inf"))
    slow_start: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self.limit = float(max(self.min_limit, min(self.max_limit, self.initial)))

    @property
    def window(self) -> int:
        return max(self.min_limit, int(self.limit))

    def _track_baseline(self, latency: float, now: float) -> float:
        """Windowed minimum: a server that became slower for good (longer prompts later in
        the file) gets a new baseline within two epochs, while a queue that merely stays
        long does not drag the baseline up with it (a drifting average would, and the
        window would then grow without bound)."""
        if self._epoch_start is None:
            self._epoch_start = now
        elif now - self._epoch_start >= self.epoch_seconds:
            self._previous_min, self._epoch_min = self._epoch_min, float("inf")
            self._epoch_start = now
        self._epoch_min = min(self._epoch_min, latency)
        self.baseline = min(self._previous_min, self._epoch_min)
        return self.baseline

    def on_success(self, latency: float, now: float) -> None:
        baseline = self._track_baseline(latency, now)
        if baseline > 0 and latency > self.latency_factor * baseline:
            self._decrease(now - latency, now, self.queueing_factor)
            return
        step = 1.0 if self.slow_start else 1.0 / self.limit
        self.limit = min(float(self.max_limit), self.limit + step)

    def on_overload(self, now: float, latency: float = 0.0) -> None:
        """A 429/503 or a timeout: the server says it has no room."""
        self._decrease(now - latency, now, self.decrease_factor)

    def _decrease(self, sent_at: float, now: float, factor: float) -> None:
        if sent_at < self._last_decrease:
            return  # sent before the last cut: the same congestion, already answered
        self._last_decrease = now
        self.slow_start = False
        self.limit = max(float(self.min_limit), self.limit * factor)
