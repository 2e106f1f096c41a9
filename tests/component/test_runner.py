"""The real `openbatch run` process against the model simulator, on local files and S3."""

from __future__ import annotations

import os
import random
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

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
    write_uri,
)


@dataclass
class Place:
    """Where a test keeps its files: a local dir or an S3 bucket, same URIs either way."""

    root: str
    env: dict[str, str] = field(default_factory=dict)

    def uri(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    if request.param == "local":
        yield Place(str(tmp_path))
    else:
        seaweed = request.getfixturevalue("seaweed")
        bucket = request.getfixturevalue("s3_bucket")
        monkeypatch = request.getfixturevalue("monkeypatch")
        env = seaweed.env()
        for name, value in env.items():  # this process reads and writes the bucket too
            monkeypatch.setenv(name, value)
        yield Place(f"s3://{bucket}/job", env)


@pytest.fixture
def local(tmp_path: Path) -> Place:
    return Place(str(tmp_path))


def make_batch(place: Place, n: int, **extra_body: Any) -> tuple[str, set[str]]:
    uri = place.uri("input.jsonl")
    write_uri(uri, jsonl(chat_line(i, **extra_body) for i in range(n)))
    return uri, {f"req-{i}" for i in range(n)}


def batch_args(
    place: Place, sim: SimHandle, *extra: str, input_uri: str | None = None
) -> list[str]:
    """`run` arguments for the place's standard input, output and work dir."""
    return run_args(
        input_uri or place.uri("input.jsonl"),
        place.uri("output.jsonl"),
        place.uri("work"),
        [sim.base_url],
        *extra,
    )


def run(place: Place, sim: SimHandle, *extra: str, input_uri: str | None = None) -> Any:
    return run_openbatch(batch_args(place, sim, *extra, input_uri=input_uri), env=place.env)


def outputs(place: Place) -> tuple[list[Any], list[Any]]:
    return (
        parse_lines(read_uri(place.uri("output.jsonl"))),
        parse_lines(read_uri(place.uri("errors.jsonl"))),
    )


def test_happy_path_counts_usage_and_idempotent_rerun(place: Place, model_sim: SimHandle) -> None:
    _, ids = make_batch(place, 300)
    proc = run(place, model_sim)
    assert proc.returncode == 0, proc.stderr
    out, err = outputs(place)
    assert_exactly_once(ids, out, err)
    assert err == [] and read_uri(place.uri("errors.jsonl")) is None  # no empty error file
    assert all(line.response and line.response.status_code == 200 for line in out)
    result = final_result(place.uri("work"))
    assert (result.state, result.total, result.completed, result.failed) == (
        RunState.COMPLETED,
        300,
        300,
        0,
    )
    bodies = [line.response.body for line in out if line.response]
    assert result.usage.input_tokens == sum(b["usage"]["prompt_tokens"] for b in bodies)
    assert result.usage.output_tokens == sum(b["usage"]["completion_tokens"] for b in bodies)
    assert result.output_uri == place.uri("output.jsonl") and result.error_uri is None
    assert "completed: 300 requests" in proc.stderr

    before = read_uri(place.uri("output.jsonl"))
    requests = model_sim.stats()["requests"]
    again = run(place, model_sim)
    assert again.returncode == 0, again.stderr
    assert read_uri(place.uri("output.jsonl")) == before
    assert model_sim.stats()["requests"] == requests  # nothing sent twice


def test_per_request_failures_go_to_the_error_file(local: Place, model_sim: SimHandle) -> None:
    lines = [chat_line(i) for i in range(20)]
    lines[3]["body"]["x_sim"] = {"fault": "400"}  # final: a bad request is not retried
    lines[5]["body"]["x_sim"] = {"fault": "500", "key": "k5"}  # retried until attempts run out
    lines[7]["body"]["x_sim"] = {"fault": "503", "times": 2, "key": "k7"}  # recovers
    write_uri(local.uri("input.jsonl"), jsonl(lines))
    proc = run(local, model_sim, "--max-attempts", "3")
    assert proc.returncode == 0, proc.stderr
    out, err = outputs(local)
    assert_exactly_once({f"req-{i}" for i in range(20)}, out, err)
    by_id = {line.custom_id: line for line in err}
    assert set(by_id) == {"req-3", "req-5"}
    for cid, status in (("req-3", 400), ("req-5", 500)):
        line = by_id[cid]
        assert line.error is None and line.response is not None
        assert line.response.status_code == status
        assert "error" in line.response.body
    keys = model_sim.stats()["keys"]
    assert keys["k5"] == 3 and keys["k7"] == 3
    result = final_result(local.uri("work"))
    assert (result.completed, result.failed) == (18, 2)


def test_no_answer_after_retries_is_an_error_line(local: Place, model_sim: SimHandle) -> None:
    lines = [chat_line(i) for i in range(4)]
    lines[0]["body"]["x_sim"] = {"fault": "drop"}
    lines[1]["body"]["x_sim"] = {"fault": "invalid_json"}
    lines[2]["body"]["x_sim"] = {"fault": "hang"}
    write_uri(local.uri("input.jsonl"), jsonl(lines))
    proc = run(local, model_sim, "--max-attempts", "2", "--request-timeout", "0.5")
    assert proc.returncode == 0, proc.stderr
    out, err = outputs(local)
    assert [line.custom_id for line in out] == ["req-3"]
    codes = {line.custom_id: line.error.code for line in err if line.error}
    assert codes == {
        "req-0": "connection_error",
        "req-1": "invalid_response",
        "req-2": "request_timeout",
    }
    assert all(line.response is None for line in err)


def test_faults_lose_nothing(local: Place, model_sim_factory: ModelSimFactory) -> None:
    sim = model_sim_factory(
        slots=16,
        p_429=0.10,
        retry_after=0.05,
        p_500=0.03,
        p_503=0.02,
        p_hang=0.01,
        hang_seconds=5,
        p_drop=0.01,
        seed=7,
    )
    _, ids = make_batch(local, 1500)
    proc = run(local, sim, "--max-attempts", "10", "--request-timeout", "1", "--concurrency", "32")
    assert proc.returncode == 0, proc.stderr
    out, err = outputs(local)
    assert_exactly_once(ids, out, err)
    stats = sim.stats()
    assert stats["by_status"].get("429", 0) > 50 and stats["dropped"] > 0 and stats["hung"] > 0
    # With 10 attempts a line fails only if all of them hit a fault (p ≈ 0.17**10).
    assert len(out) == 1500


def test_invalid_input_sends_nothing(local: Place, model_sim: SimHandle) -> None:
    lines = [chat_line(i) for i in range(5)]
    lines[1]["url"] = "/v1/embeddings"
    lines[3]["custom_id"] = "req-0"
    data = jsonl(lines) + b"{not json\n"
    write_uri(local.uri("input.jsonl"), data)
    proc = run(local, model_sim)
    assert proc.returncode == 3
    errors = orjson.loads(proc.stdout)
    assert errors["object"] == "list"
    got = [(e["code"], e["param"], e["line"]) for e in errors["data"]]
    assert got == [
        ("invalid_url", "url", 2),
        ("duplicate_custom_id", "custom_id", 4),
        ("invalid_json_line", None, 6),
    ]
    stored = read_uri(local.uri("work/validation.json"))
    assert stored is not None and orjson.loads(stored) == errors
    record = progress(local.uri("work"))
    assert record is not None and record.state is RunState.FAILED and record.error_count == 3
    assert read_uri(local.uri("output.jsonl")) is None
    assert model_sim.stats()["requests"] == 0
    again = run(local, model_sim)  # a rerun reports the same failure, still sending nothing
    assert again.returncode == 3 and orjson.loads(again.stdout) == errors
    assert model_sim.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"", "empty_file"),
        (b"\n\n", "empty_file"),
        (b'{"custom_id": "a", "method": "POST"}\n', "missing_required_parameter"),
        (b"\xff\xfe{}\n", "invalid_json_line"),
        (jsonl([chat_line(1, stream=True)]), "streaming_unsupported"),
        (jsonl([chat_line(1), chat_line(2, model="other")]), "mismatched_model"),
    ],
)
def test_bad_input_corpus(local: Place, model_sim: SimHandle, content: bytes, expect: str) -> None:
    write_uri(local.uri("input.jsonl"), content)
    proc = run(local, model_sim)
    assert proc.returncode == 3, proc.stderr
    assert orjson.loads(proc.stdout)["data"][0]["code"] == expect
    assert model_sim.stats()["requests"] == 0


def test_usage_errors_exit_2(local: Place, model_sim: SimHandle) -> None:
    missing = run(local, model_sim, input_uri=local.uri("nope.jsonl"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    no_server = run_openbatch(["run", local.uri("x.jsonl")])
    assert no_server.returncode == 2 and "--base-url" in no_server.stderr
    bad_shard = run(local, model_sim, "--shard", "3/3")
    assert bad_shard.returncode == 2 and "K/N" in bad_shard.stderr
    # A work dir holding another input's results is refused, not silently mixed.
    make_batch(local, 5)
    assert run(local, model_sim).returncode == 0
    write_uri(local.uri("input.jsonl"), jsonl(chat_line(i) for i in range(6)))
    other = run(local, model_sim)
    assert other.returncode == 2 and "different input" in other.stderr
    kept = progress(local.uri("work"))  # the refusal leaves the other input's record alone
    assert kept is not None and kept.state is RunState.COMPLETED and kept.input is not None


def test_a_usage_error_is_left_in_the_progress_record(place: Place, model_sim: SimHandle) -> None:
    """The operator has no access to pod logs: the reason travels in the progress record,
    in object storage; a local run that fails on its input makes no work dir at all."""
    proc = run(place, model_sim, input_uri=place.uri("missing.jsonl"))
    assert proc.returncode == 2
    assert "missing.jsonl does not exist" in proc.stderr
    record = progress(place.uri("work"))
    if place.root.startswith("s3://"):
        assert record is not None and not record.state.terminal
        assert "missing.jsonl does not exist" in (record.message or "")
    else:
        assert record is None and not Path(place.uri("work")).exists()


def test_routing_table(local: Place, model_sim_factory: ModelSimFactory) -> None:
    a = model_sim_factory(models=["alpha"])
    write_uri(
        local.uri("models.json"), orjson.dumps({"models": {"alpha": [a.base_url, a.root_url]}})
    )
    write_uri(local.uri("input.jsonl"), jsonl(chat_line(i, model="alpha") for i in range(10)))
    args = run_args(local.uri("input.jsonl"), local.uri("output.jsonl"), local.uri("work"), [])
    proc = run_openbatch([*args, "--models", local.uri("models.json")])
    assert proc.returncode == 0, proc.stderr
    assert len(parse_lines(read_uri(local.uri("output.jsonl")))) == 10

    write_uri(local.uri("in2.jsonl"), jsonl(chat_line(i, model="beta") for i in range(3)))
    args = run_args(local.uri("in2.jsonl"), local.uri("o2.jsonl"), local.uri("w2"), [])
    proc = run_openbatch([*args, "--models", local.uri("models.json")])
    assert proc.returncode == 3
    err = orjson.loads(proc.stdout)["data"][0]
    assert (err["code"], err["param"], err["line"]) == ("model_not_found", "body.model", 1)


def test_requests_spread_over_several_servers(
    local: Place, model_sim_factory: ModelSimFactory
) -> None:
    a, b = model_sim_factory(), model_sim_factory()
    make_batch(local, 200)
    args = run_args(
        local.uri("input.jsonl"), local.uri("output.jsonl"), local.uri("work"), [a.base_url]
    )
    proc = run_openbatch([*args, "--base-url", b.root_url])
    assert proc.returncode == 0, proc.stderr
    assert a.stats()["requests"] > 50 and b.stats()["requests"] > 50
    assert a.stats()["requests"] + b.stats()["requests"] == 200


def test_window_bounds_requests_in_flight(local: Place, model_sim_factory: ModelSimFactory) -> None:
    sim = model_sim_factory(slots=64, service_time=0.02)
    make_batch(local, 300)
    proc = run(local, sim, "--concurrency", "5")
    assert proc.returncode == 0, proc.stderr
    assert sim.stats()["max_in_flight"] == 5


def test_adaptive_window_fills_the_server_without_flooding_it(
    local: Place, model_sim_factory: ModelSimFactory
) -> None:
    sim = model_sim_factory(slots=8, service_time=0.03)
    make_batch(local, 1500)
    proc = run(local, sim, "--adaptive", "--concurrency", "1", "--max-concurrency", "512")
    assert proc.returncode == 0, proc.stderr
    peak = sim.stats()["max_in_flight"]
    # It grew from 1 to fill the 8 slots, and latency (queueing) kept it far below 512.
    assert 8 <= peak <= 40, peak


def _wait_progress(work: str, at_least: int) -> None:
    wait_for(lambda: committed_lines(work) >= at_least, 60, f"{at_least} committed lines")


def test_cancel_marker(local: Place, model_sim_factory: ModelSimFactory) -> None:
    sim = model_sim_factory(slots=4, service_time=0.05)
    _, ids = make_batch(local, 400)
    args = batch_args(
        local,
        sim,
        "--concurrency",
        "4",
        "--commit-interval",
        "0.2",
        "--poll-interval",
        "0.2",
        "--grace-period",
        "5",
    )
    proc = start_openbatch(args)
    _wait_progress(local.uri("work"), 20)
    write_uri(local.uri("work/cancel"), b"")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    out, err = outputs(local)
    assert_exactly_once(ids, out, err)
    assert 20 <= len(out) < 400
    assert all(line.error and line.error.code == "batch_cancelled" for line in err)
    result = final_result(local.uri("work"))
    assert result.state is RunState.CANCELLED
    assert (result.completed, result.unrun, result.failed) == (len(out), len(err), 0)
    assert "batch cancelled" in stderr


def test_cancel_before_start_runs_nothing(local: Place, model_sim: SimHandle) -> None:
    _, ids = make_batch(local, 10)
    write_uri(local.uri("work/cancel"), b"")
    proc = run(local, model_sim)
    assert proc.returncode == 0, proc.stderr
    out, err = outputs(local)
    assert out == [] and read_uri(local.uri("output.jsonl")) is None
    assert_exactly_once(ids, out, err)
    assert model_sim.stats()["requests"] == 0
    assert final_result(local.uri("work")).state is RunState.CANCELLED


def test_deadline_expires_unrun_lines(local: Place, model_sim_factory: ModelSimFactory) -> None:
    sim = model_sim_factory(slots=2, service_time=0.05)
    _, ids = make_batch(local, 300)
    deadline = (datetime.now(UTC) + timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    proc = run(local, sim, "--deadline", deadline, "--concurrency", "2", "--grace-period", "1")
    assert proc.returncode == 0, proc.stderr
    out, err = outputs(local)
    assert_exactly_once(ids, out, err)
    assert 0 < len(out) < 300
    assert {line.error.code for line in err if line.error} == {"batch_expired"}
    result = final_result(local.uri("work"))
    assert result.state is RunState.EXPIRED and result.unrun == len(err)


def test_sigterm_commits_and_resumes(local: Place, model_sim_factory: ModelSimFactory) -> None:
    sim = model_sim_factory(slots=4, service_time=0.02)
    _, ids = make_batch(local, 600)
    args = batch_args(
        local,
        sim,
        "--concurrency",
        "4",
        "--commit-interval",
        "60",  # only the SIGTERM path commits, so the test sees that it does
        "--commit-every",
        "100000",
    )
    proc = start_openbatch(args)
    wait_for(lambda: sim.stats()["requests"] >= 50, 60, "50 requests")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 75, stderr
    record = progress(local.uri("work"))
    assert record is not None and record.state is RunState.INTERRUPTED
    assert record.completed >= 50
    assert read_uri(local.uri("output.jsonl")) is None  # not finalized: not done
    again = run_openbatch(args)
    assert again.returncode == 0, again.stderr
    assert "resuming shard 0" in again.stderr
    out, err = outputs(local)
    assert_exactly_once(ids, out, err)
    assert len(out) == 600


def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    place: Place, model_sim_factory: ModelSimFactory
) -> None:
    sim = model_sim_factory(slots=16, service_time=0.01)
    _, ids = make_batch(place, 3000)
    args = batch_args(
        place,
        sim,
        "--concurrency",
        "16",
        "--commit-every",
        "50",
        "--commit-interval",
        "0.2",
    )
    rng = random.Random(int(os.environ.get("OPENBATCH_TEST_SEED", "42")))
    for _ in range(5):
        proc = start_openbatch(args, env=place.env)
        target = committed_lines(place.uri("work")) + rng.randint(20, 400)

        def reached(target: int = target, proc: Any = proc) -> bool:
            return committed_lines(place.uri("work")) >= target or proc.poll() is not None

        try:
            wait_for(reached, 60, "progress before the kill")
            assert proc.poll() is None, "the run ended before it could be killed"
        finally:
            proc.kill()  # SIGKILL: no chance to commit anything
            proc.communicate()
    final = run_openbatch(args, env=place.env)
    assert final.returncode == 0, final.stderr
    out, err = outputs(place)
    assert_exactly_once(ids, out, err)
    assert len(out) == 3000
    result = final_result(place.uri("work"))
    assert (result.completed, result.total) == (3000, 3000)
    # The crashes re-sent some in-flight requests (at-least-once to the server) ...
    assert sim.stats()["requests"] >= 3000


def test_shards_join_to_the_same_result_as_one_run(place: Place, model_sim: SimHandle) -> None:
    _, ids = make_batch(place, 500)
    single = run_args(
        place.uri("input.jsonl"), place.uri("single.jsonl"), place.uri("w1"), [model_sim.base_url]
    )
    assert run_openbatch(single, env=place.env).returncode == 0
    procs = [
        start_openbatch(
            run_args(
                place.uri("input.jsonl"),
                place.uri("sharded.jsonl"),
                place.uri("w3"),
                [model_sim.base_url],
                "--shard",
                f"{k}/3",
            ),
            env=place.env,
        )
        for k in range(3)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    shard_totals = [progress(place.uri("w3"), k) for k in range(3)]
    assert [r.total if r else 0 for r in shard_totals] == [167, 167, 166]
    fin = run_openbatch(
        [
            "finalize",
            "--work-dir",
            place.uri("w3"),
            "--shards",
            "3",
            "--output",
            place.uri("sharded.jsonl"),
            "--errors",
            place.uri("sharded-errors.jsonl"),
        ],
        env=place.env,
    )
    assert fin.returncode == 0, fin.stderr
    one = parse_lines(read_uri(place.uri("single.jsonl")))
    three = parse_lines(read_uri(place.uri("sharded.jsonl")))
    assert_exactly_once(ids, three, [])

    def contents(lines: list[Any]) -> dict[str, Any]:
        return {
            line.custom_id: line.response.body["choices"][0]["message"]["content"] for line in lines
        }

    assert contents(one) == contents(three)
    assert orjson.loads(fin.stdout)["completed"] == 500


def test_finalize_refuses_unfinished_shards(local: Place, model_sim: SimHandle) -> None:
    make_batch(local, 30)
    shard0 = run_args(
        local.uri("input.jsonl"),
        local.uri("o.jsonl"),
        local.uri("w"),
        [model_sim.base_url],
        "--shard",
        "0/2",
    )
    assert run_openbatch(shard0).returncode == 0
    fin = run_openbatch(
        [
            *["finalize", "--work-dir", local.uri("w"), "--shards", "2"],
            *["--output", local.uri("o.jsonl"), "--errors", local.uri("e.jsonl")],
        ]
    )
    assert fin.returncode == 1 and "shard 1 of 2 has not started" in fin.stderr
    assert read_uri(local.uri("o.jsonl")) is None


def test_progress_log_lines_and_summary(local: Place, model_sim_factory: ModelSimFactory) -> None:
    sim = model_sim_factory(slots=4, service_time=0.02)
    make_batch(local, 250)
    proc = run(local, sim, "--concurrency", "4")
    assert proc.returncode == 0, proc.stderr
    progress_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("openbatch: progress")]
    assert progress_lines, proc.stderr
    assert "completed=" in progress_lines[-1] and "rate=" in progress_lines[-1]
    assert "completed: 250 requests" in proc.stderr


def test_api_key_is_sent_to_the_model_server(
    local: Place, model_sim_factory: ModelSimFactory
) -> None:
    sim = model_sim_factory(api_key="sk-local-123")
    _, ids = make_batch(local, 5)
    denied = run(local, sim, "--max-attempts", "3")
    assert denied.returncode == 0, denied.stderr  # the work is done: every line failed
    out, err = outputs(local)
    assert out == [] and len(err) == 5
    assert {line.response.status_code for line in err if line.response} == {401}
    assert sim.stats()["requests"] == 5  # a 401 is final: no retries

    for name in ("output.jsonl", "errors.jsonl"):
        Path(local.uri(name)).unlink(missing_ok=True)
    shutil.rmtree(local.uri("work"))
    proc = run(local, sim, "--api-key", "sk-local-123")
    assert proc.returncode == 0, proc.stderr
    out, err = outputs(local)
    assert_exactly_once(ids, out, err)
    assert len(out) == 5

    shutil.rmtree(local.uri("work"))
    from_env = run_openbatch(
        run_args(local.uri("input.jsonl"), local.uri("output.jsonl"), local.uri("work"),
                 [sim.base_url]),
        env={"OPENBATCH_API_KEY": "sk-local-123"},
    )  # fmt: skip
    assert from_env.returncode == 0 and len(outputs(local)[0]) == 5


def test_corrupt_work_dir_is_a_clear_error(local: Place, model_sim: SimHandle) -> None:
    make_batch(local, 20)
    write_uri(local.uri("work/shard-0/out-00000000-deadbeef.jsonl"), b"not a part header\n")
    proc = run(local, model_sim)
    assert proc.returncode == 2
    assert "work dir" in proc.stderr and "corrupt" in proc.stderr
    assert model_sim.stats()["requests"] == 0
