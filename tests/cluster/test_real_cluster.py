"""What the emulator cannot prove, checked on a real API server (opt-in: --run-cluster).

The CRD's structural schema, defaults, CEL rules and `kubectl explain` only run in a real
kube-apiserver. Run against a throwaway cluster, e.g.
`kind create cluster && .venv/bin/pytest --run-cluster tests/cluster`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD = REPO_ROOT / "crds" / "batchjobs.openbatch.dev.yaml"

pytestmark = pytest.mark.cluster


def kubectl(
    *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "kubectl"
    argv = [str(exe if exe.exists() else shutil.which("kubectl") or "kubectl"), *args]
    proc = subprocess.run(
        argv, capture_output=True, text=True, input=stdin, timeout=120, check=False,
        env=os.environ.copy(),
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    kubectl("apply", "--server-side", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/batchjobs.openbatch.dev", "--timeout=60s")
    name = f"openbatch-test-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def manifest(name: str, **spec: object) -> str:
    body = {
        "apiVersion": "openbatch.dev/v1alpha1",
        "kind": "BatchJob",
        "metadata": {"name": name},
        "spec": {
            "input": {"s3": {"bucket": "openbatch", "key": "in.jsonl"}},
            "endpoint": "/v1/chat/completions",
            **spec,
        },
    }
    return yaml.safe_dump(body)


def test_every_example_is_accepted_and_defaulted(namespace: str) -> None:
    for example in sorted((REPO_ROOT / "crds" / "examples").glob("*.yaml")):
        kubectl("apply", "-n", namespace, "--dry-run=server", "-f", str(example))
    kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest("defaults"))
    got = yaml.safe_load(kubectl("get", "bj", "defaults", "-n", namespace, "-o", "yaml").stdout)
    assert got["spec"]["completionWindow"] == "24h"
    assert got["spec"]["parallelism"] == 1 and got["spec"]["cancel"] is False
    assert got["spec"]["concurrency"]["maxInFlight"] == 64


def test_explain_is_useful() -> None:
    out = kubectl("explain", "bj.spec").stdout
    for field in ("input", "endpoint", "completionWindow", "parallelism", "cancel"):
        assert field in out
    assert "DESCRIPTION" in out or "FIELDS" in out


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"endpoint": "/v1/images"}, "endpoint"),
        ({"parallelism": 0}, "parallelism"),
        ({"input": {"fileID": "file-a", "s3": {"bucket": "abc", "key": "k"}}}, "input"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ],
)
def test_schema_rejects_bad_specs(namespace: str, spec: dict[str, object], fragment: str) -> None:
    proc = kubectl("apply", "-n", namespace, "-f", "-", check=False, stdin=manifest("bad", **spec))
    assert proc.returncode != 0 and fragment in proc.stderr


def test_cel_keeps_the_spec_immutable_except_cancel(namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest("immutable"))
    change = kubectl(
        "patch", "bj", "immutable", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"endpoint": "/v1/embeddings"}}', check=False,
    )  # fmt: skip
    assert change.returncode != 0
    kubectl(
        "patch", "bj", "immutable", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"cancel": true}}',
    )  # fmt: skip
    undo = kubectl(
        "patch", "bj", "immutable", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"cancel": false}}', check=False,
    )  # fmt: skip
    assert undo.returncode != 0
