"""Additive-increase / multiplicative-decrease control of the in-flight window.

A batch should fill a model server's spare capacity without overloading it (DESIGN §6):
the window grows by about one request per round trip while latency stays near the best
seen, and halves when latency shows requests queueing inside the server or when "no room"
answers (429/503/timeouts) say so. It starts in slow start (+1 per reply, doubling per
round trip) until the first sign of congestion, so a batch reaches a large server's
capacity in a few round trips rather than one request per round trip from a standing start.

Congestion or noise (issue 7, item 9)? Some servers answer 429/503 at random, whatever the
load (a shared gateway, flaky replicas). Cutting the window on each of them pins it at 1.
So "no room" answers are judged per round (at least one window's worth of replies, and
never fewer than `min_round`), not one by one:

* a round whose error fraction is within a few standard errors of the noise estimate
  (the error fraction that does not depend on our load) changes nothing (a round below
  the estimate lowers it a little: the noise may have stopped);
* a round above it cuts the window in half, on suspicion;
* the next round, counting only requests sent after the cut, settles the suspicion: if
  the fraction fell, it was congestion and the cut stays; if it did not fall, the errors
  do not grow with the window: they are noise, the estimate takes their level and the cut
  is undone.

Latency is judged per reply as before: it rises only with real queueing. Like TCP, the
window is cut at most once per round trip: only a reply to a request sent after the last
cut can cut again.
Pure: time comes in as an argument, so it is table-tested without clocks.
"""

import math
from dataclasses import dataclass, field


@dataclass
class _Suspicion:
    limit: float  # the window before the cut
    slow_start: bool
    fraction: float  # the error fraction that caused it
    samples: int


@dataclass
class AimdController:
    initial: int
    min_limit: int = 1
    max_limit: int = 1024
    decrease_factor: float = 0.5  # on "no room" answers beyond the noise
    queueing_factor: float = 0.5  # on queueing latency: back to where no queue builds
    latency_factor: float = 2.0  # latency above this many times the baseline means queueing
    epoch_seconds: float = 10.0  # the baseline is the best latency of the last 1-2 epochs
    min_round: int = 20  # replies a round needs at least before its error rate is judged
    noise_sigmas: float = 3.0  # how far above the noise estimate a round must be to suspect
    noise_weight: float = 0.05  # how fast the noise estimate falls with rounds below it
    limit: float = field(init=False)
    baseline: float | None = field(init=False, default=None)
    noise: float = field(init=False, default=0.0)  # load-independent error fraction
    slow_start: bool = field(init=False, default=True)
    _last_decrease: float = field(init=False, default=float("-inf"))
    _epoch_start: float | None = field(init=False, default=None)
    _epoch_min: float = field(init=False, default=float("inf"))
    _previous_min: float = field(init=False, default=float("inf"))
    _round_replies: int = field(init=False, default=0)
    _round_errors: int = field(init=False, default=0)
    _round_start: float = field(init=False, default=float("-inf"))
    _round_target: int = field(init=False, default=0)  # replies that complete the round
    _suspicion: _Suspicion | None = field(init=False, default=None)

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
            if self._decrease(now - latency, now, self.queueing_factor):
                self._suspicion = None  # queueing is congestion beyond doubt
                self._new_round(now)
            return
        self._count(now - latency, now, error=False)
        step = 1.0 if self.slow_start else 1.0 / self.limit
        self.limit = min(float(self.max_limit), self.limit + step)

    def on_overload(self, now: float, latency: float = 0.0) -> None:
        """A 429/503 or a timeout: the server says it has no room (or answers so at random)."""
        self._count(now - latency, now, error=True)

    def _count(self, sent_at: float, now: float, *, error: bool) -> None:
        if self._suspicion is not None and sent_at < self._last_decrease:
            return  # sent before the cut under test: it says nothing about the new window
        self._round_replies += 1
        self._round_errors += error
        if not self._round_target:
            self._round_target = max(self.min_round, self.window)
        if self._round_replies >= self._round_target:
            self._judge_round(now)

    def _judge_round(self, now: float) -> None:
        n, fraction = self._round_replies, self._round_errors / self._round_replies
        started = self._round_start
        self._new_round(now)
        suspicion = self._suspicion
        if suspicion is not None:
            self._suspicion = None
            # Did halving the window lower the error fraction? Compare the two rounds.
            spread = math.sqrt(
                _variance(suspicion.fraction) / suspicion.samples + _variance(fraction) / n
            )
            if fraction >= suspicion.fraction - spread:
                # No: the errors do not depend on our load. Learn their level, undo the cut.
                self.noise = (suspicion.fraction + fraction) / 2
                self.limit = max(self.limit, suspicion.limit)
                self.slow_start = suspicion.slow_start
            return
        threshold = self.noise + self.noise_sigmas * math.sqrt(_variance(self.noise) / n) + 0.01
        if fraction > threshold:
            before = _Suspicion(self.limit, self.slow_start, fraction, n)
            # At most one cut per round trip: not if latency already cut during this round.
            if self._decrease(started, now, self.decrease_factor):
                self._suspicion = before
            return
        if fraction < self.noise:
            # Only down: rounds near the operating point must not raise it, or real
            # overload would slowly be learnt as noise. It rises only on proof (above).
            self.noise += self.noise_weight * (fraction - self.noise)

    def _new_round(self, now: float) -> None:
        self._round_replies = 0
        self._round_errors = 0
        self._round_start = now
        self._round_target = 0  # set by the round's first reply, after any cut

    def _decrease(self, sent_at: float, now: float, factor: float) -> bool:
        if sent_at < self._last_decrease:
            return False  # sent before the last cut: the same congestion, already answered
        self._last_decrease = now
        self.slow_start = False
        self.limit = max(float(self.min_limit), self.limit * factor)
        return True


def _variance(p: float) -> float:
    """Of one reply's error indicator, floored so that a zero rate still has some spread."""
    p = min(max(p, 0.02), 0.98)
    return p * (1 - p)
