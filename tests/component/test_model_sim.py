"""The model-server simulator seen by real HTTP clients: bodies, validation, capacity,
faults, `x_sim` directives, runtime config, metrics and the CLI/fixture lifecycle.

Assertions are on counts and states reached (polled with a deadline), never on timings.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import re
import signal
import struct
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from openbatch_sim.server import SimConfig
from tests.fixtures.model_sim import ModelSimFactory, SimHandle, start_model_sim

CHAT = "/chat/completions"
COMPLETIONS = "/completions"
EMBEDDINGS = "/embeddings"
RESPONSES = "/responses"
USER = [{"role": "user", "content": "hello there world"}]
DEFAULTS = SimConfig().to_json()


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SimHandle]:
    # One process for most tests keeps the file fast; `sim` restores it before each test.
    handle = start_model_sim()
    yield handle
    # Drops, hangs and cancelled handlers must not log tracebacks.
    assert handle.stderr_text() == ""
    assert handle.stop() == 0


@pytest.fixture
def sim(shared_sim: SimHandle) -> SimHandle:
    shared_sim.configure(**DEFAULTS)
    shared_sim.reset()
    return shared_sim


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class Reply:
    def __init__(self, status: int, headers: CIMultiDict[str], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw)


async def post(
    session: aiohttp.ClientSession,
    sim: SimHandle,
    path: str,
    body: Any,
    *,
    timeout: float | None = None,
) -> Reply:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(
        sim.base_url + path,
        data=data,
        headers={"Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as response:
        return Reply(response.status, CIMultiDict(response.headers), await response.read())


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER, **extra}


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `check` until true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)


def gauges(sim: SimHandle) -> dict[str, float]:
    found = re.findall(
        r'^(vllm:num_requests_\w+)\{model_name="[^"]*"\} ([0-9.]+)$', sim.metrics(), re.M
    )
    return {name: float(value) for name, value in found}


# ---- bodies and usage ----------------------------------------------------------------


async def test_chat_completion_body_and_usage(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    messages = [{"role": "system", "content": "Be terse please."}, *USER]
    reply = await post(session, sim, CHAT, {"model": "my-model", "messages": messages})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "my-model"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    # 3 + 3 words, plus 3 per message.
    assert body["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 16,
        "total_tokens": 28,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert len(choice["message"]["content"].split()) == 16
    assert choice["message"]["content"].startswith("hello there world")


async def test_chat_output_is_deterministic_and_ids_unique(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    a = await post(session, sim, CHAT, chat())
    b = await post(session, sim, CHAT, chat())
    assert a.json["choices"] == b.json["choices"]
    assert a.json["usage"] == b.json["usage"]
    assert a.json["id"] != b.json["id"]
    assert a.headers["x-request-id"] != b.headers["x-request-id"]


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
async def test_chat_token_limit_caps_completion(
    sim: SimHandle, session: aiohttp.ClientSession, limit: str
) -> None:
    body = (await post(session, sim, CHAT, chat(**{limit: 4}))).json
    assert body["usage"]["completion_tokens"] == 4
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"].split()) == 4
    roomy = (await post(session, sim, CHAT, chat(**{limit: 1000}))).json
    assert roomy["usage"]["completion_tokens"] == 16
    assert roomy["choices"][0]["finish_reason"] == "stop"


async def test_chat_n_choices_multiply_completion_tokens(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    body = (await post(session, sim, CHAT, chat(n=3))).json
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 48


async def test_configured_completion_tokens(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    sim.configure(completion_tokens=5)
    body = (await post(session, sim, CHAT, chat())).json
    assert body["usage"]["completion_tokens"] == 5


async def test_completion_body_and_usage(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    reply = await post(session, sim, COMPLETIONS, {"model": "m", "prompt": "one two three"})
    assert reply.status == 200
    body = reply.json
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["model"] == "m"
    [choice] = body["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}


async def test_completion_prompt_list_gives_a_choice_each(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    body = (
        await post(
            session, sim, COMPLETIONS, {"model": "m", "prompt": ["a b", "c"], "max_tokens": 2}
        )
    ).json
    assert [c["text"] for c in body["choices"]] == ["a b", "c c"]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


async def test_embeddings_body_and_usage(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    single = (await post(session, sim, EMBEDDINGS, {"model": "e", "input": "x y z"})).json
    assert single["object"] == "list"
    assert single["model"] == "e"
    [item] = single["data"]
    assert item["object"] == "embedding"
    assert item["index"] == 0
    assert len(item["embedding"]) == 8
    assert all(isinstance(v, float) for v in item["embedding"])
    assert single["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

    many = (await post(session, sim, EMBEDDINGS, {"model": "e", "input": ["x y z", "w"]})).json
    assert [d["index"] for d in many["data"]] == [0, 1]
    assert many["data"][0]["embedding"] == item["embedding"]
    assert many["data"][1]["embedding"] != item["embedding"]
    assert many["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


async def test_embeddings_base64_encoding(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    floats = (await post(session, sim, EMBEDDINGS, {"model": "e", "input": "q"})).json
    encoded = (
        await post(
            session, sim, EMBEDDINGS, {"model": "e", "input": "q", "encoding_format": "base64"}
        )
    ).json
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack("<8f", raw)
    assert decoded == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)


async def test_responses_body_and_usage(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    request = {
        "model": "r",
        "instructions": "answer briefly",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "why is sky"}]}],
    }
    body = (await post(session, sim, RESPONSES, request)).json
    assert body["id"].startswith("resp_")
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert body["model"] == "r"
    [message] = body["output"]
    assert message["type"] == "message"
    assert message["id"].startswith("msg_")
    assert message["role"] == "assistant"
    assert message["status"] == "completed"
    [part] = message["content"]
    assert part["type"] == "output_text"
    assert part["annotations"] == []
    assert len(part["text"].split()) == 16
    # 2 instruction words + 3 input words + 3 for the message.
    assert body["usage"] == {
        "input_tokens": 8,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 16,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 24,
    }
    plain = (await post(session, sim, RESPONSES, {"model": "r", "input": "hi"})).json
    assert plain["usage"]["input_tokens"] == 4


# ---- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, b"not json", None),
        (CHAT, b"[1, 2]", None),
        (EMBEDDINGS, b'"text"', None),
        (CHAT, {"messages": USER}, "model"),
        (CHAT, {"model": 3, "messages": USER}, "model"),
        (CHAT, {"model": "m"}, "messages"),
        (CHAT, {"model": "m", "messages": []}, "messages"),
        (COMPLETIONS, {"model": "m"}, "prompt"),
        (EMBEDDINGS, {"model": "m"}, "input"),
        (RESPONSES, {"model": "m"}, "input"),
        (RESPONSES, {"model": "m", "input": 5}, "input"),
        (COMPLETIONS, {"model": "m", "prompt": "p", "stream": True}, "stream"),
        (CHAT, {"model": "m", "messages": USER, "x_sim": {"fault": "boom"}}, "x_sim"),
        (CHAT, {"model": "m", "messages": USER, "x_sim": {"times": -1}}, "x_sim"),
    ],
)
async def test_invalid_requests_get_openai_400s(
    sim: SimHandle, session: aiohttp.ClientSession, path: str, body: Any, param: str | None
) -> None:
    reply = await post(session, sim, path, body)
    assert reply.status == 400
    assert "x-request-id" in reply.headers
    error = reply.json["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert sim.stats()["by_status"] == {"400": 1}


async def test_missing_field_uses_missing_parameter_code(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    error = (await post(session, sim, CHAT, {"model": "m"})).json["error"]
    assert error == {
        "message": "Messages parameter is required.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "missing_required_parameter",
    }


async def test_served_models_reject_unknown_model(
    model_sim_factory: ModelSimFactory, session: aiohttp.ClientSession
) -> None:
    sim = model_sim_factory(models=["alpha", "beta"])
    reply = await post(session, sim, CHAT, {"model": "gamma", "messages": USER})
    assert reply.status == 404
    assert reply.json["error"]["code"] == "model_not_found"
    assert reply.json["error"]["param"] == "model"
    assert (await post(session, sim, CHAT, {"model": "beta", "messages": USER})).status == 200
    async with session.get(sim.base_url + "/models") as response:
        listing = await response.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["alpha", "beta"]
    assert all(m["object"] == "model" for m in listing["data"])


async def test_any_model_is_served_by_default(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    for model in ("a", "b/c", "whatever-7b"):
        assert (await post(session, sim, CHAT, {"model": model, "messages": USER})).status == 200


# ---- capacity -------------------------------------------------------------------------


async def test_slots_bound_concurrency_and_queue_the_rest(
    model_sim_factory: ModelSimFactory, session: aiohttp.ClientSession
) -> None:
    sim = model_sim_factory(slots=2, service_time=0.2)
    replies = await asyncio.gather(*(post(session, sim, CHAT, chat()) for _ in range(8)))
    assert [r.status for r in replies] == [200] * 8
    stats = sim.stats()
    assert stats["max_concurrent_in_service"] == 2
    assert stats["max_in_flight"] == 8
    assert stats["in_flight"] == 0
    assert stats["by_status"] == {"200": 8}
    assert stats["by_path"] == {"/v1/chat/completions": 8}


async def test_metrics_report_running_and_waiting(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    sim.configure(slots=1)
    text = sim.metrics()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert f"# TYPE {name} gauge" in text
    assert gauges(sim) == {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}

    holder = asyncio.create_task(post(session, sim, CHAT, chat(x_sim={"service_time": 0.5})))
    await eventually(lambda: gauges(sim)["vllm:num_requests_running"] == 1.0)
    queued = [asyncio.create_task(post(session, sim, CHAT, chat())) for _ in range(2)]
    await eventually(lambda: gauges(sim)["vllm:num_requests_waiting"] == 2.0)
    assert gauges(sim)["vllm:num_requests_running"] == 1.0
    assert [r.status for r in await asyncio.gather(holder, *queued)] == [200] * 3
    assert gauges(sim) == {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}


async def test_slots_can_grow_at_runtime(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    sim.configure(slots=1, service_time=0.5)
    tasks = [asyncio.create_task(post(session, sim, CHAT, chat())) for _ in range(3)]
    await eventually(lambda: sim.stats()["waiting"] == 2)
    sim.configure(slots=3)
    # Growing the pool admits the queued requests at once.
    await eventually(lambda: sim.stats()["in_service"] == 3)
    assert [r.status for r in await asyncio.gather(*tasks)] == [200] * 3
    assert sim.stats()["max_concurrent_in_service"] == 3


# ---- random faults --------------------------------------------------------------------


async def test_p_429_sets_retry_after(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    sim.configure(p_429=1.0, retry_after=0.05)
    reply = await post(session, sim, CHAT, chat())
    assert reply.status == 429
    assert reply.headers["Retry-After"] == "0.05"
    assert reply.json["error"]["code"] == "rate_limit_exceeded"
    sim.configure(retry_after=2)
    assert (await post(session, sim, CHAT, chat())).headers["Retry-After"] == "2"


@pytest.mark.parametrize(("field", "status"), [("p_500", 500), ("p_503", 503)])
async def test_p_5xx(
    sim: SimHandle, session: aiohttp.ClientSession, field: str, status: int
) -> None:
    sim.configure(**{field: 1.0})
    reply = await post(session, sim, EMBEDDINGS, {"model": "m", "input": "x"})
    assert reply.status == status
    assert reply.json["error"]["type"] == "server_error"
    assert sim.stats()["by_status"] == {str(status): 1}


async def test_p_drop_closes_the_connection(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    sim.configure(p_drop=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, sim, CHAT, chat())
    stats = sim.stats()
    assert stats["dropped"] == 1
    assert stats["by_status"] == {}


def test_drop_seen_by_urllib(sim: SimHandle) -> None:
    sim.configure(p_drop=1.0)
    request = urllib.request.Request(  # noqa: S310 - loopback simulator
        sim.base_url + CHAT, data=orjson.dumps(chat()), method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        opener.open(request, timeout=10)
    assert sim.stats()["dropped"] == 1


async def test_p_invalid_json_is_a_200_that_does_not_parse(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    sim.configure(p_invalid_json=1.0)
    reply = await post(session, sim, CHAT, chat())
    assert reply.status == 200
    assert reply.raw.startswith(b"{")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(reply.raw)
    assert sim.stats()["invalid_json"] == 1


async def test_p_hang_outlasts_a_client_timeout(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    sim.configure(p_hang=1.0, hang_seconds=30)
    with pytest.raises(asyncio.TimeoutError):
        await post(session, sim, CHAT, chat(), timeout=0.3)
    assert sim.stats()["hung"] == 1
    # The client's disconnect cancels the hung handler, as a model server aborts it.
    await eventually(lambda: sim.stats()["in_flight"] == 0)
    assert sim.stats()["cancelled"] == 1


async def test_hang_answers_after_hang_seconds(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    sim.configure(p_hang=1.0, hang_seconds=0.1)
    reply = await post(session, sim, CHAT, chat())
    assert reply.status == 200
    assert sim.stats()["hung"] == 1


async def test_seeded_faults_repeat(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    async def statuses() -> list[int]:
        return [(await post(session, sim, CHAT, chat())).status for _ in range(40)]

    sim.configure(p_500=0.3, p_429=0.3, seed=7)
    first = await statuses()
    assert {200, 429, 500} == set(first)
    sim.configure(seed=7)
    assert await statuses() == first
    sim.configure(seed=8)
    assert await statuses() != first


# ---- x_sim directives -----------------------------------------------------------------


async def test_x_sim_fault_for_first_n_attempts_of_a_key(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    body = chat(x_sim={"fault": "503", "times": 2, "key": "line-1"})
    statuses = [(await post(session, sim, CHAT, body)).status for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    # A different key has its own count.
    other = chat(x_sim={"fault": "503", "times": 1, "key": "line-2"})
    assert [(await post(session, sim, CHAT, other)).status for _ in range(2)] == [503, 200]
    assert sim.stats()["keys"] == {"line-1": 4, "line-2": 2}


async def test_x_sim_without_key_or_times_always_applies(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    for x_sim in ({"fault": "500"}, {"fault": "500", "times": 1}, {"fault": "500", "key": "k"}):
        statuses = [(await post(session, sim, CHAT, chat(x_sim=x_sim))).status for _ in range(3)]
        assert statuses == [500] * 3


async def test_x_sim_reset_restarts_key_counts(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    body = chat(x_sim={"fault": "400", "times": 1, "key": "k"})
    assert (await post(session, sim, CHAT, body)).status == 400
    assert (await post(session, sim, CHAT, body)).status == 200
    sim.reset()
    assert sim.stats()["keys"] == {}
    assert (await post(session, sim, CHAT, body)).status == 400


async def test_x_sim_429_with_retry_after(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    body = chat(x_sim={"fault": "429", "times": 1, "key": "r", "retry_after": 0.25})
    first = await post(session, sim, CHAT, body)
    assert first.status == 429
    assert first.headers["Retry-After"] == "0.25"
    assert (await post(session, sim, CHAT, body)).status == 200


async def test_x_sim_drop_then_success(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    body = chat(x_sim={"fault": "drop", "times": 1, "key": "d"})
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, sim, CHAT, body)
    assert (await post(session, sim, CHAT, body)).status == 200
    assert sim.stats()["dropped"] == 1


async def test_x_sim_invalid_json_then_success(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    body = chat(x_sim={"fault": "invalid_json", "times": 1, "key": "j"})
    broken = await post(session, sim, CHAT, body)
    assert broken.status == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(broken.raw)
    assert (await post(session, sim, CHAT, body)).json["object"] == "chat.completion"


async def test_x_sim_hang_times_out_then_succeeds(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    body = chat(x_sim={"fault": "hang", "times": 1, "key": "h"})
    with pytest.raises(asyncio.TimeoutError):
        await post(session, sim, CHAT, body, timeout=0.3)
    assert (await post(session, sim, CHAT, body, timeout=10)).status == 200
    assert sim.stats()["hung"] == 1


async def test_x_sim_service_time_holds_a_slot(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    task = asyncio.create_task(post(session, sim, CHAT, chat(x_sim={"service_time": 0.4})))
    await eventually(lambda: sim.stats()["in_service"] == 1)
    assert (await task).status == 200
    assert sim.stats()["in_service"] == 0


# ---- control API ----------------------------------------------------------------------


def test_config_updates_and_validation(sim: SimHandle) -> None:
    config = sim.configure(p_429=0.1, models="a, b")
    assert config == {**DEFAULTS, "p_429": 0.1, "models": ["a", "b"]}
    assert sim.config() == config
    for bad in ({"p_429": 1.5}, {"slots": 0}, {"nope": 1}, {"slots": "2"}, {"seed": 1.5}):
        with pytest.raises(RuntimeError, match="400"):
            sim.configure(**bad)
    assert sim.config() == config


async def test_stats_count_paths_and_statuses(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    await post(session, sim, CHAT, chat())
    await post(session, sim, COMPLETIONS, {"model": "m", "prompt": "p"})
    await post(session, sim, COMPLETIONS, {"model": "m"})
    stats = sim.stats()
    assert stats["requests"] == 3
    assert stats["by_path"] == {"/v1/chat/completions": 1, "/v1/completions": 2}
    assert stats["by_status"] == {"200": 2, "400": 1}
    # Control and monitoring calls are not counted as API requests.
    sim.metrics()
    assert sim.stats()["requests"] == 3
    sim.reset()
    zeroed = sim.stats()
    assert zeroed["requests"] == 0
    assert zeroed["by_status"] == {}
    assert zeroed["max_concurrent_in_service"] == 0


async def test_health_and_default_models(sim: SimHandle, session: aiohttp.ClientSession) -> None:
    async with session.get(sim.root_url + "/health") as response:
        assert response.status == 200
    async with session.get(sim.base_url + "/models") as response:
        listing = await response.json()
    assert listing["object"] == "list"
    assert len(listing["data"]) == 1


async def test_benchmark_volume_without_service_time(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    async def worker() -> None:
        for _ in range(50):
            assert (await post(session, sim, CHAT, chat())).status == 200

    await asyncio.gather(*(worker() for _ in range(20)))
    stats = sim.stats()
    assert stats["by_status"] == {"200": 1000}
    assert stats["max_concurrent_in_service"] <= 8


# ---- process lifecycle ----------------------------------------------------------------


def test_model_sim_fixture_defaults(model_sim: SimHandle) -> None:
    assert model_sim.base_url == model_sim.root_url + "/v1"
    assert model_sim.root_url.startswith("http://127.0.0.1:")
    assert model_sim.config() == DEFAULTS


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_exits_cleanly_on_signals(model_sim_factory: ModelSimFactory, sig: int) -> None:
    handle = model_sim_factory(slots=3)
    assert handle.config()["slots"] == 3
    handle.process.send_signal(sig)
    assert handle.process.wait(10) == 0
    assert handle.stderr_text() == ""


def test_stop_returns_exit_code_even_with_hung_requests(
    model_sim_factory: ModelSimFactory,
) -> None:
    handle = model_sim_factory(p_hang=1.0, hang_seconds=60)

    async def hang_one() -> None:
        async with aiohttp.ClientSession() as s:
            task = asyncio.create_task(post(s, handle, CHAT, chat()))
            await eventually(lambda: handle.stats()["hung"] == 1)
            assert handle.stop() == 0
            with pytest.raises(aiohttp.ClientConnectionError):
                await task

    asyncio.run(hang_one())


def test_exits_when_stdin_closes(model_sim_factory: ModelSimFactory) -> None:
    handle = model_sim_factory()
    assert handle.process.stdin is not None
    handle.process.stdin.close()
    assert handle.process.wait(10) == 0


def test_bad_options_fail_fast() -> None:
    with pytest.raises(TypeError, match="unknown model_sim options"):
        start_model_sim(slot=2)
    with pytest.raises(RuntimeError, match="slots must be at least 1"):
        start_model_sim(slots=0)


async def test_authorization_headers_are_recorded(
    sim: SimHandle, session: aiohttp.ClientSession
) -> None:
    """The tenancy tests ask a simulator which keys reached it (docs/security.md)."""
    await post(session, sim, CHAT, chat())
    async with session.post(
        sim.base_url + CHAT, json=chat(), headers={"Authorization": "Bearer t0ken"}
    ) as response:
        assert response.status == 200
    assert sim.stats()["authorization"] == {"": 1, "Bearer t0ken": 1}
    sim.reset()
    assert sim.stats()["authorization"] == {}
