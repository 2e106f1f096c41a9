"""The polite window controller: back-off, recovery, fallback and deadline pressure."""

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


def server(waiting: float, running: float, size: float = 200) -> Load:
    """A server whose KV cache holds `size` requests like these."""
    return Load(waiting=waiting, running=running, cache_usage=running / size)


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
    sized = PoliteController(max_limit=100, start=10)
    assert sized.observe(tick(0, 4, load=server(0, 4))) == 10  # room known, but unused


@pytest.mark.parametrize("max_limit", [1, 3, 7, 64])
def test_never_more_than_the_ceiling(max_limit: int) -> None:
    c = PoliteController(max_limit=max_limit)
    for t in range(30):
        assert 1 <= full(c, t) <= max_limit
    assert c.window == max_limit


def test_a_queue_teaches_the_capacity_and_cuts_to_the_room_within_one_tick() -> None:
    c = PoliteController(max_limit=100, start=40)
    # 2 waiting (above llama.cpp's threshold 0) with 24 running: the server holds 24, a
    # tenth stays free; the queue is the batch's own (24 + 2 - 40 < 0 online requests).
    assert c.observe(tick(0, 40, load=load(2, 24))) == 22
    assert c.capacity == 24 and c.online == 0
    # Its requests already queued leave only as they finish; the room stays the same.
    assert c.observe(tick(1, 35, load=load(2, 24))) == 22
    # Drained to the window and a queue again: 3 online requests now share the server.
    assert c.observe(tick(2, 22, load=load(1, 24))) == 19


def test_the_queue_threshold_tolerates_that_many_waiting() -> None:
    c = PoliteController(max_limit=100, start=10)
    assert c.observe(tick(0, 10, load=load(1, 10), queue_threshold=1.0)) == 15
    assert c.capacity is None
    # 2 waiting: full at 15 running (room 13), and 2 of the 17 requests are online ones.
    assert c.observe(tick(1, 15, load=load(2, 15), queue_threshold=1.0)) == 11
    assert c.capacity == 15


def test_the_kv_cache_tells_the_room_before_any_queue() -> None:
    c = PoliteController(max_limit=1000, start=2)
    # The batch alone: the cache would hold 200 such requests, 90 % of it is the room;
    # the window goes there at most doubling per tick.
    windows = [c.observe(tick(t, c.window, load=server(0, c.window))) for t in range(7)]
    assert windows == [5, 11, 23, 47, 95, 180, 180]
    assert c.capacity is None  # never needed a queue to learn it
    # A reading of a nearly empty cache says nothing: slow start instead.
    slow = PoliteController(max_limit=1000, start=2)
    assert slow.observe(tick(0, 2, load=Load(0, 2, cache_usage=0.001))) == 3


def test_the_lower_of_the_two_capacities_counts() -> None:
    c = PoliteController(max_limit=1000, start=100)
    # A queue at 120 running although the cache had room for 200: 120 it is (108 room).
    assert c.observe(tick(0, 100, load=server(5, 120))) == 83  # 108 - 25 online
    assert c.capacity == 120


def test_online_traffic_takes_slots_back_at_once_and_returns_them_slowly() -> None:
    c = PoliteController(max_limit=1000, start=2)
    for t in range(6):
        c.observe(tick(t, c.window, load=server(0, c.window)))
    assert c.window == 180
    # 60 online requests arrive: the server runs 200 and 40 wait. The window drops to the
    # room left (180 - 60) in one tick; the batch's requests drain as they finish.
    assert c.observe(tick(6, 180, load=server(40, 200))) == 120
    assert c.observe(tick(7, 120, load=server(0, 180))) == 120
    # Online traffic falls to 20: the recent mean (30.6, then lower) still counts, so
    # the batch takes the freed slots back over several ticks, not at once.
    windows = [c.observe(tick(t, c.window, load=server(0, 20 + c.window))) for t in range(8, 16)]
    assert windows[0] == 153 and windows == sorted(windows) and windows[-1] == 159


def test_a_full_kv_cache_leaves_no_room() -> None:
    c = PoliteController(max_limit=100, start=10)
    # 10 running fill 95 % of the cache: room for 9.5 requests at 90 %.
    assert c.observe(tick(0, 10, load=load(0, 10, cache=0.95))) == 9
    assert c.observe(tick(1, 9, load=load(0, 9, cache=0.5))) == 16


def test_never_below_one() -> None:
    c = PoliteController(max_limit=100, start=2)
    for t in range(10):
        assert c.observe(tick(t, 0, load=load(50, 100))) == 1


def test_capacity_probe_after_a_quiet_while() -> None:
    c = PoliteController(max_limit=100, start=8, probe_seconds=30)
    c.observe(tick(0, 8, load=load(3, 10)))  # learnt: 10 slots, room 9
    for t in range(1, 40):
        c.observe(tick(t, c.window, load=load(0, c.window)))
    assert c.capacity == 11  # one slot more after 30 quiet seconds at the room
    assert c.window == 10


def test_own_overloads_are_a_full_server() -> None:
    c = PoliteController(max_limit=100, start=20)
    # A 429 while the server runs 5: it holds 5 (a gateway's limit, say); room 4.
    assert c.observe(tick(0, 20, load=load(0, 5), overloads=1)) == 4
    assert c.capacity == 5
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


def _left(remaining: int, seconds: float, servers: int = 1) -> DeadlineInfo:
    return DeadlineInfo(remaining=remaining, seconds_left=seconds, servers=servers)


def crowded(c: PoliteController, now: float, deadline: DeadlineInfo, reply: float = 2.0) -> int:
    """A tick on a server of 20 slots that 25 online requests keep full (5 wait), the
    batch's own waiting behind them: politeness alone gives 1."""
    b = c.window
    return c.observe(tick(now, b, load=load(5 + b, 20), latencies=(reply,) * 16, deadline=deadline))


def test_deadline_pressure_takes_the_window_littles_law_asks_for() -> None:
    c = PoliteController(max_limit=200, start=4)
    # 600 lines, 2 s a reply, 60 s usable (62 left, less one reply): 600 * 2 / 60 = 20 in
    # flight, with a tenth more for replies slowing down: 22.
    assert crowded(c, 0, _left(600, 62)) == 22
    assert c.pressure and c.floor == 22 and c.limit == 1
    # Worked out again every tick: half the lines left in the same time, half the window.
    assert crowded(c, 1, _left(300, 62)) == 11
    # Replies got slower: more in flight for the same rate.
    assert crowded(c, 2, _left(300, 62), reply=4.0) == 23  # 300 * 4 / 58 * 1.1


def test_deadline_pressure_ends_when_politeness_alone_finishes_in_time() -> None:
    c = PoliteController(max_limit=200, start=4)
    assert crowded(c, 0, _left(600, 62)) == 22
    assert crowded(c, 1, _left(10, 62)) == 1  # 10 * 2 / 60 * 1.1 = 0.37: one is enough
    assert not c.pressure and c.floor == 0


def test_deadline_pressure_never_exceeds_the_ceiling() -> None:
    c = PoliteController(max_limit=50, start=4)
    assert crowded(c, 0, _left(100_000, 62)) == 50
    past = PoliteController(max_limit=50, start=4)
    assert crowded(past, 0, _left(10, 1.0)) == 50  # less time left than one reply takes


def test_servers_share_the_deadlines_window() -> None:
    c = PoliteController(max_limit=200, start=4)
    assert crowded(c, 0, _left(600, 62, servers=3)) == 8  # 200 * 2 / 60 * 1.1 = 7.3


@pytest.mark.parametrize(
    ("info", "replies"),
    [
        (_left(1000, 100), ()),  # no reply yet: its time is unknown
        (_left(0, 100), (2.0,)),  # nothing left
        (_left(10, 100), (2.0,)),  # politeness alone is in time
        (None, (2.0,)),  # no deadline
    ],
)
def test_no_pressure_without_cause(info: DeadlineInfo | None, replies: tuple[float, ...]) -> None:
    c = PoliteController(max_limit=50, start=4)
    c.observe(tick(0, 4, load=load(5, 20), latencies=replies, deadline=info))
    assert not c.pressure and c.window == 1


def test_pressure_in_latency_mode_too() -> None:
    c = PoliteController(max_limit=200, start=4)
    c.observe(tick(0, 4, latencies=(1.0,) * 3))
    c.observe(tick(1, 6, latencies=(5.0,) * 16))  # queueing: the window is cut
    assert c.limit == 3
    assert c.observe(tick(2, 3, latencies=(5.0,) * 16, deadline=_left(600, 65))) == 55
    assert c.pressure and c.signal is Signal.LATENCY


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


def _two_shards(shares: int, ticks: int = 12) -> list[int]:
    """Two controllers on one server (KV cache for 200, 60 online requests): the sum of
    their windows after each tick, both reading the same load."""
    a = PoliteController(max_limit=1000, start=2, shares=shares)
    b = PoliteController(max_limit=1000, start=2, shares=shares)
    totals = []
    for t in range(ticks):
        total = 60 + a.window + b.window
        running = min(200, total)
        reading = server(total - running, running)
        wa, wb = a.window, b.window
        a.observe(tick(t, wa, load=reading))
        b.observe(tick(t, wb, load=reading))
        totals.append(a.window + b.window)
    return totals


def test_shards_share_the_free_room_instead_of_each_taking_it() -> None:
    shared = _two_shards(shares=2)
    # Together they fill the room (180 less 60 online) once and stay there.
    assert shared[-4:] == [120] * 4 and max(shared) <= 121
    # Each taking all of it, they overshoot (146 for a room of 120), then swing.
    alone = _two_shards(shares=1)
    assert max(alone) > 140 and len(set(alone[-4:])) > 1


def test_deadline_pressure_aims_a_tenth_of_the_whole_time_early() -> None:
    # 600 lines, 2 s replies, 62 s left of 200: a tenth of the whole (20 s) is kept in
    # reserve, so 42 s are usable: 600 * 2 / 42 * 1.1 = 31.4 -> 32.
    c = PoliteController(max_limit=200, start=4)
    info = DeadlineInfo(remaining=600, seconds_left=62, seconds_total=200)
    assert crowded(c, 0, info) == 32
    # Inside the reserve: all it may take.
    assert crowded(c, 1, DeadlineInfo(remaining=600, seconds_left=15, seconds_total=200)) == 200


def test_a_cut_under_pressure_halves_the_polite_window_not_the_floor() -> None:
    c = PoliteController(max_limit=200, start=4)
    c.observe(tick(0, 4, latencies=(1.0,) * 3))  # baseline 1 s
    pressed = _left(600, 65)
    assert c.observe(tick(1, 6, latencies=(5.0,) * 16, deadline=pressed)) > 40  # the floor
    assert c.limit == 3  # the cut halved politeness' window (6), not the floor's
    # Still overloaded, drained to the window: politeness goes on down; the floor holds.
    c.observe(tick(2, c.window, latencies=(5.0,) * 16, deadline=pressed))
    assert c.limit == 1 and c.pressure
    # Pressure gone: the window is politeness' own again at once, not a halved floor.
    assert c.observe(tick(3, c.window, latencies=(5.0,) * 16, deadline=_left(1, 65))) == 1
