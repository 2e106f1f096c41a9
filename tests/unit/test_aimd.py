from openbatch_runner.aimd import AimdController


def test_slow_start_doubles_per_round_trip_until_congestion() -> None:
    c = AimdController(initial=4, max_limit=1000)
    now = 0.0
    for _ in range(3):  # three round trips of replies at steady latency
        for _ in range(c.window):
            now += 0.001
            c.on_success(0.1, now)
    assert c.window == 32
    c.on_overload(now + 1.0)
    assert not c.slow_start and c.window == 16


def test_window_grows_about_one_per_round_trip_at_steady_latency() -> None:
    c = AimdController(initial=4, max_limit=100)
    c.slow_start = False  # congestion avoidance, as after the first cut
    now = 0.0
    for _ in range(4):  # one window's worth of replies
        now += 0.01
        c.on_success(0.1, now)
    assert c.window in {4, 5}
    for _ in range(200):
        now += 0.01
        c.on_success(0.1, now)
    assert c.window > 15


def test_overload_halves_once_per_round_trip() -> None:
    c = AimdController(initial=64)
    c.on_success(0.1, 0.0)
    c.on_overload(1.0)
    assert c.window == 32
    c.on_overload(1.01, latency=0.1)  # sent before the cut: the same congestion
    assert c.window == 32
    c.on_overload(1.2, latency=0.1)  # sent after the cut: congestion again
    assert c.window == 16


def test_queueing_latency_shrinks_the_window() -> None:
    c = AimdController(initial=32)
    c.on_success(0.1, 0.0)
    c.on_success(0.5, 1.0)  # 5x the baseline: requests queue inside the server
    assert c.window == 16


def test_bounds_hold() -> None:
    c = AimdController(initial=2, min_limit=2, max_limit=3)
    now = 0.0
    for _ in range(100):
        now += 1
        c.on_overload(now)
    assert c.window == 2
    for _ in range(1000):
        now += 1
        c.on_success(0.1, now)
    assert c.window == 3


def test_initial_is_clamped() -> None:
    assert AimdController(initial=5000, max_limit=100).window == 100
    assert AimdController(initial=0).window == 1


def test_closed_loop_settles_near_the_server_capacity() -> None:
    """Regression (B2): a drifting baseline once let the window grow to 14x the slots.

    A server with `slots` slots and service time `service`: a window of w requests sees
    latency service * max(1, w / slots). Over a long run the window must stay near the
    slots: enough to keep them busy, not so many that a queue builds without bound.
    """
    slots, service = 32, 0.05
    c = AimdController(initial=4, max_limit=4096)
    now, peak, windows = 0.0, 0, []
    for _ in range(3000):  # round trips (~10 minutes of simulated time)
        w = c.window
        latency = service * max(1.0, w / slots)
        for _ in range(w):
            c.on_success(latency, now)
        now += latency
        peak = max(peak, c.window)
        windows.append(c.window)
    settled = windows[100:]
    assert min(settled) >= slots // 2  # the server is kept busy ...
    assert max(settled) <= 3 * slots  # ... and the queue stays bounded
    assert peak <= 5 * slots  # slow start overshoots by at most about one round trip
    assert windows.index(max(windows[:20])) < 20  # and gets there in a few round trips


def test_baseline_follows_a_server_that_became_slower_for_good() -> None:
    c = AimdController(initial=8, epoch_seconds=10)
    c.on_success(0.05, 0.0)
    now = 0.0
    for _ in range(300):  # 30 s of replies at the new, slower service time
        now += 0.1
        c.on_success(0.2, now)
    assert c.baseline == 0.2
