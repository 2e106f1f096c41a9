"""The README's and docs' remaining examples, run or checked as written (tests/test_readme.py
runs the quickstarts; tests/chart/test_install_doc.py the install guide; tests/unit/test_crd.py
the BatchJob of docs/operator.md)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from openbatch.tenancy import parse_tenancy, resolve_tenant
from tests.docs_support import block_with, blocks, shell_lines
from tests.fixtures.model_sim import SimHandle
from tests.fixtures.s3 import SeaweedServer
from tests.runner_support import (
    REPO_ROOT,
    openbatch_command,
    parse_lines,
    run_openbatch,
)

EXAMPLE = REPO_ROOT / "examples" / "batch-input.jsonl"
EXAMPLE_IDS = [f"request-{i}" for i in range(1, 5)]


def test_the_readme_install_line_names_this_distribution_and_its_extra() -> None:
    block = block_with("README.md", "pip install 'openbatch-api")
    (line,) = [ln for ln in shell_lines(block) if "pip" in ln]
    requirement = shlex.split(line)[-1]
    name, _, extra = requirement.partition("[")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert name == project["name"] == "openbatch-api"
    assert extra.rstrip("]") in project["optional-dependencies"]
    assert "openbatch" in project["scripts"]


def test_the_readme_s3_example_runs(seaweed: SeaweedServer, model_sim: SimHandle) -> None:
    export, run = shell_lines(block_with("README.md", "openbatch run s3://", "bash"))
    names = [a.split("=", 1)[0] for a in shlex.split(export)[1:]]
    env = seaweed.env()
    assert sorted(names) == sorted(env)  # the doc sets exactly what the runner reads
    args = shlex.split(run)
    bucket = args[2].removeprefix("s3://").split("/", 1)[0]
    if bucket not in {b.name for b in seaweed.client().list_buckets()}:
        seaweed.make_bucket(bucket)
    seaweed.client().fput_object(bucket, "in.jsonl", str(EXAMPLE))
    base = args.index("--base-url") + 1
    args[base] = model_sim.base_url
    proc = run_openbatch(args[1:], env=env)
    assert proc.returncode == 0, proc.stderr
    out_bucket, _, out_key = args[args.index("--output") + 1].removeprefix("s3://").partition("/")
    output = seaweed.client().get_object(out_bucket, out_key).read()
    assert sorted(line.custom_id for line in parse_lines(output)) == EXAMPLE_IDS


def test_the_readme_layout_lists_what_is_there() -> None:
    listed = [
        line.split()[0] for line in blocks("README.md", "")[-1].splitlines() if line[:1].strip()
    ]
    assert listed and all(name.endswith("/") for name in listed)
    for name in listed:
        assert (REPO_ROOT / name).is_dir(), name
    # Every tracked top-level folder is explained (the quickstart's examples/ in its place).
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    folders = {path.split("/")[0] for path in tracked if "/" in path and path[0] != "."}
    assert folders <= {name.split("/")[0] for name in listed} | {"examples"}


def test_the_runner_docs_first_command_runs(tmp_path: Path, model_sim: SimHandle) -> None:
    (line,) = shell_lines(blocks("docs/runner.md")[0])
    args = shlex.split(line)
    assert args[:3] == ["openbatch", "run", "INPUT"]
    args[2] = str(EXAMPLE)
    args[args.index("--base-url") + 1] = model_sim.base_url
    args[args.index("--output") + 1] = str(tmp_path / "output.jsonl")
    proc = run_openbatch(args[1:])
    assert proc.returncode == 0, proc.stderr
    got = parse_lines((tmp_path / "output.jsonl").read_bytes())
    assert sorted(line.custom_id for line in got) == EXAMPLE_IDS


def test_the_simulator_trio_runs(tmp_path: Path) -> None:
    """docs/runner.md "Trying it on the simulator": the simulator, the interactive load and a
    polite batch beside it, as written (a free port, and a second of load instead of 60)."""
    sim_line, load_line, run_line = shell_lines(
        block_with("docs/runner.md", "openbatch sim --mode continuous")
    )
    sim_args = shlex.split(sim_line)
    assert sim_args[:2] == ["openbatch", "sim"]
    log = tmp_path / "sim.log"
    with log.open("wb") as err:
        sim = subprocess.Popen(
            [*openbatch_command(), *sim_args[1:], "--port", "0", "--exit-on-stdin-eof"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert sim.stdout is not None
        ready = sim.stdout.readline().decode()  # READY, or "" when it exited
        assert ready.startswith("READY "), log.read_text()
        base = ready.split()[1] + "/v1"
        load_args = shlex.split(load_line.rstrip("&").strip())
        assert load_args[:3] == ["python", "-m", "openbatch_sim.load"]
        load_args[3] = base
        load_args[load_args.index("--duration") + 1] = "1"
        load = subprocess.run(
            [sys.executable, *load_args[1:]], capture_output=True, text=True, check=True
        )
        summary = json.loads(load.stdout)
        assert summary["ok"] == summary["sent"] > 0 and summary["ttft_p99"] > 0
        run_args = shlex.split(run_line)
        assert "--polite" in run_args
        run_args[2] = str(EXAMPLE)
        run_args[run_args.index("--base-url") + 1] = base
        proc = run_openbatch([*run_args[1:], "--output", str(tmp_path / "out.jsonl")])
        assert proc.returncode == 0, proc.stderr
        assert "its window follows its vllm metrics" in proc.stderr
    finally:
        sim.kill()
        sim.wait(10)


def test_the_security_docs_tenants_file_parses_as_described() -> None:
    config = parse_tenancy(block_with("docs/security.md", '"tenants"', "json").encode())
    team = resolve_tenant(config, "team-a", default_storage=None)
    assert (team.bucket, team.prefix, team.root) == ("team-a", "openbatch", "s3://team-a/openbatch")
    # The tenant's caps merge field by field over the defaults' (maxInFlight 256 wins).
    assert team.caps.max_in_flight == 256 and team.caps.max_running_batches == 4
    assert team.allowed_model_server_urls == ("*.team-a.svc.cluster.local",)
