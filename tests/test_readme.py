"""The README's commands actually run (docs are part of the feature)."""

from __future__ import annotations

import re
import shlex
import shutil
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
