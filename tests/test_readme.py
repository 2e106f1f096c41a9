"""The README's commands actually run (docs are part of the feature)."""

from __future__ import annotations

import re
import shlex
import shutil
import time
from pathlib import Path

from tests.fixtures.model_sim import SimHandle
from tests.runner_support import REPO_ROOT, parse_lines, run_openbatch

README = (REPO_ROOT / "README.md").read_text()


def _commands(prefix: str) -> list[list[str]]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL):
        for raw in block.splitlines():
            command = raw.split("#", 1)[0].strip()
            if command.startswith(prefix):
                out.append(shlex.split(command))
    return out


def test_readme_install_and_test_commands_are_what_ci_runs() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    install = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'"
    assert install in README and install in ci
    assert ".venv/bin/pytest" in README and "\n.venv/bin/pytest\n" in ci


def test_quickstart_runs(tmp_path: Path, model_sim: SimHandle) -> None:
    (quickstart,) = [c for c in _commands("openbatch run examples/") if "--base-url" in c]
    shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")
    args = [model_sim.base_url if a == "http://localhost:8000/v1" else a for a in quickstart[1:]]
    args = [
        str(tmp_path / a) if a.startswith("examples/") or a == "output.jsonl" else a for a in args
    ]
    proc = run_openbatch(args)
    assert proc.returncode == 0, proc.stderr
    lines = parse_lines((tmp_path / "output.jsonl").read_bytes())
    assert sorted(line.custom_id for line in lines) == [f"request-{i}" for i in range(1, 5)]
    assert not (tmp_path / "output.errors.jsonl").exists()  # no failures, no error file


def test_sharded_example_runs(tmp_path: Path, model_sim: SimHandle) -> None:
    shard_cmds = _commands("openbatch run in.jsonl")
    finalize_cmds = _commands("openbatch finalize")
    assert len(shard_cmds) == 1 and len(finalize_cmds) == 1
    shutil.copy(REPO_ROOT / "examples" / "batch-input.jsonl", tmp_path / "in.jsonl")

    def local(arg: str) -> str:
        if arg.startswith(("in.", "out.")):
            return str(tmp_path / arg)
        return model_sim.base_url if arg == "http://vllm:8000/v1" else arg

    for k in range(3):
        args = [local(a) for a in shard_cmds[0][1:]]
        args[args.index("0/3")] = f"{k}/3"
        proc = run_openbatch(args)
        assert proc.returncode == 0, proc.stderr
    proc = run_openbatch([local(a) for a in finalize_cmds[0][1:]])
    assert proc.returncode == 0, proc.stderr
    assert len(parse_lines((tmp_path / "out.jsonl").read_bytes())) == 4


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_serve_quickstart_with_the_openai_client_and_curl(tmp_path: Path) -> None:
    """The README's `openbatch serve` quickstart, as written: no model given (the built-in
    simulator), the Python snippet, then the curl calls."""
    import json
    import subprocess
    import sys

    from tests.fixtures.shim import start_serve

    (serve_cmd,) = _commands("openbatch serve")
    assert serve_cmd == ["openbatch", "serve"]
    shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")
    serve = start_serve(tmp_path / "data")
    try:
        (snippet,) = _python_blocks()
        code = snippet.replace("http://127.0.0.1:8000/v1", serve.base_url)
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("completed") and '"custom_id":"request-4"' in proc.stdout

        ids: dict[str, str] = {"http://127.0.0.1:8000/v1": serve.base_url}
        for command in _commands("curl"):
            if any("OUTPUT_FILE_ID" in a for a in command):
                ids["OUTPUT_FILE_ID"] = _wait_output_file(serve.base_url, ids["BATCH_ID"])
            argv = [_substitute(a, ids) for a in command]
            proc = subprocess.run(
                argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
            )
            assert proc.returncode == 0, (argv, proc.stderr)
            if proc.stdout.startswith("{"):
                answer = json.loads(proc.stdout)
                assert "error" not in answer, answer
                if answer["object"] == "file":
                    ids.setdefault("file-ID", answer["id"])
                elif answer["object"] == "batch":
                    ids["BATCH_ID"] = answer["id"]
        lines = parse_lines((tmp_path / "output.jsonl").read_bytes())
        assert sorted(line.custom_id for line in lines) == [f"request-{i}" for i in range(1, 5)]
    finally:
        serve.stop()


def _substitute(arg: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        arg = arg.replace(placeholder, value)
    return arg


def _wait_output_file(base_url: str, batch_id: str) -> str:
    import json
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(f"{base_url}/batches/{batch_id}", timeout=10) as resp:  # noqa: S310
            batch = json.loads(resp.read())
        if batch["status"] == "completed":
            output: str = batch["output_file_id"]
            return output
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
