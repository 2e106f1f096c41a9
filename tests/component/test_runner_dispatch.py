"""The request path of the real `openbatch run` process (issue 7): exact bodies, outages,
dead servers, Retry-After bounds and retries that hold no window slot."""

from __future__ import annotations

import time
from pathlib import Path

from openbatch.progress import RunState
from tests.fixtures.model_sim import ModelSimFactory, SimHandle
from tests.runner_support import (
    assert_exactly_once,
    chat_line,
    committed_lines,
    final_result,
    jsonl,
    parse_lines,
    progress,
    read_uri,
    run_args,
    run_openbatch,
    start_openbatch,
    wait_for,
)


def _args(tmp: Path, base_urls: list[str], *extra: str) -> list[str]:
    return run_args(
        str(tmp / "in.jsonl"), str(tmp / "out.jsonl"), str(tmp / "work"), base_urls, *extra
    )


def _outputs(tmp: Path) -> tuple[list, list]:  # type: ignore[type-arg]
    return parse_lines(read_uri(str(tmp / "out.jsonl"))), parse_lines(
        read_uri(str(tmp / "errors.jsonl"))
    )


def _write(tmp: Path, n: int) -> set[str]:
    (tmp / "in.jsonl").write_bytes(jsonl(chat_line(i) for i in range(n)))
    return {f"req-{i}" for i in range(n)}


# ---------------------------------------------------------------- item 3: exact bodies

_MESSAGES = b'"messages":[{"role":"user","content":"hi"}]'
_DEEP = b"[" * 300 + b"]" * 300  # orjson reads it, but refuses to write more than 255 levels
_BODIES = {
    "big-int": b'{"model":"m",'
    + _MESSAGES
    + b',"seed":1180591620717411303424,"x_sim":{"echo":true}}',
    "deep": b'{"model":"m",' + _MESSAGES + b',"metadata":' + _DEEP + b',"x_sim":{"echo":true}}',
    "spaced": b'{ "model" : "m" , ' + _MESSAGES + b' , "t": 1.50, "x_sim":{"echo":true} }',
}


def test_the_body_is_forwarded_byte_for_byte(tmp_path: Path, model_sim: SimHandle) -> None:
    lines = [
        b'{"custom_id":"%s","method":"POST","url":"/v1/chat/completions","body":%s}'
        % (cid.encode(), body)
        for cid, body in _BODIES.items()
    ]
    # Duplicate keys: orjson (and so validation) reads the last `body`; that one is sent.
    dup_body = b'{"model":"m",' + _MESSAGES + b',"x_sim":{"echo":true},"n":1}'
    lines.append(
        b'{"custom_id":"dup","body":{"model":"other"},"method":"POST",'
        b'"url":"/v1/chat/completions","body":' + dup_body + b"}"
    )
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    proc = run_openbatch(_args(tmp_path, [model_sim.base_url]))
    assert proc.returncode == 0, proc.stderr
    out, err = _outputs(tmp_path)
    assert err == []
    received = {
        line.custom_id: line.response.body["x_sim_request"] for line in out if line.response
    }
    assert received == {**{k: v.decode() for k, v in _BODIES.items()}, "dup": dup_body.decode()}
    assert final_result(str(tmp_path / "work")).completed == 4


def test_non_object_answers_and_the_requests_an_error_counts(
    tmp_path: Path, model_sim: SimHandle
) -> None:
    lines = [chat_line(i) for i in range(30)]
    lines[10]["body"]["x_sim"] = {"fault": "not_object", "key": "arr"}
    lines[20]["body"]["x_sim"] = {"fault": "drop", "key": "drop"}
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    proc = run_openbatch(
        _args(tmp_path, [model_sim.base_url], "--max-attempts", "3", "--concurrency", "2")
    )
    assert proc.returncode == 0, proc.stderr
    out, err = _outputs(tmp_path)
    assert len(out) == 28
    errors = {line.custom_id: line.error for line in err if line.error}
    assert set(errors) == {"req-10", "req-20"}
    assert errors["req-10"].code == "invalid_response"
    assert "not an object" in errors["req-10"].message
    assert errors["req-20"].code == "connection_error"
    keys = model_sim.stats()["keys"]
    assert keys["arr"] == 3
    # A pooled connection closed under a request is replaced without costing an attempt,
    # but the request was sent again: the message counts what the server received.
    for cid, key in (("req-10", "arr"), ("req-20", "drop")):
        assert f"after {keys[key]} attempts" in errors[cid].message, (errors[cid], keys)


# ---------------------------------------------------------------- item 4: outages


def _restart(factory: ModelSimFactory, sim: SimHandle, **options: object) -> SimHandle:
    return factory(port=sim.port, **options)


def test_a_server_outage_fails_no_line(tmp_path: Path, model_sim_factory: ModelSimFactory) -> None:
    options = {"slots": 8, "service_time": 0.01}
    sim = model_sim_factory(**options)
    n = 2000
    ids = _write(tmp_path, n)
    args = _args(
        tmp_path,
        [sim.base_url],
        "--max-attempts",
        "2",
        "--concurrency",
        "16",
        "--commit-interval",
        "0.2",
    )
    proc = start_openbatch(args)
    wait_for(lambda: committed_lines(str(tmp_path / "work")) >= 200, 60, "200 committed lines")
    sim.stop()
    time.sleep(3)  # the outage itself is the scenario
    sim = _restart(model_sim_factory, sim, **options)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert "stopped answering" in stderr and "answers again" in stderr
    out, err = _outputs(tmp_path)
    assert_exactly_once(ids, out, err)
    assert err == [] and len(out) == n
    assert final_result(str(tmp_path / "work")).failed == 0


def test_a_long_outage_exits_1_without_failing_lines_and_the_rerun_resumes(
    tmp_path: Path, model_sim_factory: ModelSimFactory
) -> None:
    options = {"slots": 4, "service_time": 0.01}
    sim = model_sim_factory(**options)
    n = 1500
    ids = _write(tmp_path, n)
    args = _args(
        tmp_path,
        [sim.base_url],
        "--concurrency",
        "8",
        "--commit-interval",
        "0.2",
        "--outage-timeout",
        "2",
    )
    proc = start_openbatch(args)
    wait_for(lambda: committed_lines(str(tmp_path / "work")) >= 100, 60, "100 committed lines")
    sim.stop()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "no model server answered for 2s" in stderr
    record = progress(str(tmp_path / "work"))
    assert record is not None and record.state is RunState.INTERRUPTED
    assert record.failed == 0 and 0 < record.completed < n
    sim = _restart(model_sim_factory, sim, **options)
    again = run_openbatch(args)
    assert again.returncode == 0, again.stderr
    out, err = _outputs(tmp_path)
    assert_exactly_once(ids, out, err)
    assert err == []


def test_an_unreachable_server_is_reported_at_once(
    tmp_path: Path, model_sim_factory: ModelSimFactory
) -> None:
    sim = model_sim_factory()
    dead = sim.base_url
    sim.stop()
    _write(tmp_path, 300)
    proc = run_openbatch(_args(tmp_path, [dead], "--outage-timeout", "1"))
    assert proc.returncode == 1, proc.stderr
    first = proc.stderr.splitlines()
    assert any("does not answer" in line and dead in line for line in first), proc.stderr
    record = progress(str(tmp_path / "work"))
    assert record is not None and (record.completed, record.failed) == (0, 0)


# ---------------------------------------------------------------- item 5: a dead server


def test_a_dead_server_among_live_ones_fails_no_line(
    tmp_path: Path, model_sim_factory: ModelSimFactory
) -> None:
    live = model_sim_factory(slots=16, service_time=0.005)
    dead = model_sim_factory()
    dead_url = dead.base_url
    n = 1000
    ids = _write(tmp_path, n)
    proc = start_openbatch(_args(tmp_path, [live.base_url, dead_url], "--max-attempts", "2"))
    wait_for(lambda: live.stats()["requests"] >= 100, 60, "the run to start")
    dead.stop()  # dies mid-run, after the start-up check
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    out, err = _outputs(tmp_path)
    assert_exactly_once(ids, out, err)
    assert err == [] and len(out) == n
    assert f"model server {dead_url} stopped answering" in stderr


def test_a_server_dead_from_the_start_is_left_out(
    tmp_path: Path, model_sim_factory: ModelSimFactory
) -> None:
    live = model_sim_factory(slots=16)
    dead = model_sim_factory()
    dead_url = dead.base_url
    dead.stop()
    ids = _write(tmp_path, 500)
    proc = run_openbatch(_args(tmp_path, [dead_url, live.base_url], "--max-attempts", "1"))
    assert proc.returncode == 0, proc.stderr
    out, err = _outputs(tmp_path)
    assert_exactly_once(ids, out, err)
    assert err == []
    assert f"model server {dead_url} does not answer" in proc.stderr
    assert live.stats()["requests"] == 500


# ---------------------------------------------------------------- item 8: Retry-After bounds


def test_retry_after_is_capped_by_an_option(tmp_path: Path, model_sim: SimHandle) -> None:
    lines = [chat_line(0)]
    lines[0]["body"]["x_sim"] = {"fault": "429", "times": 1, "key": "k", "retry_after": 3600}
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    proc = run_openbatch(
        _args(tmp_path, [model_sim.base_url], "--max-retry-after", "0.2"), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out, _ = _outputs(tmp_path)
    assert [line.custom_id for line in out] == ["req-0"]
    assert model_sim.stats()["keys"]["k"] == 2


def test_a_lines_total_wait_is_bounded(tmp_path: Path, model_sim: SimHandle) -> None:
    lines = [chat_line(0)]
    lines[0]["body"]["x_sim"] = {"fault": "429", "key": "k", "retry_after": 0.4}
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    args = _args(tmp_path, [model_sim.base_url], "--max-attempts", "100", "--max-retry-wait", "1")
    proc = run_openbatch(args, timeout=60)
    assert proc.returncode == 0, proc.stderr
    _, err = _outputs(tmp_path)
    assert len(err) == 1 and err[0].response is not None
    assert err[0].response.status_code == 429
    # Waits of at least 0.4 s each: at most two fit in the 1 s budget.
    assert 2 <= model_sim.stats()["keys"]["k"] <= 3


# ---------------------------------------------------------------- item 10: slots


def test_a_line_in_backoff_holds_no_window_slot(tmp_path: Path, model_sim: SimHandle) -> None:
    lines = [chat_line(i) for i in range(40)]
    lines[0]["body"]["x_sim"] = {"fault": "429", "times": 1, "key": "slow", "retry_after": 3}
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    proc = run_openbatch(_args(tmp_path, [model_sim.base_url], "--concurrency", "1"))
    assert proc.returncode == 0, proc.stderr
    out, _ = _outputs(tmp_path)
    order = [line.custom_id for line in out]
    assert len(order) == 40
    # With one slot, the other 39 lines ran while req-0 waited out its Retry-After.
    assert order[-1] == "req-0", order[:3]
