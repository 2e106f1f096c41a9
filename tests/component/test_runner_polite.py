"""`openbatch run --polite` next to online traffic: the simulator and llama.cpp's real server.

The online traffic is a request loop in this process (`OnlineLoad`): threads that keep
requests going to a server and record each one's latency. The batch must complete, every
line exactly once; the online latency is reported (printed), never asserted as a time.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from openbatch.progress import RunState
from openbatch.runner_args import format_deadline
from tests.fixtures.llama import start_llama_server
from tests.fixtures.model_sim import ModelSimFactory
from tests.runner_support import (
    assert_exactly_once,
    chat_line,
    jsonl,
    llama_chat_line,
    parse_lines,
    progress,
    read_uri,
    run_args,
    run_openbatch,
    start_openbatch,
    write_uri,
)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
FAST = ("--polite", "--polite-scrape-interval", "0.2")


class OnlineLoad:
    """Online traffic: `users` closed loops (each sends its next request when the last one
    answered), or with `every` an open loop sending one request per `every` seconds."""

    def __init__(self, url: str, body: dict[str, Any], *, users: int = 1, every: float = 0):
        self._url = url
        self._body = json.dumps(body).encode()
        self._users = users
        self._every = every
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self.failures = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(max_workers=32)

    def _one(self) -> None:
        request = urllib.request.Request(  # noqa: S310 - our own loopback server
            self._url, data=self._body, headers={"Content-Type": "application/json"}
        )
        start = time.monotonic()
        try:
            with _OPENER.open(request, timeout=60) as response:
                response.read()
            ok = response.status == 200
        except OSError:
            ok = False
        with self._lock:
            if ok:
                self.latencies.append(time.monotonic() - start)
            else:
                self.failures += 1

    def _closed_loop(self) -> None:
        while not self._stop.is_set():
            self._one()

    def _open_loop(self) -> None:
        while not self._stop.wait(self._every):
            self._pool.submit(self._one)

    def __enter__(self) -> OnlineLoad:
        target = self._open_loop if self._every else self._closed_loop
        count = 1 if self._every else self._users
        self._threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        self._pool.shutdown(wait=True)

    def report(self, label: str) -> str:
        lat = sorted(self.latencies)
        if not lat:
            return f"{label}: no answers, {self.failures} failures"
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"{label}: {len(lat)} requests, p50 {statistics.median(lat) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms, {self.failures} failures"
        )


def _sim_completion() -> dict[str, Any]:
    return {"model": "sim-model", "prompt": "online", "max_tokens": 4}


def _batch(tmp_path: Path, lines: list[dict[str, Any]]) -> tuple[str, str, str, set[str]]:
    uri = str(tmp_path / "input.jsonl")
    write_uri(uri, jsonl(lines))
    return (
        uri,
        str(tmp_path / "output.jsonl"),
        str(tmp_path / "work"),
        {line["custom_id"] for line in lines},
    )


def _outcome(output: str, ids: set[str]) -> None:
    out = parse_lines(read_uri(output))
    err = parse_lines(read_uri(output.rsplit("/", 1)[0] + "/errors.jsonl"))
    assert_exactly_once(ids, out, err)
    assert err == []


def test_polite_follows_the_simulators_vllm_metrics(
    tmp_path: Path, model_sim_factory: ModelSimFactory
) -> None:
    sim = model_sim_factory(slots=8, service_time=0.05)
    uri, output, work, ids = _batch(tmp_path, [chat_line(i) for i in range(600)])
    proc = run_openbatch([*run_args(uri, output, work, [sim.base_url]), *FAST])
    assert proc.returncode == 0, proc.stderr
    _outcome(output, ids)
    assert "its window follows its vllm metrics" in proc.stderr
    record = progress(work)
    assert record is not None and record.state is RunState.COMPLETED
    assert (record.window_mode, record.load_signal) == ("polite", "vllm")
    assert not record.deadline_pressure
    # The KV-cache gauge told it the server's size: it took the room of the 8 slots less
    # the free tenth, and never made anything wait (a fixed window would send 64).
    assert 5 <= sim.stats()["max_in_flight"] <= 8, sim.stats()


def test_without_metrics_the_latency_fallback_completes_the_batch(
    tmp_path: Path, model_sim_factory: ModelSimFactory
) -> None:
    sim = model_sim_factory(slots=8, service_time=0.05)
    uri, output, work, ids = _batch(tmp_path, [chat_line(i) for i in range(400)])
    # The simulator answers 404 there: a server without a metrics page.
    args = [*run_args(uri, output, work, [sim.base_url]), *FAST]
    proc = run_openbatch([*args, "--polite-metrics-url", "/no-metrics-here"])
    assert proc.returncode == 0, proc.stderr
    _outcome(output, ids)
    assert "answered HTTP 404" in proc.stderr
    assert "its window follows the batch's latency" in proc.stderr
    record = progress(work)
    assert record is not None and record.load_signal == "latency"
    assert sim.stats()["max_in_flight"] < 64


def test_each_server_is_gated_on_its_own_load(
    tmp_path: Path, model_sim_factory: ModelSimFactory
) -> None:
    busy = model_sim_factory(slots=4, service_time=0.05)
    idle = model_sim_factory(slots=4, service_time=0.05)
    uri, output, work, ids = _batch(tmp_path, [chat_line(i) for i in range(400)])
    args = [*run_args(uri, output, work, [busy.base_url, idle.base_url]), *FAST]
    with OnlineLoad(busy.base_url + "/completions", _sim_completion(), users=6) as online:
        proc = run_openbatch(args)
    print(online.report("online traffic on the busy server"))
    assert proc.returncode == 0, proc.stderr
    _outcome(output, ids)
    on_busy = busy.stats()["by_path"].get("/v1/chat/completions", 0)
    on_idle = idle.stats()["by_path"]["/v1/chat/completions"]
    print(f"batch requests: busy server {on_busy}, idle server {on_idle}")
    assert on_busy + on_idle == 400
    assert on_idle > 2 * on_busy  # the busy one's queue kept its window at the minimum
    record = progress(work)
    assert record is not None and record.load_signal == "vllm,vllm"


def test_shards_of_one_batch_share_a_servers_room(
    tmp_path: Path, model_sim_factory: ModelSimFactory
) -> None:
    # Two shards, one server of 8 slots: each sees the other as online traffic and takes
    # half of the free room, so together they fill the room once instead of twice.
    sim = model_sim_factory(slots=8, service_time=0.05)
    uri, output, work, ids = _batch(tmp_path, [chat_line(i) for i in range(600)])
    procs = [
        start_openbatch([*run_args(uri, output, work, [sim.base_url]), *FAST, "--shard", f"{k}/2"])
        for k in range(2)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        assert "its window follows its vllm metrics" in stderr
    finalize = run_openbatch(
        [
            *["finalize", "--work-dir", work, "--shards", "2", "--output", output],
            *["--errors", output.rsplit("/", 1)[0] + "/errors.jsonl"],
        ]
    )
    assert finalize.returncode == 0, finalize.stderr
    _outcome(output, ids)
    for k in range(2):
        record = progress(work, k)
        assert record is not None and record.state is RunState.COMPLETED
        assert (record.window_mode, record.load_signal) == ("polite", "vllm")
    # The room of 8 slots less the free tenth is 7; two shards each taking all of it
    # would hold up to 14 and queue 6. Each shard reads the other's share from a scrape
    # up to one interval old, so a request or two may overlap for a moment (CI saw 9).
    assert sim.stats()["max_in_flight"] <= 10, sim.stats()


def test_deadline_pressure_takes_capacity_to_finish_in_time(
    tmp_path: Path, model_sim_factory: ModelSimFactory
) -> None:
    # Online traffic keeps the 4 slots full and 2 waiting: politeness alone gives the
    # batch one request at a time, a seventh of the server: 300 lines would take ~26 s.
    sim = model_sim_factory(slots=4, service_time=0.05)
    uri, output, work, ids = _batch(tmp_path, [chat_line(i) for i in range(300)])
    deadline = format_deadline(datetime.now(UTC) + timedelta(seconds=15))
    args = [*run_args(uri, output, work, [sim.base_url]), *FAST]
    args += ["--deadline", deadline, "--max-concurrency", "20"]
    with OnlineLoad(sim.base_url + "/completions", _sim_completion(), users=6) as online:
        proc = run_openbatch(args)
    print(online.report("online traffic"))
    assert proc.returncode == 0, proc.stderr
    _outcome(output, ids)  # nothing expired: every line ran
    assert "deadline pressure:" in proc.stderr
    assert "may no longer go below" in proc.stderr
    record = progress(work)
    assert record is not None and record.state is RunState.COMPLETED
    assert sim.stats()["max_in_flight"] <= 20 + 6  # the ceiling, plus the online users


@contextmanager
def _llama_with_metrics(tiny_gguf: Path, log: Path) -> Iterator[Any]:
    handle = start_llama_server(tiny_gguf, parallel=4, metrics=True, log_path=log)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.mark.timeout(300)
def test_polite_batch_next_to_interactive_requests_on_llama_cpp(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with _llama_with_metrics(tiny_gguf, tmp_path / "llama.log") as llama:
        chat = llama.base_url + "/chat/completions"
        body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        with OnlineLoad(chat, body, every=0.1) as alone:
            time.sleep(3)  # a fixed share of the report, not a wait for a condition
        lines = [llama_chat_line(i, max_tokens=48) for i in range(300)]
        uri, output, work, ids = _batch(tmp_path, lines)
        fixed = run_args(
            uri, str(tmp_path / "fixed.jsonl"), str(tmp_path / "fixed"), [llama.base_url]
        )
        with OnlineLoad(chat, body, every=0.1) as beside_fixed:
            fixed_proc = run_openbatch(fixed)  # --concurrency 64, for comparison
        args = [*run_args(uri, output, work, [llama.base_url]), *FAST]
        with OnlineLoad(chat, body, every=0.1) as beside:
            proc = run_openbatch([*args, "--request-timeout", "60"])
    print(alone.report("interactive alone"))
    print(beside_fixed.report("interactive beside a batch at a fixed window of 64"))
    print(beside.report("interactive beside the polite batch"))
    assert fixed_proc.returncode == 0, fixed_proc.stderr
    assert proc.returncode == 0, proc.stderr
    _outcome(output, ids)
    assert "its window follows its llamacpp metrics" in proc.stderr
    record = progress(work)
    assert record is not None and record.state is RunState.COMPLETED
    assert record.load_signal == "llamacpp"
    assert beside.failures == 0 and len(beside.latencies) > 0
