"""The polite window controller: back-off, recovery, fallback and deadline pressure."""

import itertools

import pytest

from openbatch_runner.polite import (
    POLITE_START,
    DeadlineInfo,
    PoliteController,
    RateMeter,
    ScrapeError,
    Signal,
    Tick,
)
from openbatch_runner.prometheus import Load


def load(waiting: float, running: float, cache: float | None = None) -> Load:
    return Load(waiting=waiting, running=running, cache_usage=cache)


def tick(now: float, in_flight: int, **fields: object) -> Tick:
    return Tick(now=now, in_flight=in_flight, **fields)  # type: ignore[arg-type]


def full(c: PoliteController, now: float = 0.0) -> int:
    """Feed ticks with the window fully used and no queue, return the window."""
    return c.observe(tick(now, c.window, load=load(0, c.window)))


def saturate(c: PoliteController, *, capacity: float, now: float = 0.0) -> None:
    """Make the controller learn `capacity` from a full queue (and halve the window)."""
    c.observe(tick(now, c.window, load=load(3, capacity)))


def test_starts_small_and_slow_starts_while_the_queue_is_empty() -> None:
    c = PoliteController(max_limit=100)
    assert c.window == POLITE_START == 2
    windows = [full(c, t) for t in range(8)]
    assert windows == [3, 4, 6, 9, 13, 19, 28, 42]
    assert c.signal is Signal.METRICS and c.capacity is None


def test_an_unused_window_does_not_grow() -> None:
    c = PoliteController(max_limit=100, start=10)
    assert c.observe(tick(0, 2, load=load(0, 2))) == 10
    assert c.observe(tick(1, 5, load=load(0, 5))) == 15


@pytest.mark.parametrize("max_limit", [1, 3, 7, 64])
def test_never_more_than_the_ceiling(max_limit: int) -> None:
    c = PoliteController(max_limit=max_limit)
    for t in range(30):
        assert 1 <= full(c, t) <= max_limit
    assert c.window == max_limit


def test_a_queue_halves_the_window_within_one_tick_and_learns_the_capacity() -> None:
    c = PoliteController(max_limit=100, start=40)
    # The server reports 2 waiting (above llama.cpp's threshold 0) with 24 running.
    assert c.observe(tick(0, 40, load=load(2, 24))) == 20
    assert c.capacity == 24
    # Its requests already queued leave only as they finish: no second cut meanwhile.
    assert c.observe(tick(1, 35, load=load(2, 24))) == 20
    # Drained to the window and still a queue (online load grew): cut again.
    assert c.observe(tick(2, 20, load=load(1, 24))) == 10


def test_the_queue_threshold_tolerates_that_many_waiting() -> None:
    c = PoliteController(max_limit=100, start=10)
    assert c.observe(tick(0, 10, load=load(1, 10), queue_threshold=1.0)) == 15
    assert c.observe(tick(1, 15, load=load(2, 15), queue_threshold=1.0)) == 7


def test_fills_only_the_free_slots_below_capacity_minus_headroom() -> None:
    c = PoliteController(max_limit=100, start=8)
    saturate(c, capacity=20)  # learnt: 20 slots; headroom 2, so the target is 18
    assert c.capacity == 20 and c.window == 4
    # Online traffic runs 8, the batch 4: 6 slots free up to the target; it grows
    # (by a quarter of the window, at least one) until the batch holds 10.
    windows = [c.observe(tick(t, c.window, load=load(0, 8 + c.window))) for t in range(1, 8)]
    assert windows == [5, 7, 9, 10, 10, 10, 10]


def test_online_load_rising_shrinks_the_window_before_a_queue_forms() -> None:
    c = PoliteController(max_limit=100, start=8)
    saturate(c, capacity=20)
    c.limit = 10.0
    # Online traffic goes from 8 to 10 slots: the batch's 10 would push past 18.
    assert c.observe(tick(5, 10, load=load(0, 20))) == 8  # 10 + (18 - 20)
    assert not c.cut_pending  # not a congestion cut: it just stays below the target


def test_recovery_after_online_load_falls() -> None:
    c = PoliteController(max_limit=100, start=16)
    c.observe(tick(0, 16, load=load(5, 16)))  # full: capacity 16, window 8
    assert c.window == 8
    # The online traffic is gone: the batch alone runs; it grows back towards 16 - 2.
    windows = [c.observe(tick(t, c.window, load=load(0, c.window))) for t in range(1, 6)]
    assert windows == [10, 13, 14, 14, 14]


def test_a_full_kv_cache_holds_growth() -> None:
    c = PoliteController(max_limit=100, start=10)
    assert c.observe(tick(0, 10, load=load(0, 10, cache=0.95))) == 10
    assert c.observe(tick(1, 10, load=load(0, 10, cache=0.5))) == 15


def test_never_below_one() -> None:
    c = PoliteController(max_limit=100, start=2)
    for t in range(10):
        assert c.observe(tick(t, 0, load=load(50, 100))) == 1


def test_capacity_probe_after_a_quiet_while() -> None:
    c = PoliteController(max_limit=100, start=8, probe_seconds=30)
    saturate(c, capacity=10)  # target 9
    for t in range(2, 40):
        c.observe(tick(t, c.window, load=load(0, c.window)))
    assert c.capacity == 11  # one slot more after 30 quiet seconds (target 10)
    assert c.window == 10


def test_own_overloads_are_a_full_server() -> None:
    c = PoliteController(max_limit=100, start=20)
    assert c.observe(tick(0, 20, load=load(0, 5), overloads=1)) == 10
    latency = PoliteController(max_limit=100, start=20)
    assert latency.observe(tick(0, 20, overloads=2)) == 10


def test_scrape_failures_fall_back_to_latency_and_recover() -> None:
    c = PoliteController(max_limit=100, start=8)
    full(c)
    assert (c.signal, c.window) == (Signal.METRICS, 12)
    bad = ScrapeError("no answer")
    # Two failures hold the window; the third switches to the latency signal.
    assert c.observe(tick(1, 12, load=bad, latencies=(1.0, 1.0, 1.0))) == 12
    assert c.observe(tick(2, 12, load=bad, latencies=(1.0,))) == 12
    assert c.signal is Signal.METRICS
    assert c.observe(tick(3, 12, load=bad, latencies=(1.0,))) == 18
    assert c.signal.value == "latency"
    assert c.observe(tick(4, 18, load=bad, latencies=(5.0,) * 10)) == 9  # 5 s > 2 x 1 s
    # The metrics answer again: they decide again.
    assert c.observe(tick(5, 9, load=load(0, 9))) == 10
    assert (c.signal, c.failures) == (Signal.METRICS, 0)


def test_latency_mode_backs_off_on_queueing_latency_and_grows_by_one_after() -> None:
    c = PoliteController(max_limit=100, start=4)
    assert c.observe(tick(0, 4, latencies=(0.5, 0.4, 0.6))) == 6  # baseline 0.5, slow start
    assert c.baseline == 0.5
    assert c.observe(tick(1, 6, latencies=(0.6,) * 3)) == 9
    assert c.observe(tick(2, 9, latencies=(1.5,) * 16)) == 4  # median 1.5 > 2 x 0.5
    assert c.observe(tick(3, 9, latencies=(1.5,) * 16)) == 4  # still draining: no 2nd cut
    # Back to normal latency: additive increase, +1 per tick.
    windows = [c.observe(tick(t, c.window, latencies=(0.55,) * 4)) for t in range(4, 8)]
    assert windows == [5, 6, 7, 8]


def test_latency_mode_without_new_replies_holds() -> None:
    c = PoliteController(max_limit=100, start=4)
    assert c.observe(tick(0, 4)) == 4
    assert c.observe(tick(1, 4, latencies=(0.5,))) == 4  # one reply is no median yet


def test_latency_rebaselines_when_stuck_at_the_floor() -> None:
    c = PoliteController(max_limit=100, start=1, rebaseline_seconds=30)
    c.observe(tick(0, 1, latencies=(0.1,) * 3))
    assert c.baseline == 0.1
    stuck = []
    for t in range(1, 60):
        stuck.append(c.observe(tick(t, 1, latencies=(1.0,) * 16)))
        if c.baseline == 1.0:
            break
    # Cut to 1 and held there for 30 s, then 1 s is the new normal.
    assert c.baseline == 1.0 and t == 32 and set(stuck) == {1}
    assert c.observe(tick(t + 1, 1, latencies=(1.0,) * 4)) == 2  # growing again


def _pressure(remaining: int, left: float, rate: float | None) -> DeadlineInfo:
    return DeadlineInfo(remaining=remaining, seconds_left=left, rate=rate)


def test_deadline_pressure_raises_the_floor_step_by_step_up_to_the_ceiling() -> None:
    c = PoliteController(max_limit=50, start=4)
    late = _pressure(remaining=1000, left=100, rate=2.0)  # 500 s of work, 100 s left
    windows = []
    for t in range(0, 60, 1):
        # The server is full all along: politeness alone would keep the window at 1.
        windows.append(c.observe(tick(t, c.window, load=load(5, 20), deadline=late)))
    assert c.pressure
    # +5 (a tenth of 50) every 5 s, never past the ceiling.
    assert windows[0] == 7 and windows[5] == 12 and windows[10] == 17  # from the cut 2
    assert windows[-1] == 50 and max(windows) == 50
    assert all(b >= a for a, b in itertools.pairwise(windows))


def test_deadline_pressure_steps_back_once_comfortably_on_track() -> None:
    c = PoliteController(max_limit=50, start=4)
    c.observe(tick(0, 4, load=load(5, 20), deadline=_pressure(1000, 100, 2.0)))
    assert (c.floor, c.window) == (7, 7)
    # 80 s of work for 100 s left: on track within 90 %, but not comfortably: hold.
    c.observe(tick(5, 7, load=load(5, 20), deadline=_pressure(800, 100, 10.0)))
    assert c.floor == 7
    # 20 s of work left for 100 s: below 60 %: the floor steps back, pressure ends.
    c.observe(tick(10, 7, load=load(5, 20), deadline=_pressure(200, 100, 10.0)))
    assert c.floor == 2
    c.observe(tick(15, 7, load=load(5, 20), deadline=_pressure(200, 100, 10.0)))
    assert (c.floor, c.pressure) == (0, False)


@pytest.mark.parametrize(
    "info",
    [
        _pressure(1000, 100, None),  # not measured yet
        _pressure(0, 100, 0.0),  # nothing left
        _pressure(10, 100, 1.0),  # on track
    ],
)
def test_no_pressure_without_cause(info: DeadlineInfo) -> None:
    c = PoliteController(max_limit=50, start=4)
    c.observe(tick(0, 4, load=load(5, 20), deadline=info))
    assert not c.pressure and c.window == 2


def test_a_stalled_batch_is_under_pressure() -> None:
    c = PoliteController(max_limit=10, start=1)
    c.observe(tick(0, 1, load=load(5, 20), deadline=_pressure(10, 100, 0.0)))
    assert c.pressure and c.window == 2


def test_rate_meter() -> None:
    meter = RateMeter(horizon=20, min_span=5)
    assert meter.rate() is None
    meter.add(0, 0)
    meter.add(4, 40)
    assert meter.rate() is None  # less than 5 s measured
    meter.add(10, 100)
    assert meter.rate() == 10.0
    for t in range(11, 60):
        meter.add(t, 100)  # stalled
    assert meter.rate() == 0.0
