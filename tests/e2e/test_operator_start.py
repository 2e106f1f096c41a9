"""`python -m openbatch_operator` before kopf starts (issue 7, items 17 and 18): help, one
clear line when the cluster or the configuration is unusable, and what it logs at INFO."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.kube import KubeApi, write_kubeconfig
from tests.fixtures.s3 import SeaweedServer
from tests.runner_support import wait_for


def _run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "OPENBATCH_"))}
    return subprocess.run(
        [sys.executable, "-m", "openbatch_operator", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def test_help_prints_help_and_starts_nothing(tmp_path: Path) -> None:
    result = _run({"HOME": str(tmp_path)}, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m openbatch_operator")
    for name in ("OPENBATCH_OPERATOR_TENANTS_FILE", "OPENBATCH_OPERATOR_NAMESPACES", "KUBECONFIG"):
        assert name in result.stdout
    assert result.stderr == ""


def test_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    result = _run({"HOME": str(tmp_path)}, "--bogus")
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr


@pytest.mark.parametrize("case", ["no kubeconfig", "unreachable server"])
def test_without_cluster_access_it_exits_with_one_clear_line(tmp_path: Path, case: str) -> None:
    env = {"HOME": str(tmp_path)}
    if case == "no kubeconfig":
        env["KUBECONFIG"] = str(tmp_path / "missing.yaml")
    else:
        url = f"http://127.0.0.1:{_closed_port()}"
        env["KUBECONFIG"] = str(write_kubeconfig(tmp_path / "kubeconfig", url))
    result = _run(env)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    expected = "no Kubernetes credentials" if case == "no kubeconfig" else "cannot reach"
    assert lines[0].startswith("openbatch-operator: ") and expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("tenants.json", "{not json", "invalid configuration"),
        ("tenants.json", json.dumps({"tenants": [{"namespace": "a"}]}), "storage"),
        ("missing.json", None, "No such file"),
    ],
)
def test_a_bad_tenants_file_is_one_clear_line(
    tmp_path: Path, name: str, content: str | None, expected: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    result = _run({"HOME": str(tmp_path), "OPENBATCH_OPERATOR_TENANTS_FILE": str(path)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_without_the_crd_it_exits_with_one_clear_line(tmp_path: Path) -> None:
    """kopf would otherwise start and silently watch nothing (issue 8, section 6)."""
    from tests.fakes.kube_emulator import EmulatorThread

    with EmulatorThread((), crds=()) as emulator:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url)
        result = _run({"HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "openbatch.dev/v1alpha1" in lines[0]
    assert "install the CRD batchjobs.openbatch.dev" in lines[0]


@pytest.mark.parametrize("case", ["fine", "missing bucket", "unreachable storage"])
def test_start_up_warns_about_storage_it_cannot_use(
    tmp_path: Path, case: str, kube_api: KubeApi, seaweed: SeaweedServer, s3_bucket: str
) -> None:
    """Storage problems are one warning line each at start-up; the operator still starts
    (storage may come up later) and answers its liveness probe."""
    port = _closed_port()
    env = {
        "HOME": str(tmp_path),
        "KUBECONFIG": str(kube_api.kubeconfig),
        "OPENBATCH_OPERATOR_NAMESPACES": kube_api.namespace,
        "OPENBATCH_OPERATOR_LIVENESS": f"http://127.0.0.1:{port}/healthz",
        "OPENBATCH_OPERATOR_METRICS_PORT": "0",
        "OPENBATCH_OPERATOR_BUCKET": s3_bucket,
        **seaweed.env(),
    }
    if case == "missing bucket":
        env["OPENBATCH_OPERATOR_BUCKET"] = "no-such-bucket-here"
    if case == "unreachable storage":
        env["OPENBATCH_S3_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "OPENBATCH_"))}
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "openbatch_operator"],
            env={**clean, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def live() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return True
            except OSError:
                return proc.poll() is not None  # stop waiting: the assert below says why

        wait_for(live, 40, "the operator's liveness endpoint")
        assert proc.poll() is None, log_path.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    warnings = [
        line
        for line in log_path.read_text().splitlines()
        if line.startswith("openbatch-operator: warning:")
    ]
    if case == "fine":
        assert warnings == [], warnings
    elif case == "missing bucket":
        assert len(warnings) == 1 and "bucket 'no-such-bucket-here'" in warnings[0], warnings
        assert "does not exist" in warnings[0]
    else:
        assert len(warnings) == 1 and "cannot reach object storage" in warnings[0], warnings
