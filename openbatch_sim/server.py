"""An OpenAI-compatible model-server simulator for tests and benchmarks.

It serves `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and `/v1/responses`
with realistic bodies (including `usage`), models a server's capacity as a fixed number of
FIFO slots held for a configurable service time, and injects faults — 429/500/503, hangs,
dropped connections and truncated JSON — either at random (seeded) or deterministically per
request through an `x_sim` object in the request body:

    {"x_sim": {"fault": "429", "times": 2, "key": "line-7", "service_time": 0.1}}

applies the fault to the first `times` attempts carrying `key` (no `times`: every attempt;
no `key`: every request). Optional `retry_after` and `hang_seconds` override the configured
values for that request; `"echo": true` puts the request body's exact bytes (as text) in
the answer's `x_sim_request` field, so tests can see what a client really sent. The fault
`not_object` answers 200 with the JSON array `[1, 2]`. `max_waiting` (config) makes
overload real: a request arriving while that many already wait for a slot gets a 429.
`/sim/stats`, `/sim/reset`, `/sim/config`, `/metrics` (vLLM's metric names: queue and batch
gauges, KV-cache usage, success and token counters, latency histograms; see
`openbatch_sim.metrics`), `/v1/models` and `/health` make it observable and reconfigurable
at runtime. Every answer that took a slot carries `x-sim-queue-seconds`, the time it waited
for one.

Two service modes (`mode`): `fixed` (the default) holds a slot for exactly the service
time, whatever else runs; `continuous` behaves like a continuous-batching server, where
every running request slows down as the batch fills (`occupancy_slowdown`; the formula is
in `openbatch_sim.continuous`). Both share one FIFO queue in front of the slots.

Chat completions can stream (`"stream": true`, server-sent events as OpenAI sends them):
the first chunk (the role and the first word) leaves after `prefill_share` of the service
time, the rest at the end, so a client measures a time to first token; with
`stream_options.include_usage` a last chunk carries the usage. Other endpoints refuse
`stream` (400), and the `invalid_json` fault does not apply to a stream.

Run it as `openbatch sim` (or `python -m openbatch_sim --port 0`); it prints `READY http://HOST:PORT`
once it accepts connections. The hot path avoids logging, pydantic and sleeps so that a
benchmark can push 100,000 zero-service-time requests through it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import random
import signal
import socket
import struct
import sys
import time
from base64 import b64encode
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from aiohttp import web

from openbatch_sim.continuous import ContinuousBatch
from openbatch_sim.metrics import Load, ServerMetrics, render

FAULTS = frozenset({"429", "500", "503", "400", "hang", "drop", "invalid_json", "not_object"})
EMBEDDING_DIMENSIONS = 8
DEFAULT_MODEL_NAME = "sim"  # what /v1/models and /metrics show when any model is accepted
_JSON = "application/json"
QUEUE_HEADER = "x-sim-queue-seconds"


class SimMode(StrEnum):
    """How a request's service time relates to what else runs (module docstring)."""

    FIXED = "fixed"
    CONTINUOUS = "continuous"


@dataclass(slots=True)
class SimConfig:
    """Everything `/sim/config` and the CLI can change; probabilities are per request."""

    slots: int = 8
    service_time: float = 0.0
    service_jitter: float = 0.0  # fraction: service time varies uniformly by ±jitter
    p_429: float = 0.0
    retry_after: float = 1.0
    p_500: float = 0.0
    p_503: float = 0.0
    p_hang: float = 0.0
    hang_seconds: float = 30.0
    p_drop: float = 0.0
    p_invalid_json: float = 0.0
    completion_tokens: int = 16
    models: list[str] = field(default_factory=list)  # empty: any model is served
    seed: int = 0
    api_key: str = ""  # non-empty: requests need `Authorization: Bearer <api_key>` (else 401)
    max_waiting: int = -1  # >= 0: a 429 for a request arriving while this many wait for a slot
    mode: str = SimMode.FIXED.value
    # Continuous mode: with n of S slots busy, service runs 1 + k*n/S times slower.
    occupancy_slowdown: float = 0.5
    # A streamed chat answer's first token comes after this share of its service time.
    prefill_share: float = 0.1

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FLOAT_FIELDS = frozenset(
    {
        "service_time",
        "service_jitter",
        "p_429",
        "retry_after",
        "p_500",
        "p_503",
        "p_hang",
        "hang_seconds",
        "p_drop",
        "p_invalid_json",
        "occupancy_slowdown",
        "prefill_share",
    }
)
# Fields that are shares, 0..1: the fault probabilities and the prefill share.
_PROBABILITY_FIELDS = frozenset(f for f in _FLOAT_FIELDS if f.startswith("p_")) | {"prefill_share"}
_INT_FIELDS = frozenset({"slots", "completion_tokens", "seed", "max_waiting"})
# Random faults in the order their probabilities are stacked on one uniform draw.
_RANDOM_FAULTS = ("429", "500", "503", "hang", "drop", "invalid_json")


def parse_models(value: Any) -> list[str]:
    """Models from a comma-separated string or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    if isinstance(value, list) and all(isinstance(m, str) for m in value):
        return [m for m in value if m]
    raise ValueError("models must be a comma-separated string or a list of strings")


def validated_updates(config: SimConfig, updates: Mapping[str, Any]) -> dict[str, Any]:
    """Check and coerce a partial config; raises ValueError naming the first bad field."""
    known = {f.name for f in dataclasses.fields(config)}
    out: dict[str, Any] = {}
    for name, value in updates.items():
        if name not in known:
            raise ValueError(f"unknown config field {name!r}; known: {sorted(known)}")
        if name == "models":
            out[name] = parse_models(value)
            continue
        if name == "api_key":
            if not isinstance(value, str):
                raise ValueError("api_key must be a string")
            out[name] = value
            continue
        if name == "mode":
            if value not in tuple(SimMode):
                raise ValueError(f"mode must be one of {[m.value for m in SimMode]}")
            out[name] = str(value)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
        if name in _INT_FIELDS:
            if not isinstance(value, int):
                raise ValueError(f"{name} must be an integer")
            if name == "slots" and value < 1:
                raise ValueError("slots must be at least 1")
            if name == "completion_tokens" and value < 0:
                raise ValueError("completion_tokens must be >= 0")
            out[name] = value
            continue
        number = float(value)
        if number < 0 or (name in _PROBABILITY_FIELDS and number > 1):
            bound = "between 0 and 1" if name in _PROBABILITY_FIELDS else ">= 0"
            raise ValueError(f"{name} must be {bound}")
        out[name] = number
    return out


class SlotPool:
    """A FIFO counting semaphore whose capacity can change while requests wait.

    asyncio.Semaphore cannot be resized, and `/sim/config` may change `slots` at runtime.
    """

    __slots__ = ("_waiters", "capacity", "max_running", "running")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0
        self.max_running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> None:
        if self.running < self.capacity and not self._waiters:
            self._grant()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as the client went away: pass it on.
                self.release()
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.running -= 1
        self._wake()

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._wake()

    def _grant(self) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)

    def _wake(self) -> None:
        while self._waiters and self.running < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._grant()
                waiter.set_result(None)


class SimStats:
    """Counters behind `/sim/stats`; API requests only, so polling does not perturb them."""

    __slots__ = (
        "authorization",
        "busy_seconds",
        "by_model",
        "by_path",
        "by_status",
        "cancelled",
        "dropped",
        "hung",
        "in_flight",
        "invalid_json",
        "keys",
        "max_in_flight",
        "requests",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.by_model: dict[str, int] = {}  # valid requests, by the model they named
        self.by_status: dict[int, int] = {}
        self.dropped = 0
        self.hung = 0
        self.invalid_json = 0
        self.cancelled = 0  # handlers cancelled because the client disconnected
        self.in_flight = 0
        self.max_in_flight = 0
        self.keys: dict[str, int] = {}
        # Every Authorization header value received ("" when absent), with its count: the
        # tenancy tests check which key reached which server (docs/security.md).
        self.authorization: dict[str, int] = {}
        self.busy_seconds = 0.0

    def count_status(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1


class _DropConnectionError(Exception):
    """Raised inside the simulator to close the connection without answering."""


class ModelSim:
    """The simulator's state and request handlers; `app` is the aiohttp application."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        self.stats = SimStats()
        self.pool = SlotPool(self.config.slots)
        self.metrics = ServerMetrics()
        self._continuous: ContinuousBatch | None = None  # made in the loop, on first use
        self._fault_rng = random.Random(self.config.seed)
        # A separate stream so that enabling jitter does not shift the fault sequence.
        self._jitter_rng = random.Random(self.config.seed + 1)
        self._p_total = 0.0
        self._thresholds: tuple[tuple[float, str], ...] = ()
        self._models: frozenset[str] = frozenset()
        self._apply_config()
        # Random per process so that ids from restarted simulators do not collide.
        self._id_prefix = os.urandom(6).hex()
        self._counter = 0
        self._closing = asyncio.Event()
        self.app = self._make_app()

    # ---- configuration -------------------------------------------------------------

    def update_config(self, updates: Mapping[str, Any]) -> None:
        """Apply validated updates; a new `seed` restarts both random streams."""
        for name, value in validated_updates(self.config, updates).items():
            setattr(self.config, name, value)
        if "seed" in updates:
            self._fault_rng.seed(self.config.seed)
            self._jitter_rng.seed(self.config.seed + 1)
        self._apply_config()

    def close(self) -> None:
        """Release hung requests so that shutdown need not wait for them."""
        self._closing.set()

    def reset(self) -> None:
        """Zero the counters and per-key attempts; requests in flight stay counted."""
        in_flight = self.stats.in_flight
        self.stats = SimStats()
        self.stats.in_flight = in_flight
        self.stats.max_in_flight = in_flight
        self.pool.max_running = self.pool.running

    def _apply_config(self) -> None:
        cfg = self.config
        if self.pool.capacity != cfg.slots:
            self.pool.resize(cfg.slots)
        if self._continuous is not None:
            self._continuous.retune(cfg.slots, cfg.occupancy_slowdown)
        probabilities = (cfg.p_429, cfg.p_500, cfg.p_503, cfg.p_hang, cfg.p_drop)
        cumulative = 0.0
        thresholds: list[tuple[float, str]] = []
        for p, fault in zip((*probabilities, cfg.p_invalid_json), _RANDOM_FAULTS, strict=True):
            if p > 0:
                cumulative += p
                thresholds.append((cumulative, fault))
        self._p_total = cumulative
        self._thresholds = tuple(thresholds)
        self._models = frozenset(cfg.models)

    # ---- application ---------------------------------------------------------------

    def _make_app(self) -> web.Application:
        # Batch lines can carry long prompts or images; aiohttp's 1 MiB default is too small.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        builders: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completion,
            "/v1/embeddings": self._embeddings,
            "/v1/responses": self._response,
        }
        for path, build in builders.items():
            app.router.add_post(path, self._api_handler(path, build))
        app.router.add_get("/v1/models", self._models_handler)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/sim/stats", self._stats_handler)
        app.router.add_post("/sim/reset", self._reset_handler)
        app.router.add_post("/sim/config", self._config_handler)
        app.router.add_get("/sim/config", self._config_get)
        return app

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self._id_prefix}{self._counter:010x}"

    def _api_handler(
        self, path: str, build: Callable[[dict[str, Any], str], dict[str, Any]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            stats = self.stats
            stats.requests += 1
            stats.by_path[path] = stats.by_path.get(path, 0) + 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            request_id = f"req_{self._next_id()}"
            try:
                response = await self._serve(request, path, build, request_id)
            except _DropConnectionError:
                self.stats.dropped += 1
                if request.transport is not None:
                    request.transport.close()
                # Writing to the closed transport fails quietly inside aiohttp, so the
                # client sees the connection close with no status line at all.
                return web.Response(status=500)
            except asyncio.CancelledError:
                self.stats.cancelled += 1
                raise
            finally:
                # `reset()` may have swapped the stats object while this request ran.
                self.stats.in_flight -= 1
            self.stats.count_status(response.status)
            return response

        return handler

    async def _serve(  # noqa: PLR0911  # one early answer per fault or invalid request
        self,
        request: web.Request,
        path: str,
        build: Callable[[dict[str, Any], str], dict[str, Any]],
        request_id: str,
    ) -> web.StreamResponse:
        headers = {"x-request-id": request_id}
        auth = request.headers.get("Authorization", "")
        self.stats.authorization[auth] = self.stats.authorization.get(auth, 0) + 1
        key = self.config.api_key
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            return _error(401, "Incorrect API key provided.", headers, code="invalid_api_key")
        raw_body = await request.read()
        try:
            body = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _error(
                400,
                "We could not parse the JSON body of your request. The body must be a JSON object.",
                headers,
            )

        fault: str | None = None
        service_time: float | None = None
        retry_after = self.config.retry_after
        hang_seconds = self.config.hang_seconds
        x_sim = body.get("x_sim")
        if x_sim is not None:
            try:
                fault, service_time, override_retry, override_hang = self._directive(x_sim)
            except ValueError as exc:
                return _error(400, str(exc), headers, param="x_sim")
            if override_retry is not None:
                retry_after = override_retry
            if override_hang is not None:
                hang_seconds = override_hang

        invalid = self._validate(body, path)
        if invalid is not None:
            return _error(400, invalid[0], headers, param=invalid[1], code=invalid[2])
        model = body["model"]
        self.stats.by_model[model] = self.stats.by_model.get(model, 0) + 1
        if self._models and model not in self._models:
            return _error(
                404,
                f"The model `{model}` does not exist.",
                headers,
                param="model",
                code="model_not_found",
            )

        if fault is None and self._p_total > 0:
            u = self._fault_rng.random()
            if u < self._p_total:
                for threshold, name in self._thresholds:
                    if u < threshold:
                        fault = name
                        break

        if fault is not None:
            early = await self._early_fault(fault, headers, retry_after, hang_seconds)
            if early is not None:
                return early

        if fault == "not_object":
            return web.Response(body=b"[1, 2]", content_type=_JSON, headers=headers)
        max_waiting = self.config.max_waiting
        if 0 <= max_waiting <= self.pool.waiting and self.pool.running >= self.pool.capacity:
            return await self._early_fault("429", headers, retry_after, hang_seconds) or _error(
                429, "overloaded", headers
            )

        if service_time is None:
            service_time = self.config.service_time
        jitter = self.config.service_jitter
        if service_time > 0 and jitter > 0:
            service_time = max(0.0, service_time * (1 + jitter * self._jitter_rng.uniform(-1, 1)))

        pool = self.pool
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        await pool.acquire()
        held_from = loop.time()
        headers[QUEUE_HEADER] = f"{held_from - arrived:.6f}"
        try:
            answer = build(body, model)
            if body.get("stream") is True:
                stream = await self._stream(request, answer, body, service_time, headers)
                self._record(answer, loop.time() - arrived, held_from - arrived)
                return stream
            await self._spend(service_time)
            if isinstance(x_sim, dict) and x_sim.get("echo") is True:
                answer["x_sim_request"] = raw_body.decode("utf-8", errors="replace")
            payload = orjson.dumps(answer)
        finally:
            pool.release()
            # Slot-seconds actually spent: a loaded event loop oversleeps, and benchmarks
            # must tell that simulator overhead apart from the client's.
            self.stats.busy_seconds += loop.time() - held_from
        self._record(answer, loop.time() - arrived, held_from - arrived)
        if fault == "invalid_json":
            self.stats.invalid_json += 1
            # A response cut short mid-body: the status was 200, the JSON never closes.
            payload = payload[: max(1, len(payload) // 2)]
        return web.Response(body=payload, content_type=_JSON, headers=headers)

    async def _spend(self, seconds: float) -> None:
        """Serve `seconds` of work in the configured mode (the slot is already held)."""
        if seconds <= 0:
            return
        if self.config.mode == SimMode.CONTINUOUS:
            await self._continuous_batch().serve(seconds)
        else:
            await asyncio.sleep(seconds)

    async def _stream(
        self,
        request: web.Request,
        answer: dict[str, Any],
        body: dict[str, Any],
        service_time: float,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """A chat answer as OpenAI streams it: the first chunk after the prefill share of the
        service time, the rest when the service is done."""
        prefill = service_time * self.config.prefill_share
        await self._spend(prefill)
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        first, rest = _chunks(answer, body)
        await response.write(first)
        await self._spend(service_time - prefill)
        await response.write(rest)
        await response.write_eof()
        return response

    def _continuous_batch(self) -> ContinuousBatch:
        if self._continuous is None:
            self._continuous = ContinuousBatch(self.config.slots, self.config.occupancy_slowdown)
        return self._continuous

    def _record(self, answer: dict[str, Any], e2e: float, queued: float) -> None:
        """Count an answered request in `/metrics`, as the server sees it."""
        usage = answer.get("usage", {})
        prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
        generated = usage.get("completion_tokens", usage.get("output_tokens", 0))
        self.metrics.record(_finished_reason(answer), prompt, generated, e2e, queued)

    async def _early_fault(
        self, fault: str, headers: dict[str, str], retry_after: float, hang_seconds: float
    ) -> web.Response | None:
        """Faults that happen before a slot is taken; None lets the request proceed."""
        if fault == "429":
            headers["Retry-After"] = _format_seconds(retry_after)
            headers["retry-after-ms"] = str(round(retry_after * 1000))
            return _error(
                429,
                "Rate limit reached for requests. Please try again later.",
                headers,
                type_="requests",
                code="rate_limit_exceeded",
            )
        if fault == "500":
            return _error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                headers,
                type_="server_error",
            )
        if fault == "503":
            return _error(
                503,
                "The server is overloaded or not ready yet.",
                headers,
                type_="server_error",
                code="service_unavailable",
            )
        if fault == "400":
            return _error(400, "Injected invalid request.", headers, code="invalid_request")
        if fault == "drop":
            raise _DropConnectionError
        if fault == "hang":
            # Hanging outside the slots keeps a hung request from starving the others,
            # like a stalled proxy in front of a healthy server.
            self.stats.hung += 1
            try:
                await asyncio.wait_for(self._closing.wait(), hang_seconds)
            except TimeoutError:
                return None
            # Shutting down: a hung request ends as a dropped connection, not a late answer.
            raise _DropConnectionError
        return None

    def _directive(self, x_sim: Any) -> tuple[str | None, float | None, float | None, float | None]:
        """Read `x_sim`: (fault if it applies to this attempt, service time, retry-after,
        hang seconds). Counting happens here so every attempt with a key is counted once."""
        if not isinstance(x_sim, dict):
            raise ValueError("x_sim must be an object")
        fault = x_sim.get("fault")
        if fault is not None:
            fault = str(fault)
            if fault not in FAULTS:
                raise ValueError(f"x_sim.fault must be one of {sorted(FAULTS)}")
        service_time = _optional_seconds(x_sim, "service_time")
        retry_after = _optional_seconds(x_sim, "retry_after")
        hang_seconds = _optional_seconds(x_sim, "hang_seconds")
        times = x_sim.get("times")
        if times is not None and (
            isinstance(times, bool) or not isinstance(times, int) or times < 0
        ):
            raise ValueError("x_sim.times must be a non-negative integer")
        key = x_sim.get("key")
        if key is not None:
            if not isinstance(key, str):
                raise ValueError("x_sim.key must be a string")
            attempts = self.stats.keys.get(key, 0) + 1
            self.stats.keys[key] = attempts
            if times is not None and attempts > times:
                fault = None
        return fault, service_time, retry_after, hang_seconds

    @staticmethod
    def _validate(body: dict[str, Any], path: str) -> tuple[str, str | None, str | None] | None:
        """(message, param, code) of the first problem, like OpenAI's request validation."""
        model = body.get("model")
        if model is None:
            return "You must provide a model parameter.", "model", "missing_required_parameter"
        if not isinstance(model, str) or not model:
            return "Invalid type for 'model': expected a non-empty string.", "model", None
        if body.get("stream") is True and path != "/v1/chat/completions":
            return (
                "Streaming is supported for chat completions only.",
                "stream",
                "unsupported_value",
            )
        name, missing, shape, check = _REQUIRED_FIELD[path]
        value = body.get(name)
        if value is None:
            return missing, name, "missing_required_parameter"
        if not check(value):
            return f"Invalid type for '{name}': expected {shape}.", name, None
        return None

    # ---- response bodies -----------------------------------------------------------

    def _output_tokens(self, body: dict[str, Any], *limit_fields: str) -> tuple[int, bool]:
        """(tokens to generate, whether the client's limit cut the output short)."""
        natural = self.config.completion_tokens
        for name in limit_fields:
            limit = body.get(name)
            if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
                return (limit, True) if limit < natural else (natural, False)
        return natural, False

    def _chat(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        messages: list[dict[str, Any]] = body["messages"]
        prompt_tokens = 0
        last_words: list[str] = []
        for message in messages:
            last_words = _words(message.get("content"))
            prompt_tokens += len(last_words) + 3
        completion, truncated = self._output_tokens(body, "max_completion_tokens", "max_tokens")
        n = _choice_count(body)
        content = _echo(last_words, completion)
        finish = "length" if truncated else "stop"
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i in range(n)
        ]
        completion_total = completion * n
        return {
            "id": f"chatcmpl-{self._next_id()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_total,
                "total_tokens": prompt_tokens + completion_total,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            "system_fingerprint": None,
        }

    def _completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        prompts = _prompt_list(body["prompt"])
        completion, truncated = self._output_tokens(body, "max_tokens")
        n = _choice_count(body)
        finish = "length" if truncated else "stop"
        prompt_tokens = 0
        choices: list[dict[str, Any]] = []
        for prompt in prompts:
            words = _words(prompt) if isinstance(prompt, str) else []
            prompt_tokens += len(prompt) if isinstance(prompt, list) else len(words)
            text = _echo(words, completion)
            for _ in range(n):
                choices.append(
                    {
                        "text": text,
                        "index": len(choices),
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                )
        completion_total = completion * len(choices)
        return {
            "id": f"cmpl-{self._next_id()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_total,
                "total_tokens": prompt_tokens + completion_total,
            },
        }

    def _embeddings(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        inputs = _prompt_list(body["input"])
        as_base64 = body.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = []
        prompt_tokens = 0
        for index, item in enumerate(inputs):
            if isinstance(item, list):
                prompt_tokens += len(item)
                seed_text = ",".join(str(t) for t in item)
            else:
                prompt_tokens += len(_words(item))
                seed_text = str(item)
            vector = _embedding(seed_text)
            embedding: Any = (
                b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    def _response(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        data = body["input"]
        instructions = body.get("instructions")
        input_tokens = len(_words(instructions)) if isinstance(instructions, str) else 0
        last_words: list[str] = []
        if isinstance(data, str):
            last_words = _words(data)
            input_tokens += len(last_words) + 3
        else:
            for item in data:
                if isinstance(item, dict):
                    last_words = _words(item.get("content", item.get("output")))
                    input_tokens += len(last_words) + 3
        output, truncated = self._output_tokens(body, "max_output_tokens")
        now = int(time.time())
        return {
            "id": f"resp_{self._next_id()}",
            "object": "response",
            "created_at": now,
            "status": "incomplete" if truncated else "completed",
            "completed_at": now,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
            "instructions": instructions,
            "max_output_tokens": body.get("max_output_tokens"),
            "model": model,
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{self._next_id()}",
                    "role": "assistant",
                    "status": "incomplete" if truncated else "completed",
                    "content": [
                        {
                            "type": "output_text",
                            "text": _echo(last_words, output),
                            "annotations": [],
                        }
                    ],
                }
            ],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output,
            },
            "user": body.get("user"),
            "metadata": body.get("metadata", {}),
        }

    # ---- observability and control ---------------------------------------------------

    def stats_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "requests": s.requests,
            "by_path": dict(s.by_path),
            "by_model": dict(s.by_model),
            "by_status": {str(k): v for k, v in sorted(s.by_status.items())},
            "dropped": s.dropped,
            "hung": s.hung,
            "invalid_json": s.invalid_json,
            "cancelled": s.cancelled,
            "in_flight": s.in_flight,
            "max_in_flight": s.max_in_flight,
            "in_service": self.pool.running,
            "waiting": self.pool.waiting,
            "max_concurrent_in_service": self.pool.max_running,
            # Requests the continuous-batching model is advancing (continuous mode).
            "in_batch": 0 if self._continuous is None else self._continuous.speed.running,
            "busy_seconds": round(s.busy_seconds, 6),
            "keys": dict(s.keys),
            "authorization": dict(s.authorization),
        }

    def _model_names(self) -> list[str]:
        return list(self.config.models) or [DEFAULT_MODEL_NAME]

    async def _stats_handler(self, _request: web.Request) -> web.Response:
        return _json(self.stats_json())

    async def _reset_handler(self, _request: web.Request) -> web.Response:
        self.reset()
        return _json(self.stats_json())

    async def _config_get(self, _request: web.Request) -> web.Response:
        return _json(self.config.to_json())

    async def _config_handler(self, request: web.Request) -> web.Response:
        try:
            updates = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            updates = None
        if not isinstance(updates, dict):
            return _error(400, "The config body must be a JSON object.", {})
        try:
            self.update_config(updates)
        except ValueError as exc:
            return _error(400, str(exc), {}, param="config")
        return _json(self.config.to_json())

    async def _models_handler(self, _request: web.Request) -> web.Response:
        created = int(time.time())
        return _json(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": created, "owned_by": "openbatch-sim"}
                    for m in self._model_names()
                ],
            }
        )

    async def _health(self, _request: web.Request) -> web.Response:
        # vLLM answers an empty 200.
        return web.Response(status=200)

    async def _metrics(self, _request: web.Request) -> web.Response:
        load = Load(
            running=self.pool.running,
            waiting=self.pool.waiting,
            slots=self.pool.capacity,
            api_requests=self.stats.requests,
        )
        text = render(self._model_names()[0], load, self.metrics)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")


# ---- helpers -------------------------------------------------------------------------


def _finished_reason(answer: dict[str, Any]) -> str:
    """vLLM's `finished_reason` label: `length` when the token limit cut the output."""
    choices = answer.get("choices")
    if isinstance(choices, list) and choices:
        return str(choices[0].get("finish_reason") or "stop")
    return "length" if answer.get("status") == "incomplete" else "stop"


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _is_text_or_list(value: Any) -> bool:
    return isinstance(value, str | list)


# Per endpoint: the body field it needs, OpenAI's wording when it is missing, and its shape.
_REQUIRED_FIELD: dict[str, tuple[str, str, str, Callable[[Any], bool]]] = {
    "/v1/chat/completions": (
        "messages",
        "Messages parameter is required.",
        "a non-empty array of objects",
        _is_messages,
    ),
    "/v1/completions": (
        "prompt",
        "Prompt parameter is required.",
        "a string or an array",
        _is_text_or_list,
    ),
    "/v1/embeddings": (
        "input",
        "Input parameter is required.",
        "a string or an array",
        _is_text_or_list,
    ),
    "/v1/responses": (
        "input",
        "Input parameter is required.",
        "a string or an array",
        _is_text_or_list,
    ),
}


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type=_JSON)


def _error(
    status: int,
    message: str,
    headers: dict[str, str],
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(body=orjson.dumps(body), status=status, content_type=_JSON, headers=headers)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunks(answer: dict[str, Any], body: dict[str, Any]) -> tuple[bytes, bytes]:
    """A chat completion as server-sent events: (the first chunk, everything after it)."""
    base = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return _sse({**base, "choices": choices, **extra})

    def choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    firsts: list[dict[str, Any]] = []
    rests: list[dict[str, Any]] = []
    ends: list[dict[str, Any]] = []
    for item in answer["choices"]:
        words = str(item["message"]["content"]).split(" ")
        index = item["index"]
        firsts.append(choice(index, {"role": "assistant", "content": words[0]}))
        rests.append(choice(index, {"content": "".join(" " + w for w in words[1:])}))
        ends.append(choice(index, {}, item["finish_reason"]))
    usage = None
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        usage = answer["usage"]
    tail = chunk(rests) + chunk(ends)
    if usage is not None:
        tail += chunk([], usage=usage)
    return chunk(firsts), tail + b"data: [DONE]\n\n"


def _format_seconds(seconds: float) -> str:
    """Retry-After as an integer when whole, else a short decimal (clients accept both)."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _optional_seconds(x_sim: dict[str, Any], name: str) -> float | None:
    value = x_sim.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"x_sim.{name} must be a non-negative number")
    return float(value)


def _words(content: Any) -> list[str]:
    """Whitespace-separated words of a message content: a string or a list of text parts."""
    if isinstance(content, str):
        return content.split()
    if isinstance(content, list):
        words: list[str] = []
        for part in content:
            if isinstance(part, str):
                words.extend(part.split())
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                words.extend(part["text"].split())
        return words
    return []


def _echo(words: list[str], count: int) -> str:
    """`count` words cycled from the prompt, so output length matches completion usage."""
    if count <= 0:
        return ""
    source = words or ["ok"]
    repeats = count // len(source) + 1
    return " ".join((source * repeats)[:count])


def _choice_count(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


def _prompt_list(value: Any) -> list[Any]:
    """A prompt/input as a list of items: a string, a token list, or a list of either."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        return [value]
    return list(value) if isinstance(value, list) else [str(value)]


def _embedding(text: str) -> list[float]:
    """A deterministic vector in [-1, 1) derived from the text."""
    digest = hashlib.blake2b(text.encode(), digest_size=EMBEDDING_DIMENSIONS).digest()
    return [round(b / 128.0 - 1.0, 6) for b in digest]


# ---- server ----------------------------------------------------------------------------


async def start_server(
    sim: ModelSim, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve `sim` in the running loop; returns the runner (call `cleanup()`) and root URL."""
    # Disconnecting clients cancel their handler, as a model server aborts their request;
    # a short shutdown timeout keeps hung requests from delaying exit.
    runner = web.AppRunner(
        sim.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Binding the socket ourselves gives the real port when port 0 was asked for.
    sock = socket.create_server((host, port), family=family, backlog=4096)
    site = web.SockSite(runner, sock)
    await site.start()
    bound_port = sock.getsockname()[1]
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    return runner, f"http://{url_host}:{bound_port}"


class _EofWatch(asyncio.Protocol):
    """Stops the server when stdin closes, i.e. when the parent process is gone."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()


async def _run(config: SimConfig, host: str, port: int, exit_on_stdin_eof: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sim = ModelSim(config)
    runner, url = await start_server(sim, host, port)
    if exit_on_stdin_eof:
        await loop.connect_read_pipe(lambda: _EofWatch(stop), sys.stdin)
    print(f"READY {url}", flush=True)
    try:
        await stop.wait()
    finally:
        sim.close()
        await runner.cleanup()


def build_parser() -> argparse.ArgumentParser:
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="openbatch sim",
        description="OpenAI-compatible model-server simulator with fault injection.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001, help="port to listen on (8001; 0: any)")
    p.add_argument(
        "--slots", type=int, default=d.slots, help=f"requests served at once ({d.slots})"
    )
    p.add_argument(
        "--mode",
        choices=[m.value for m in SimMode],
        default=d.mode,
        help="fixed: a request holds a slot for the service time; continuous: running "
        "requests share the server's speed, which falls as slots fill (fixed)",
    )
    p.add_argument(
        "--service-time",
        type=float,
        default=d.service_time,
        help="seconds a request takes at idle speed (0)",
    )
    p.add_argument(
        "--occupancy-slowdown",
        type=float,
        default=d.occupancy_slowdown,
        metavar="K",
        help="continuous mode: with n of S slots busy, service is 1 + K*n/S times slower "
        f"({d.occupancy_slowdown:g})",
    )
    p.add_argument(
        "--prefill-share",
        type=float,
        default=d.prefill_share,
        help="a streamed chat answer's first token comes after this share of its service "
        f"time ({d.prefill_share:g})",
    )
    p.add_argument("--service-jitter", type=float, default=d.service_jitter)
    p.add_argument("--p-429", type=float, default=d.p_429)
    p.add_argument("--retry-after", type=float, default=d.retry_after)
    p.add_argument("--p-500", type=float, default=d.p_500)
    p.add_argument("--p-503", type=float, default=d.p_503)
    p.add_argument("--p-hang", type=float, default=d.p_hang)
    p.add_argument("--hang-seconds", type=float, default=d.hang_seconds)
    p.add_argument("--p-drop", type=float, default=d.p_drop)
    p.add_argument("--p-invalid-json", type=float, default=d.p_invalid_json)
    p.add_argument("--completion-tokens", type=int, default=d.completion_tokens)
    p.add_argument("--models", default="", help="comma-separated; empty accepts any model")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--api-key", default=d.api_key, help="require this bearer token (401 else)")
    p.add_argument(
        "--max-waiting", type=int, default=d.max_waiting, help="429 beyond this queue (-1: off)"
    )
    p.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (lets a parent's death stop the simulator)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    config = SimConfig()
    fields = {f.name for f in dataclasses.fields(config)} - {"models"}
    updates: dict[str, Any] = {name: getattr(args, name) for name in fields}
    updates["models"] = args.models
    for name, value in validated_updates(config, updates).items():
        setattr(config, name, value)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        import uvloop  # optional speed-up, absent on some platforms
    except ImportError:
        asyncio.run(_run(config, args.host, args.port, args.exit_on_stdin_eof))
    else:
        uvloop.run(_run(config, args.host, args.port, args.exit_on_stdin_eof))
    return 0


if __name__ == "__main__":
    sys.exit(main())
