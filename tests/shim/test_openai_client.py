"""The official `openai` client against `openbatch serve` (local backend), nothing changed but
`base_url`: the whole lifecycle, pagination, cancel, errors, idempotency and tenants."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import orjson

from openbatch.lines import OutputLine
from tests.runner_support import chat_line, jsonl
from tests.shim.conftest import TERMINAL, Api, client_for, wait_status


def test_full_lifecycle_with_the_official_client(api: Api, tmp_path: Path) -> None:
    client = client_for(api)
    path = tmp_path / "batchinput.jsonl"
    path.write_bytes(jsonl(chat_line(i) for i in range(25)))
    with path.open("rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.filename == "batchinput.jsonl"
    assert uploaded.bytes == path.stat().st_size and uploaded.status == "processed"
    assert uploaded.expires_at == uploaded.created_at + 30 * 86400
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "validating" and batch.expires_at == batch.created_at + 86400
    assert batch.request_counts is not None and batch.request_counts.total == 0
    done = wait_status(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (25, 25)
    assert done.usage is not None and done.usage.total_tokens > 0
    assert done.model == "sim-model" and done.metadata == {"job": "nightly"}
    assert done.error_file_id is None and done.output_file_id is not None
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    output = client.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output"
    assert output.filename == f"{batch.id}_output.jsonl"
    content = client.files.content(done.output_file_id).read()
    lines = [OutputLine.model_validate(orjson.loads(x)) for x in content.splitlines()]
    assert sorted(line.custom_id for line in lines) == sorted(f"req-{i}" for i in range(25))
    assert all(line.response is not None and line.response.status_code == 200 for line in lines)
    listed = [f.id for f in client.files.list(purpose="batch_output")]
    assert listed == [done.output_file_id]


async def test_async_client_lifecycle(api: Api) -> None:
    client = openai.AsyncOpenAI(base_url=api.base_url, api_key="k", max_retries=0)
    uploaded = await client.files.create(
        file=("in.jsonl", jsonl(chat_line(i) for i in range(3))), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while batch.status not in TERMINAL:
        assert time.monotonic() < deadline
        batch = await client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id
    content = await client.files.content(batch.output_file_id)
    assert len(content.read().splitlines()) == 3
    await client.close()
