"""The runner against real model-server software: llama.cpp's server with a tiny model."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.fixtures.llama import LlamaHandle
from tests.runner_support import (
    assert_exactly_once,
    final_result,
    jsonl,
    llama_chat_line,
    parse_lines,
    read_uri,
    run_args,
    run_openbatch,
    write_uri,
)


def test_chat_batch_against_llama_cpp(tmp_path: Path, llama_server: LlamaHandle) -> None:
    n = 24
    write_uri(str(tmp_path / "in.jsonl"), jsonl(llama_chat_line(i) for i in range(n)))
    args = run_args(
        str(tmp_path / "in.jsonl"),
        str(tmp_path / "out.jsonl"),
        str(tmp_path / "work"),
        [llama_server.base_url],
        "--concurrency",
        "4",
        "--request-timeout",
        "60",
    )
    proc = run_openbatch(args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = parse_lines(read_uri(str(tmp_path / "out.jsonl")))
    assert_exactly_once({f"q{i}" for i in range(n)}, out, [])
    for line in out:
        assert line.response is not None and line.response.status_code == 200
        body = line.response.body
        assert body["object"] == "chat.completion"
        assert body["usage"]["completion_tokens"] == 8
    result = final_result(str(tmp_path / "work"))
    assert result.usage.output_tokens == 8 * n
    assert result.usage.input_tokens == sum(
        line.response.body["usage"]["prompt_tokens"] for line in out if line.response
    )


def test_embeddings_batch_against_llama_cpp(
    tmp_path: Path, llama_embed_server: LlamaHandle
) -> None:
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "tiny", "input": f"sentence number {i}"},
        }
        for i in range(10)
    ]
    write_uri(str(tmp_path / "in.jsonl"), jsonl(lines))
    args = run_args(
        str(tmp_path / "in.jsonl"),
        str(tmp_path / "out.jsonl"),
        str(tmp_path / "work"),
        [llama_embed_server.root_url],
        "--endpoint",
        "/v1/embeddings",
        "--request-timeout",
        "60",
    )
    proc = run_openbatch(args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = parse_lines(read_uri(str(tmp_path / "out.jsonl")))
    assert len(out) == 10
    for line in out:
        assert line.response is not None
        data = line.response.body["data"]
        assert len(data[0]["embedding"]) > 0
    assert final_result(str(tmp_path / "work")).usage.input_tokens > 0
    assert orjson.loads(read_uri(str(tmp_path / "work/result.json")) or b"{}")["state"] == (
        "completed"
    )
