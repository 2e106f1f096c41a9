"""The simulator's continuous mode and the interactive load generator over real HTTP.

Timing checks are lower bounds the simulator guarantees by construction (a request cannot
finish before its work is done at the speed its occupancy allows); loaded machines only
make requests slower, so these cannot flake. Nothing asserts how fast anything ran.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from openbatch_sim.load import (
    BackgroundLoad,
    InteractiveLoad,
    arrival_offsets,
    has_content,
    summarize,
)
from openbatch_sim.server import QUEUE_HEADER
from tests.fixtures.model_sim import ModelSimFactory, SimHandle

USER = [{"role": "user", "content": "hello there world"}]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


async def chat(
    session: aiohttp.ClientSession, sim: SimHandle, service_time: float | None = None
) -> tuple[int, float, float]:
    """(status, client-side latency, the server's queue time)."""
    body: dict[str, object] = {"model": "m", "messages": USER, "max_tokens": 4}
    if service_time is not None:
        body["x_sim"] = {"service_time": service_time}
    sent = time.monotonic()
    async with session.post(sim.base_url + "/chat/completions", data=orjson.dumps(body)) as r:
        await r.read()
        return r.status, time.monotonic() - sent, float(r.headers[QUEUE_HEADER])


def samples(sim: SimHandle) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(sim.metrics()):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name"))
            out[s.name, labels] = s.value
    return out


def gauge(sim: SimHandle, name: str) -> float:
    return samples(sim)[name, ()]


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)


async def test_metrics_follow_the_queue_and_the_occupancy(
    model_sim_factory: ModelSimFactory, session: aiohttp.ClientSession
) -> None:
    sim = model_sim_factory(mode="continuous", slots=4, service_time=0.3, models="m")
    tasks = [asyncio.create_task(chat(session, sim)) for _ in range(6)]
    await eventually(lambda: gauge(sim, "vllm:num_requests_waiting") == 2)
    assert gauge(sim, "vllm:num_requests_running") == 4
    assert gauge(sim, "vllm:kv_cache_usage_perc") == 1.0
    replies = await asyncio.gather(*tasks)
    assert [status for status, _, _ in replies] == [200] * 6
    assert sim.stats()["by_model"] == {"m": 6}
    # Two waited for a slot, at least until the first batch's work was done.
    queued = sorted(q for _, _, q in replies)
    assert queued[-2] >= 0.3
    after = samples(sim)
    assert after["vllm:num_requests_running", ()] == 0
    assert after["vllm:num_requests_waiting", ()] == 0
    assert after["vllm:kv_cache_usage_perc", ()] == 0.0
    assert after["vllm:request_success_total", (("finished_reason", "length"),)] == 6
    assert after["vllm:generation_tokens_total", ()] == 6 * 4
    assert after["vllm:request_queue_time_seconds_count", ()] == 6
    assert after["vllm:e2e_request_latency_seconds_count", ()] == 6
    # At least the two queued requests waited longer than 0.1 s.
    slow = (
        after["vllm:request_queue_time_seconds_count", ()]
        - after["vllm:request_queue_time_seconds_bucket", (("le", "0.1"),)]
    )
    assert slow >= 2


async def test_latency_grows_with_occupancy(
    model_sim_factory: ModelSimFactory, session: aiohttp.ClientSession
) -> None:
    work, slots, k = 0.05, 4, 9.0
    sim = model_sim_factory(mode="continuous", slots=slots, occupancy_slowdown=k)
    status, alone, _ = await chat(session, sim, service_time=work)
    assert status == 200
    assert alone >= work * (1 + k * 1 / slots)  # its own slot slows it: 3.25x
    # Three long requests fill the rest of the batch and stay for the whole measurement.
    long = [asyncio.create_task(chat(session, sim, service_time=30.0)) for _ in range(3)]
    await eventually(lambda: gauge(sim, "vllm:num_requests_running") == 3)
    assert sim.stats()["in_batch"] == 3
    status, full, _ = await chat(session, sim, service_time=work)
    assert status == 200
    assert full >= work * (1 + k)  # every slot busy: 10x the idle service time
    for task in long:
        task.cancel()
    await asyncio.gather(*long, return_exceptions=True)
    # Clients that went away leave the batch (a server aborts their requests).
    await eventually(lambda: gauge(sim, "vllm:num_requests_running") == 0)
    assert sim.stats()["in_batch"] == 0


async def test_fixed_mode_ignores_occupancy(
    model_sim_factory: ModelSimFactory, session: aiohttp.ClientSession
) -> None:
    sim = model_sim_factory(slots=2, occupancy_slowdown=9.0, service_time=0.05)
    assert sim.config()["mode"] == "fixed"
    replies = await asyncio.gather(*(chat(session, sim) for _ in range(4)))
    assert [status for status, _, _ in replies] == [200] * 4
    assert samples(sim)["vllm:request_success_total", (("finished_reason", "length"),)] == 4


def test_mode_is_validated(model_sim_factory: ModelSimFactory) -> None:
    sim = model_sim_factory(mode="continuous")
    assert sim.config()["mode"] == "continuous"
    with pytest.raises(RuntimeError, match="mode must be one of"):
        sim.configure(mode="batchy")
    assert sim.configure(mode="fixed", occupancy_slowdown=1.0)["occupancy_slowdown"] == 1.0


async def test_load_is_open_loop_and_records_every_request(
    model_sim_factory: ModelSimFactory,
) -> None:
    # One slot held 0.2 s per request: answers come at most 5 per second, arrivals at 10.
    sim = model_sim_factory(mode="continuous", slots=1, service_time=0.2, occupancy_slowdown=0)
    rate, duration, seed = 10.0, 1.0, 11
    load = InteractiveLoad(sim.base_url, rate, seed=seed, max_tokens=3)
    await load.run(duration=duration)
    scheduled = arrival_offsets(rate, random.Random(seed))
    expected = sum(1 for _ in itertools.takewhile(lambda t: t < duration, scheduled))
    # Every scheduled arrival was sent although earlier answers were still outstanding.
    assert len(load.samples) == expected > 3
    summary = summarize(load.samples, 0.0, duration)
    assert summary.ok == summary.sent == expected
    assert summary.failed == 0
    # One slot: the last to arrive (within the second) waited for everyone else's service.
    assert summary.queue_p99 >= 0.2 * (expected - 1) - duration
    assert sim.stats()["max_in_flight"] > 1


async def test_a_streamed_chat_answer_sends_its_first_token_after_the_prefill(
    model_sim_factory: ModelSimFactory, session: aiohttp.ClientSession
) -> None:
    work, share = 0.4, 0.25
    sim = model_sim_factory(
        mode="continuous", slots=2, service_time=work, occupancy_slowdown=0, prefill_share=share
    )
    body = {
        "model": "m",
        "messages": USER,
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.monotonic()
    events: list[tuple[float, bytes]] = []
    async with session.post(sim.base_url + "/chat/completions", data=orjson.dumps(body)) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        async for line in r.content:
            if line.strip():
                events.append((time.monotonic() - sent, line.strip()))
    first_at, first = events[0]
    # The first token cannot come before the prefill's work is done; the end not before
    # all of it, and the two are apart by at least the rest of the work.
    assert first_at >= work * share
    assert has_content(first)
    assert events[-1][1] == b"data: [DONE]"
    assert events[-2][0] - first_at >= work * (1 - share) * 0.99
    chunks = [orjson.loads(line[len(b"data: ") :]) for _, line in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert len(text.split()) == 4  # max_tokens words, as the unstreamed answer has
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert sim.stats()["by_status"] == {"200": 1}
    assert samples(sim)["vllm:request_success_total", (("finished_reason", "length"),)] == 1


async def test_the_load_measures_time_to_first_token_when_streaming(
    model_sim_factory: ModelSimFactory,
) -> None:
    sim = model_sim_factory(
        mode="continuous", slots=8, service_time=0.2, occupancy_slowdown=0, prefill_share=0.1
    )
    streamed = InteractiveLoad(sim.base_url, 20.0, seed=3)
    plain = InteractiveLoad(sim.base_url, 20.0, seed=3, stream=False)
    await streamed.run(duration=0.5)
    await plain.run(duration=0.5)
    assert streamed.samples and plain.samples
    for s in streamed.samples:
        assert s.status == 200 and s.ttft is not None
        assert s.ttft >= 0.02 and s.latency - s.ttft >= 0.18 * 0.99
    assert all(s.ttft is None and s.latency >= 0.2 for s in plain.samples)
    summary = summarize(streamed.samples)
    assert 0.02 <= summary.ttft_p50 <= summary.ttft_p99 < summary.p99
    assert math.isnan(summarize(plain.samples).ttft_p99)


def test_background_load_beside_synchronous_code(model_sim_factory: ModelSimFactory) -> None:
    sim = model_sim_factory(mode="continuous", slots=4, service_time=0.01)
    background = BackgroundLoad(InteractiveLoad(sim.base_url, 50.0, seed=2)).start()
    deadline = time.monotonic() + 10
    while sim.stats()["by_status"].get("200", 0) < 10:
        assert time.monotonic() < deadline, "no interactive answers"
        time.sleep(0.02)
    got = background.stop()
    assert len(got) >= 10
    assert all(s.status == 200 and s.queue_time is not None for s in got)
    assert background.now() >= max(s.sent_at for s in got)


def test_load_to_a_dead_server_records_connection_errors() -> None:
    load = InteractiveLoad("http://127.0.0.1:9/v1", 50.0, seed=1, timeout=2.0)
    asyncio.run(load.run(duration=0.2))
    assert load.samples
    assert {s.status for s in load.samples} == {0}
    assert summarize(load.samples).ok == 0
