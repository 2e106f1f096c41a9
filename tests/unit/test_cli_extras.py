"""A command whose extra is missing names the extra to install instead of a traceback.

The real console script runs in a subprocess whose `sitecustomize` hides chosen top-level
modules behind a meta-path finder, as if their distributions were not installed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.runner_support import openbatch_command

_BLOCKER = """
import importlib.abc, os, sys

_HIDDEN = frozenset(filter(None, os.environ.get("OPENBATCH_TEST_HIDE", "").split(",")))


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


sys.meta_path.insert(0, _Hide())
"""


def run_hiding(tmp_path: Path, hidden: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["OPENBATCH_TEST_HIDE"] = ",".join(hidden)
    return subprocess.run(
        [*openbatch_command(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("hidden", "argv", "extra"),
    [
        (["fastapi"], ["serve", "--port", "0"], "shim"),
        (["uvicorn"], ["serve", "--port", "0", "--model", "m=http://127.0.0.1:9/v1"], "shim"),
        (["openai"], ["submit", "x.jsonl"], "client"),
        (["openbatch_runner"], ["run", "--help"], "runner"),
        (["openbatch_runner"], ["finalize", "--help"], "runner"),
    ],
)
def test_a_missing_extra_is_named(
    tmp_path: Path, hidden: list[str], argv: list[str], extra: str
) -> None:
    done = run_hiding(tmp_path, hidden, *argv)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr == (
        f"openbatch {argv[0]} needs the {extra} extra (missing module {hidden[0]!r}): "
        f"pip install 'openbatch-api[{extra}]'\n"
    )


def test_the_blocker_really_hides_the_module(tmp_path: Path) -> None:
    # Without the hiding the same command works: the message above is not a coincidence.
    assert run_hiding(tmp_path, [], "run", "--help").returncode == 0
    assert run_hiding(tmp_path, ["fastapi"], "version").returncode == 0


def test_a_broken_core_is_not_blamed_on_an_extra(tmp_path: Path) -> None:
    # orjson is a core dependency: no extra brings it, so the error is not disguised.
    done = run_hiding(tmp_path, ["orjson"], "serve", "--port", "0")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "No module named 'orjson'" in done.stderr
    assert "extra" not in done.stderr
