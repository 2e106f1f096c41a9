"""`openbatch serve` killed with SIGKILL in the middle of a batch and started again resumes
the batch: every custom_id exactly once in the results."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from tests.fixtures.model_sim import ModelSimFactory
from tests.fixtures.shim import ServeFactory
from tests.runner_support import chat_line, jsonl
from tests.shim.conftest import client_for, wait_status


def test_sigkill_mid_batch_then_restart_completes_exactly_once(
    serve_factory: ServeFactory, model_sim_factory: ModelSimFactory, tmp_path: Path
) -> None:
    sim = model_sim_factory(slots=4, service_time=0.05)
    data = tmp_path / "data"
    serve = serve_factory(data, models={"sim-model": sim.base_url})
    client = client_for(serve)
    n = 600
    file_id = client.files.create(
        file=("in.jsonl", jsonl(chat_line(i) for i in range(n))), purpose="batch"
    ).id
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while True:
        counts = client.batches.retrieve(batch.id).request_counts
        if counts is not None and counts.completed >= 100:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    serve.kill()
    served_before = sim.stats()["requests"]
    assert served_before < n  # really killed in the middle

    serve = serve_factory(data, models={"sim-model": sim.base_url})
    client = client_for(serve)
    done = wait_status(client, batch.id, timeout=120)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (n, n)
    assert done.output_file_id is not None and done.error_file_id is None
    lines = client.files.content(done.output_file_id).read().splitlines()
    ids = [orjson.loads(line)["custom_id"] for line in lines]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(n))  # each exactly once
