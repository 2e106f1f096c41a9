"""B7b's ideal batch: an event simulation of the continuous simulator's model (pure)."""

import pytest

from bench.polite_ideal import Outcome, Server, best_within, frontier, simulate


def test_alone_on_an_idle_server_every_request_takes_its_service_time() -> None:
    # No slowdown, far more slots than requests: nobody waits or slows anybody.
    server = Server(slots=1000, service_time=0.5, slowdown=0.0, prefill_share=0.2)
    out = simulate(server, 5.0, headroom=None, seconds=100, warmup=1)
    assert out.p50 == pytest.approx(0.5) and out.p99 == pytest.approx(0.5)
    assert out.ttft_p99 == pytest.approx(0.1)
    assert out.batch_rate == 0


def test_the_ideal_batch_keeps_the_server_at_slots_minus_headroom() -> None:
    # Almost no online traffic: the batch alone holds 12 of 16 slots all the time, each
    # request slowed by 1 + k * 12 / 16, so it finishes 12 / (L * 1.375) per second.
    server = Server(slots=16, service_time=0.2, slowdown=0.5, prefill_share=0.1)
    out = simulate(server, 0.001, headroom=4, seconds=200, warmup=5)
    assert out.batch_rate == pytest.approx(12 / (0.2 * 1.375), rel=0.01)


def test_more_headroom_gives_the_batch_less_and_online_users_more() -> None:
    server = Server(slots=32, service_time=0.2, slowdown=0.5, prefill_share=0.1)
    rate = 32 / (0.2 * 1.5) / 2
    rows = [simulate(server, rate, headroom=h, seconds=60, warmup=5) for h in (0, 4, 8)]
    rates = [r.batch_rate for r in rows]
    assert rates == sorted(rates, reverse=True)
    assert rows[0].ttft_p99 > rows[2].ttft_p99  # no headroom: online requests queue
    same = simulate(server, rate, headroom=4, seconds=60, warmup=5)
    assert same == rows[1]  # seeded: the same figures every time


def test_best_within_picks_the_highest_rate_inside_both_limits() -> None:
    alone = Outcome(None, 1.0, 1.0, 1.0, 1.0, 0.0)
    rows = [
        Outcome(0, 1.0, 5.0, 1.0, 1.1, 50.0),  # TTFT too high
        Outcome(2, 1.0, 1.1, 1.0, 1.3, 45.0),  # latency too high
        Outcome(4, 1.0, 1.2, 1.0, 1.2, 40.0),  # both at the limit
        Outcome(8, 1.0, 1.0, 1.0, 1.0, 30.0),
    ]
    assert best_within(alone, rows, 0.2) == rows[2]
    assert best_within(alone, rows[:2], 0.2) is None


def test_frontier_covers_headroom_up_to_a_quarter_of_the_slots() -> None:
    server = Server(slots=8, service_time=0.1, slowdown=0.5, prefill_share=0.1)
    alone, rows = frontier(server, 20.0)
    assert alone.headroom is None
    assert [r.headroom for r in rows] == [0, 1, 2]
