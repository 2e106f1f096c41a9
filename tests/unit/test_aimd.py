import random

from openbatch_runner.aimd import AimdController


def test_slow_start_doubles_per_round_trip_until_congestion() -> None:
    c = AimdController(initial=4, max_limit=1000)
    now = 0.0
    for _ in range(3):  # three round trips of replies at steady latency
        for _ in range(c.window):
            now += 0.001
            c.on_success(0.1, now)
    assert c.window == 32
    now += 1.0
    for _ in range(32):  # a round of "no room" answers
        c.on_overload(now, latency=0.01)
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
    c = AimdController(initial=64, min_round=20)
    for _ in range(63):
        c.on_overload(1.0, latency=0.1)
    assert c.window == 64  # a round is judged once it is complete ...
    c.on_overload(1.0, latency=0.1)
    assert c.window == 32  # ... and one bad round cuts once
    for _ in range(200):  # replies to requests sent before the cut: the same congestion
        c.on_overload(1.05, latency=0.1)
    assert c.window == 32
    for _ in range(10):  # sent after the cut: far fewer errors at the smaller window
        c.on_overload(1.5, latency=0.01)
    for _ in range(22):
        c.on_success(0.01, 1.5)
    assert c.window == 32 and c.noise == 0.0  # congestion confirmed: the cut stays


def test_errors_that_do_not_fall_with_the_window_undo_the_cut() -> None:
    c = AimdController(initial=64, min_round=20)
    c.slow_start = False
    for i in range(64):  # 30 % errors at 64 ...
        c.on_overload(1.0, latency=0.01) if i % 10 < 3 else c.on_success(0.01, 1.0)
    assert c.window == 32
    for i in range(32):  # ... and 30 % at 32, sent after the cut: noise
        c.on_overload(2.0, latency=0.01) if i % 10 < 3 else c.on_success(0.01, 2.0)
    assert c.window == 64 and 0.25 <= c.noise <= 0.35


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


def _closed_loop(
    c: AimdController,
    *,
    slots: int,
    service: float,
    p_noise: float = 0.0,
    reject_over: int | None = None,
    rounds: int = 2000,
    seed: int = 1,
) -> list[int]:
    """A server with `slots` slots and service time `service`: a window of w sees latency
    service * max(1, w / slots) (queueing). Each reply is a 429 with probability `p_noise`
    whatever the load, and, with `reject_over`, every request beyond that many in flight is
    a 429 at once (real overload that a queue limit turns into errors, not latency)."""
    rng = random.Random(seed)
    now, windows = 0.0, []
    for _ in range(rounds):
        w = c.window
        latency = service * max(1.0, min(w, reject_over or w) / slots)
        outcomes = [
            rng.random() < p_noise or (reject_over is not None and i >= reject_over)
            for i in range(w)
        ]
        rng.shuffle(outcomes)
        for error in outcomes:
            if error:
                c.on_overload(now + 0.001, latency=0.001)
            else:
                c.on_success(latency, now + latency)
        now += latency
        windows.append(c.window)
    return windows


def test_random_errors_do_not_pin_the_window() -> None:
    """Regression (issue 7, item 9): with 30 % random 429s the window sat at 1."""
    slots = 16
    c = AimdController(initial=16, max_limit=1024)
    settled = sorted(_closed_loop(c, slots=slots, service=0.05, p_noise=0.3)[200:])
    median = settled[len(settled) // 2]
    assert median >= slots  # it fills the server ...
    assert settled[-1] <= 4 * slots  # ... and queueing latency still bounds it
    assert 0.15 <= c.noise <= 0.45  # and it learnt the level of the noise


def test_real_overload_answered_with_429s_still_backs_off() -> None:
    """Beyond 32 in flight the server rejects at once: no latency rise, only errors."""
    c = AimdController(initial=4, max_limit=4096)
    windows = _closed_loop(c, slots=1000, service=0.05, reject_over=32)
    settled = windows[200:]
    assert max(settled) <= 4 * 32 and sum(settled) / len(settled) <= 2.5 * 32
    assert min(settled) >= 8


def test_real_overload_on_top_of_random_errors_still_backs_off() -> None:
    c = AimdController(initial=4, max_limit=4096)
    windows = _closed_loop(c, slots=1000, service=0.05, p_noise=0.3, reject_over=32)
    settled = windows[200:]
    assert sum(settled) / len(settled) <= 3 * 32
    assert min(settled) >= 8


def test_errors_that_stop_lower_the_noise_estimate() -> None:
    c = AimdController(initial=16)
    _closed_loop(c, slots=16, service=0.05, p_noise=0.3, rounds=300)
    assert c.noise > 0.2
    _closed_loop(c, slots=16, service=0.05, p_noise=0.0, rounds=300, seed=2)
    assert c.noise < 0.05
