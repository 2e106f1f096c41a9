"""The runner survives an S3 outage of a few seconds in the middle of a run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.fixtures.model_sim import ModelSimFactory, SimHandle
from tests.fixtures.s3 import SeaweedServer, unique_bucket_name
from tests.runner_support import (
    assert_exactly_once,
    chat_line,
    committed_lines,
    final_result,
    jsonl,
    parse_lines,
    read_uri,
    run_args,
    start_openbatch,
    wait_for,
    write_uri,
)

OUTAGE_SECONDS = 3.0  # the outage itself is what is being tested, so its length is fixed


@dataclass
class OutageRun:
    root: str
    args: list[str]
    env: dict[str, str]
    sim: SimHandle


@pytest.fixture
def outage_run(
    seaweed_outage: SeaweedServer,
    model_sim_factory: ModelSimFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[int], OutageRun]:
    """A batch of n lines on the test's own SeaweedFS, committed every 100 lines or 0.2 s."""

    def make(n: int) -> OutageRun:
        env = seaweed_outage.env()
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        root = f"s3://{seaweed_outage.make_bucket(unique_bucket_name())}/outage"
        sim = model_sim_factory(slots=8, service_time=0.01)
        write_uri(f"{root}/input.jsonl", jsonl(chat_line(i) for i in range(n)))
        args = run_args(
            f"{root}/input.jsonl",
            f"{root}/output.jsonl",
            f"{root}/work",
            [sim.base_url],
            *["--concurrency", "8", "--commit-every", "100", "--commit-interval", "0.2"],
        )
        return OutageRun(root, args, env, sim)

    return make


def test_s3_outage_mid_run(
    outage_run: Callable[[int], OutageRun], seaweed_outage: SeaweedServer
) -> None:
    n = 2500
    run = outage_run(n)
    root, args, env, sim = run.root, run.args, run.env, run.sim
    proc = start_openbatch(args, env=env)
    wait_for(lambda: committed_lines(f"{root}/work") >= 300, 60, "300 committed lines")
    seaweed_outage.stop()
    down_at = time.monotonic()
    time.sleep(OUTAGE_SECONDS)
    requests_during_outage = sim.stats()["requests"]
    seaweed_outage.start()
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert time.monotonic() - down_at >= OUTAGE_SECONDS
    out = parse_lines(read_uri(f"{root}/output.jsonl"))
    err = parse_lines(read_uri(f"{root}/errors.jsonl"))
    assert_exactly_once({f"req-{i}" for i in range(n)}, out, err)
    assert len(out) == n
    assert final_result(f"{root}/work").completed == n
    # The outage held the run up; it did not finish without storage.
    assert requests_during_outage < n


def test_storage_gone_for_good_exits_1_and_the_rerun_resumes(
    outage_run: Callable[[int], OutageRun], seaweed_outage: SeaweedServer
) -> None:
    """Past its retry budget the runner gives up with exit 1 (a Job retry resumes it)
    instead of hanging; nothing committed before the outage is lost."""
    n = 3000
    run = outage_run(n)
    root, args, env = run.root, run.args, run.env
    short_retries = {**env, "OPENBATCH_S3_RETRY_SECONDS": "2"}
    proc = start_openbatch(args, env=short_retries)
    wait_for(lambda: committed_lines(f"{root}/work") >= 300, 60, "300 committed lines")
    seaweed_outage.stop()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "storage error" in stderr
    seaweed_outage.start()
    again = start_openbatch(args, env=env)
    _, stderr = again.communicate(timeout=180)
    assert again.returncode == 0, stderr
    assert "resuming shard 0" in stderr
    out = parse_lines(read_uri(f"{root}/output.jsonl"))
    assert_exactly_once({f"req-{i}" for i in range(n)}, out, [])
