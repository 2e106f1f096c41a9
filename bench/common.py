"""Shared pieces of the benchmarks: input generation and measuring one child process.

Benchmarks print ratios measured in one run and peak RSS; they never assert times.
CPU time and peak RSS come from `os.wait4` on the measured process alone, so the simulator
sharing the machine does not blur them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # `tests.fixtures.model_sim` starts the simulator


@dataclass
class Measured:
    returncode: int
    wall: float
    user: float
    sys: float
    max_rss_mb: float
    stderr: str

    @property
    def cpu(self) -> float:
        return self.user + self.sys


def write_chat_input(path: Path, n: int, content_bytes: int = 40, model: str = "bench") -> int:
    """N chat lines; `content_bytes` pads the prompt (≈1 KB lines for the memory benchmark)."""
    pad = "x" * max(0, content_bytes - 20)
    with path.open("wb") as f:
        for i in range(n):
            line = {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": f"request {i} {pad}"}],
                    "max_tokens": 8,
                },
            }
            f.write(orjson.dumps(line) + b"\n")
    return path.stat().st_size


def measure(
    argv: list[str],
    env: dict[str, str] | None = None,
    during: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> Measured:
    """Run `argv` to completion and return its own CPU time and peak RSS; `during`, if
    given, runs in this process meanwhile (e.g. to stop and restart a model server)."""
    err_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-stderr-{os.getpid()}.txt"
    with err_path.open("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        if during is not None:
            during(proc)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read()
    err_path.unlink(missing_ok=True)
    return Measured(
        returncode=proc.returncode,
        wall=wall,
        user=usage.ru_utime,
        sys=usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024,
        stderr=text,
    )


def openbatch_argv(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "openbatch"), *args]


@dataclass(frozen=True)
class RunFiles:
    """Where one benchmarked `openbatch run` writes, named after its case."""

    output: Path
    errors: Path
    work_dir: Path

    @classmethod
    def in_dir(cls, work: Path, name: str) -> RunFiles:
        slug = "".join(c if c.isalnum() else "-" for c in name)
        return cls(work / f"out-{slug}.jsonl", work / f"err-{slug}.jsonl", work / f"w-{slug}")


def run_argv(input_path: Path, base_url: str, files: RunFiles, *options: str) -> list[str]:
    """`openbatch run INPUT` against one server, without a progress display."""
    return openbatch_argv(
        "run",
        str(input_path),
        *["--base-url", base_url, "--progress", "none"],
        *["--output", str(files.output), "--errors", str(files.errors)],
        *["--work-dir", str(files.work_dir)],
        *options,
    )


def run_supports(flag: str) -> bool:
    """Whether this build's `openbatch run` takes `flag` (a benchmark written ahead of a
    feature prints "not available" for its rows instead of failing)."""
    result = subprocess.run(
        openbatch_argv("run", "--help"), capture_output=True, text=True, check=True
    )
    return flag in result.stdout.split()


def count_lines(path: Path) -> int:
    """Lines of a result file (0 when it was not written: nothing of that kind)."""
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def error_codes(path: Path) -> dict[str, int]:
    """How many error lines have each `error.code` (or HTTP status)."""
    counts: dict[str, int] = {}
    if not path.exists():
        return counts
    with path.open("rb") as f:
        for raw in f:
            line = orjson.loads(raw)
            error = line.get("error")
            key = error["code"] if error else f"http_{line['response']['status_code']}"
            counts[key] = counts.get(key, 0) + 1
    return counts
