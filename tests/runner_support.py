"""Helpers for tests that drive the real `openbatch run` process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from openbatch.lines import OutputLine
from openbatch.progress import FinalResult, ProgressRecord
from openbatch.storage import ObjectNotFound, open_uri

REPO_ROOT = Path(__file__).resolve().parents[1]


def openbatch_command() -> list[str]:
    """The installed console script (what users run), next to this interpreter."""
    script = Path(sys.executable).parent / "openbatch"
    found = str(script) if script.exists() else shutil.which("openbatch")
    assert found, "the openbatch console script is not installed (pip install -e .[dev])"
    return [found]


def chat_line(i: int, model: str = "sim-model", **extra_body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": f"say hello to number {i}"}],
            "max_tokens": 4,
            **extra_body,
        },
    }


def llama_chat_line(i: int, max_tokens: int = 8) -> dict[str, Any]:
    """A request for the tiny llama.cpp model (it ignores `model`; max_tokens fixes timing)."""
    return {
        "custom_id": f"q{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "tiny",
            "messages": [{"role": "user", "content": f"count to {i}"}],
            "max_tokens": max_tokens,
        },
    }


def jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def write_uri(uri: str, data: bytes) -> None:
    store, key = open_uri(uri)
    store.put_bytes(key, data)


def read_uri(uri: str) -> bytes | None:
    store, key = open_uri(uri)
    try:
        return store.read_bytes(key)
    except ObjectNotFound:
        return None


def parse_lines(data: bytes | None) -> list[OutputLine]:
    if not data:
        return []
    return [OutputLine.model_validate_json(line) for line in data.splitlines() if line.strip()]


def progress(work_dir: str, shard: int = 0) -> ProgressRecord | None:
    data = read_uri(f"{work_dir.rstrip('/')}/shard-{shard}/progress.json")
    return ProgressRecord.model_validate_json(data) if data else None


def final_result(work_dir: str) -> FinalResult:
    data = read_uri(f"{work_dir.rstrip('/')}/result.json")
    assert data is not None, f"no result.json in {work_dir}"
    return FinalResult.model_validate_json(data)


def run_args(
    input_uri: str, output: str, work_dir: str, base_urls: list[str], *extra: str
) -> list[str]:
    """`run` arguments with fast retries; errors go next to the output as `errors.jsonl`."""
    args = [
        "run",
        input_uri,
        "--output",
        output,
        "--errors",
        output.rsplit("/", 1)[0] + "/errors.jsonl",
        "--work-dir",
        work_dir,
        "--progress",
        "log",
        "--log-interval",
        "1",
        "--retry-base-delay",
        "0.05",
        "--retry-max-delay",
        "0.5",
    ]
    for url in base_urls:
        args += ["--base-url", url]
    return args + list(extra)


def run_openbatch(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        openbatch_command() + args,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_openbatch(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        openbatch_command() + args,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def committed_lines(work_dir: str) -> int:
    record = progress(work_dir)
    return 0 if record is None else record.completed + record.failed


def assert_exactly_once(
    expected_ids: set[str], output: list[OutputLine], errors: list[OutputLine]
) -> None:
    ids = [line.custom_id for line in output] + [line.custom_id for line in errors]
    assert len(ids) == len(set(ids)), "a custom_id appears more than once"
    missing, extra = sorted(expected_ids - set(ids))[:5], sorted(set(ids) - expected_ids)[:5]
    assert set(ids) == expected_ids, f"missing {missing}, extra {extra}"
