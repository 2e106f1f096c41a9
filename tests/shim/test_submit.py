"""`openbatch submit` (the console script, in a subprocess) against `openbatch serve`."""

from __future__ import annotations

import io
import os
import socket
import subprocess
from pathlib import Path

import openai
import pytest

from openbatch_cli.submit import Progress, Snapshot, SubmitExit
from tests.fixtures.model_sim import SimHandle
from tests.fixtures.shim import ServeFactory, ServeHandle
from tests.runner_support import chat_line, jsonl, openbatch_command, parse_lines


@pytest.fixture
def serve(serve_factory: ServeFactory, model_sim: SimHandle, tmp_path: Path) -> ServeHandle:
    return serve_factory(tmp_path / "data", models={"sim-model": model_sim.base_url})


def submit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    full_env.update(env or {})
    return subprocess.run(
        [*openbatch_command(), "submit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def test_submit_waits_and_downloads_output_and_errors(serve: ServeHandle, tmp_path: Path) -> None:
    lines = [chat_line(i) for i in range(8)]
    lines += [chat_line(i, x_sim={"fault": "400"}) for i in range(8, 10)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl(lines))
    out_dir = tmp_path / "results"
    done = submit(
        str(path),
        "--base-url",
        serve.base_url,
        "--wait",
        "--output-dir",
        str(out_dir),
        "--poll-interval",
        "0.2",
        "--metadata",
        "job=nightly",
    )
    assert done.returncode == SubmitExit.OK, done.stderr
    batch_id, *paths = done.stdout.split()
    output = out_dir / f"{batch_id}_output.jsonl"
    errors = out_dir / f"{batch_id}_error.jsonl"
    assert paths == [str(output), str(errors)]
    assert sorted(x.custom_id for x in parse_lines(output.read_bytes())) == [
        f"req-{i}" for i in range(8)
    ]
    failed = parse_lines(errors.read_bytes())
    assert sorted(x.custom_id for x in failed) == ["req-8", "req-9"]
    assert all(x.response is not None and x.response.status_code == 400 for x in failed)
    assert not list(out_dir.glob("*.partial"))
    # Not a terminal: progress as log lines, ending in the final state.
    assert f"batch {batch_id} completed: 10/10 done, 2 failed" in done.stderr
    assert "\r" not in done.stderr
    batch = openai.OpenAI(base_url=serve.base_url, api_key="x").batches.retrieve(batch_id)
    assert batch.metadata == {"job": "nightly"} and batch.endpoint == "/v1/chat/completions"


def test_submit_without_wait_prints_the_batch_id_and_takes_the_key_from_the_env(
    serve_factory: ServeFactory, model_sim: SimHandle, tmp_path: Path
) -> None:
    serve = serve_factory(
        tmp_path / "data",
        models={"sim-model": model_sim.base_url},
        api_keys={"sk-alice": "alice"},
    )
    path = tmp_path / "embed.jsonl"
    line = {
        "custom_id": "e1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "sim-model", "input": "hello"},
    }
    path.write_bytes(jsonl([line]))
    done = submit(str(path), env={"OPENAI_BASE_URL": serve.base_url, "OPENAI_API_KEY": "sk-alice"})
    assert done.returncode == SubmitExit.OK, done.stderr
    batch_id = done.stdout.strip()
    client = openai.OpenAI(base_url=serve.base_url, api_key="sk-alice")
    # The endpoint came from the first line's url.
    assert client.batches.retrieve(batch_id).endpoint == "/v1/embeddings"
    wrong = submit(str(path), env={"OPENAI_BASE_URL": serve.base_url, "OPENAI_API_KEY": "bad"})
    assert wrong.returncode == SubmitExit.REJECTED
    assert "401: Incorrect API key provided." in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_a_batch_that_fails_validation_exits_1_with_its_errors(
    serve: ServeHandle, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl([chat_line(0)]) + b"{not json\n")
    done = submit(
        str(path), "--base-url", serve.base_url, "--wait", "--output-dir", str(tmp_path / "o")
    )
    assert done.returncode == SubmitExit.BATCH_NOT_COMPLETED, done.stderr
    assert "failed" in done.stderr
    assert "invalid_json_line" in done.stderr and "(line 2)" in done.stderr


def test_the_server_rejecting_the_batch_exits_4(serve: ServeHandle, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl([chat_line(0)]))
    done = submit(str(path), "--base-url", serve.base_url, "--completion-window", "1h")
    assert done.returncode == SubmitExit.REJECTED, done.stderr
    assert "the server rejected the request: 400: " in done.stderr
    assert "completion_window" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_server_exits_3(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl([chat_line(0)]))
    done = submit(str(path), "--base-url", f"http://127.0.0.1:{port}/v1")
    assert done.returncode == SubmitExit.UNREACHABLE, done.stderr
    assert f"cannot reach http://127.0.0.1:{port}/v1" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_input_file_exits_2(tmp_path: Path) -> None:
    done = submit(str(tmp_path / "nope.jsonl"))
    assert done.returncode == SubmitExit.USAGE
    assert "nope.jsonl: no such file" in done.stderr and "Traceback" not in done.stderr


def test_help_documents_every_exit_code() -> None:
    done = submit("--help")
    assert done.returncode == 0
    for code in SubmitExit:
        assert f"  {int(code)} " in done.stdout, code


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_redrawn_in_place_on_a_terminal() -> None:
    stream = _Terminal()
    progress = Progress(stream, "batch_1")
    progress.update(Snapshot("in_progress", total=10, completed=0, failed=0))
    progress.update(Snapshot("in_progress", total=10, completed=4, failed=1))
    progress.update(Snapshot("completed", total=10, completed=9, failed=1))
    progress.close()
    text = stream.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 3 and text.endswith("\n")
    assert frames[1].startswith("[" + "#" * 15 + "." * 15 + "] in_progress: 5/10 done, 1 failed")
    assert frames[2].startswith("[" + "#" * 30 + "] completed: 10/10 done, 1 failed")


def test_progress_logs_changes_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream, "batch_1")
    progress.update(Snapshot("validating", total=0, completed=0, failed=0))
    progress.update(Snapshot("validating", total=0, completed=0, failed=0))
    progress.update(Snapshot("in_progress", total=10, completed=1, failed=0))
    progress.update(Snapshot("in_progress", total=10, completed=2, failed=0))  # too soon
    progress.update(Snapshot("completed", total=10, completed=10, failed=0))
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "batch batch_1 validating",
        "batch batch_1 in_progress",
        "batch batch_1 completed",
    ]
    assert all("\x1b" not in line for line in lines)
