from openbatch_runner.aimd import AimdController


def test_window_grows_about_one_per_round_trip_at_steady_latency() -> None:
    c = AimdController(initial=4, max_limit=100)
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
    c.on_overload(1.01)  # replies to requests sent before the cut: same congestion
    assert c.window == 32
    c.on_overload(1.2)
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
