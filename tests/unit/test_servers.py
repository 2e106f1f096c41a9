"""Server health: pure decisions of the pool, and the monitor's waiting and probing."""

import asyncio

import pytest

from openbatch_runner.retry import AttemptKind
from openbatch_runner.servers import (
    Health,
    HealthMonitor,
    OutageTimeout,
    Server,
    ServerPool,
    Verdict,
)

REFUSED = AttemptKind.CONNECTION


def test_round_robin_over_servers_that_are_up() -> None:
    pool = ServerPool.of(["a", "b", "c"])
    assert [pool.pick().base_url for _ in range(4)] == ["a", "b", "c", "a"]  # type: ignore[union-attr]
    pool.mark_down(pool.servers[1], 0.0, "refused")
    assert [pool.pick().base_url for _ in range(3)] == ["c", "a", "c"]  # type: ignore[union-attr]


def test_a_retry_goes_to_another_server_when_there_is_one() -> None:
    pool = ServerPool.of(["a", "b"])
    a, b = pool.servers
    for _ in range(5):
        assert pool.pick(avoid=a) is b
    pool.mark_down(b, 0.0, "refused")
    assert pool.pick(avoid=a) is a  # the only one up: better than waiting
    single = ServerPool.of(["a"])
    assert single.pick(avoid=single.servers[0]) is single.servers[0]


@pytest.mark.parametrize(
    ("results", "health", "last_verdict"),
    [
        # (line, kind) in order of arrival
        ([(1, REFUSED), (2, REFUSED)], Health.UP, Verdict.FAILED),
        ([(1, REFUSED), (2, REFUSED), (3, REFUSED)], Health.DOWN, Verdict.OUTAGE),
        (
            [(1, REFUSED), (2, AttemptKind.TIMEOUT), (3, AttemptKind.TIMEOUT)],
            Health.DOWN,
            Verdict.OUTAGE,
        ),
        # Any HTTP answer, even a 500, proves the server is there.
        (
            [(1, REFUSED), (2, REFUSED), (3, AttemptKind.HTTP_ERROR), (4, REFUSED)],
            Health.UP,
            Verdict.FAILED,
        ),
        ([(1, REFUSED), (2, REFUSED), (3, AttemptKind.INVALID_BODY)], Health.UP, Verdict.ANSWERED),
        # One line failing again and again is that line's problem, not an outage.
        ([(7, REFUSED)] * 10, Health.UP, Verdict.FAILED),
    ],
)
def test_ejection_after_no_answer_for_several_lines(
    results: list[tuple[int, AttemptKind]], health: Health, last_verdict: Verdict
) -> None:
    pool = ServerPool.of(["a", "b"])
    a = pool.servers[0]
    verdict = None
    for line, kind in results:
        verdict = pool.record(a, kind, "detail", 1.0, line=line, sent_at=0.5)
    assert (a.health, verdict) == (health, last_verdict)


def test_with_room_the_server_with_most_free_slots_is_picked() -> None:
    pool = ServerPool.of(["a", "b", "c"])
    a, b, c = pool.servers
    free = {"a": 1, "b": 3, "c": 3}

    def room(server: Server) -> int:
        return free[server.base_url]

    assert pool.pick(room=room) is b  # most room; ties in round-robin order
    assert pool.pick(room=room) is c
    assert pool.pick(avoid=b, room=room) is c  # a retry avoids b while another has room
    free.update(a=0, b=5, c=0)
    assert pool.pick(avoid=b, room=room) is b  # ... and takes it when none has
    pool.mark_down(b, 0.0, "refused")
    assert pool.pick(room=room) in (a, c)  # every window full: round robin, as without


def test_hung_requests_timing_out_together_do_not_eject_a_server_that_answers() -> None:
    """Regression (B10): timeouts expire in one sweep; the server answered others since."""
    pool = ServerPool.of(["a"])
    a = pool.servers[0]
    pool.record(a, AttemptKind.OK, "", 3.0, line=0, sent_at=2.9)  # answers keep coming ...
    for line in range(1, 6):  # ... while requests sent at 1.0 time out at 3.1
        verdict = pool.record(a, AttemptKind.TIMEOUT, "t", 3.1, line=line, sent_at=1.0)
        assert verdict is Verdict.FAILED
    assert pool.up == [a]
    for line in range(6, 9):  # requests sent after the last answer get none: down
        pool.record(a, AttemptKind.TIMEOUT, "t", 6.0, line=line, sent_at=4.0)
    assert pool.up == []


def test_a_late_answer_brings_a_server_back() -> None:
    pool = ServerPool.of(["a"])
    a = pool.servers[0]
    for line in range(3):
        pool.record(a, REFUSED, "refused", 5.0, line=line, sent_at=4.9)
    assert pool.all_down_since == 5.0 and pool.pick() is None
    assert pool.record(a, AttemptKind.OK, "", 6.0, line=9, sent_at=5.9) is Verdict.ANSWERED
    assert a.health is Health.UP and pool.all_down_since is None


def test_all_down_since_is_when_the_last_one_went_down() -> None:
    pool = ServerPool.of(["a", "b"])
    a, b = pool.servers
    pool.mark_down(a, 1.0, "x")
    assert pool.all_down_since is None
    pool.mark_down(b, 4.0, "x")
    assert pool.all_down_since == 4.0


class ScriptedProbe:
    """A probe whose answer the test sets; records the servers it was asked about."""

    def __init__(self) -> None:
        self.answer: str | None = "refused"
        self.asked: list[str] = []

    async def __call__(self, base_url: str) -> str | None:
        self.asked.append(base_url)
        return self.answer


async def test_pick_waits_for_a_probe_to_bring_a_server_back() -> None:
    probe = ScriptedProbe()
    messages: list[str] = []
    monitor = HealthMonitor(
        ServerPool.of(["a"]), probe, outage_timeout=30, say=messages.append, probe_interval=0.01
    )
    await monitor.check_all()
    assert "does not answer" in messages[0]
    waiter = asyncio.create_task(monitor.pick())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    probe.answer = None
    server = await asyncio.wait_for(waiter, 5)
    assert server is not None and server.health is Health.UP
    assert "answers again" in messages[-1]
    await monitor.close()


async def test_every_server_down_past_the_outage_timeout() -> None:
    monitor = HealthMonitor(
        ServerPool.of(["a", "b"]), ScriptedProbe(), outage_timeout=0.1, say=lambda _m: None
    )
    await monitor.check_all()
    with pytest.raises(OutageTimeout, match=r"no model server answered for 0\.1s"):
        await asyncio.wait_for(monitor.pick(), 5)
    await monitor.close()


async def test_close_releases_waiters() -> None:
    monitor = HealthMonitor(ServerPool.of(["a"]), ScriptedProbe(), outage_timeout=60, say=print)
    await monitor.check_all()
    waiter = asyncio.create_task(monitor.pick())
    await asyncio.sleep(0.01)
    await monitor.close()
    assert await asyncio.wait_for(waiter, 5) is None


async def test_a_last_failure_is_confirmed_by_a_probe_before_blaming_the_line() -> None:
    probe = ScriptedProbe()
    monitor = HealthMonitor(ServerPool.of(["a"]), probe, outage_timeout=60, say=lambda _m: None)
    a = monitor.pool.servers[0]
    probe.answer = None
    assert await monitor.confirm_down(a, "reset") is False  # it answers: the line's problem
    assert monitor.pool.up == [a]
    probe.answer = "refused"
    assert await monitor.confirm_down(a, "reset") is True  # it does not: an outage
    assert monitor.pool.up == []
    await monitor.close()
