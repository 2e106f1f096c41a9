"""`openbatch serve` against real model-server software: llama.cpp's server, tiny model,
the official client end to end (upload -> batch -> completed -> download)."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.fixtures.llama import LlamaHandle
from tests.fixtures.shim import ServeFactory
from tests.runner_support import jsonl, llama_chat_line
from tests.shim.conftest import client_for, wait_status


def test_serve_runs_a_batch_on_llama_cpp(
    serve_factory: ServeFactory, llama_server: LlamaHandle, tmp_path: Path
) -> None:
    serve = serve_factory(tmp_path / "data", models={"tiny": llama_server.base_url})
    client = client_for(serve)
    n = 12
    file_id = client.files.create(
        file=("in.jsonl", jsonl(llama_chat_line(i) for i in range(n))), purpose="batch"
    ).id
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_status(client, batch.id, timeout=240)
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.completed == n
    assert done.usage is not None and done.usage.output_tokens > 0
    assert done.output_file_id is not None
    lines = [orjson.loads(x) for x in client.files.content(done.output_file_id).read().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(f"q{i}" for i in range(n))
    for line in lines:
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
