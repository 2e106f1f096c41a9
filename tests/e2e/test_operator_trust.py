"""Issue 8 §5-6 on the emulated cluster: long names, foreign Jobs, a frozen batch id, and
runner pods that cannot start (missing Secret, image pull failure, unschedulable).

Uses the `cluster` fixture of tests/e2e/test_operator.py (kopf operator, kubelet harness,
SeaweedFS, model simulator).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openbatch.resource import BATCH_ID_ANNOTATION
from tests.e2e.test_operator import TERMINAL, Cluster, _lines, _results
from tests.e2e.test_operator import cluster as cluster  # noqa: PLC0414  # the fixture
from tests.runner_support import assert_exactly_once

LABEL_VALUE_MAX = 63


def _condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            result: dict[str, Any] = cond
            return result
    return None


def test_a_100_character_name_completes(cluster: Cluster, tmp_path: Path) -> None:
    """Before: the Job's label carried the whole name, the API refused it (422), forever."""
    name = "long-" + "x" * 95
    assert len(name) == 100
    cluster.upload("long.jsonl", _lines(12))
    cluster.start_operator()
    cluster.apply(cluster.batchjob(name, "long.jsonl"), tmp_path)
    status = cluster.wait_phase(name, TERMINAL)["status"]
    assert status["phase"] == "Completed", status
    runner = status["runnerJobName"]
    assert len(runner) <= LABEL_VALUE_MAX and runner.endswith("-runner")
    job = cluster.kube.get("jobs", runner)
    assert job is not None
    labels = {**job["metadata"]["labels"], **job["spec"]["template"]["metadata"]["labels"]}
    assert all(len(v) <= LABEL_VALUE_MAX for v in labels.values()), labels
    out, err = _results(status)
    assert_exactly_once({f"req-{i}" for i in range(12)}, out, err)


def test_a_foreign_job_under_the_runner_name_fails_the_batch(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A Job someone else made under `<name>-runner` is never adopted."""
    foreign = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "squat-runner", "labels": {"made-by": "someone-else"}},
        "spec": {
            "suspend": True,  # the harness starts no pods for it
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "x", "image": "busybox", "command": ["true"]}],
                }
            },
        },
    }
    cluster.kube.create("jobs", foreign)
    cluster.upload("squat.jsonl", _lines(5))
    cluster.start_operator()
    cluster.apply(cluster.batchjob("squat", "squat.jsonl"), tmp_path)
    status = cluster.wait_phase("squat", TERMINAL)["status"]
    assert status["phase"] == "Failed", status
    failed = _condition({"status": status}, "Failed")
    assert failed is not None and failed["reason"] == "RunnerConflict"
    assert "squat-runner already exists and does not belong to this batch" in status["message"]
    assert "no controller owner reference" in status["message"]
    job = cluster.kube.get("jobs", "squat-runner")
    assert job is not None and job["metadata"]["labels"] == {"made-by": "someone-else"}
    assert job["spec"]["suspend"] is True
    assert cluster.kubelet.pods("squat-runner") == []
    assert cluster.sim.stats()["requests"] == 0


def test_editing_the_batch_id_annotation_after_start_changes_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The id selects the work dir: frozen into status.batchID at the first reconcile."""
    cluster.sim.configure(slots=2, service_time=0.05)
    cluster.upload("frozen.jsonl", _lines(120))
    cluster.start_operator()
    manifest = cluster.batchjob("frozen", "frozen.jsonl")
    manifest["metadata"]["annotations"] = {BATCH_ID_ANNOTATION: "batch_first"}
    cluster.apply(manifest, tmp_path)
    cluster.kube.wait_for(
        "batchjobs",
        "frozen",
        lambda o: ((o or {}).get("status") or {}).get("requestCounts", {}).get("completed", 0) > 0,
        timeout=60,
    )
    assert cluster.get("frozen")["status"]["batchID"] == "batch_first"
    cluster.kube.patch(
        "batchjobs", "frozen", {"metadata": {"annotations": {BATCH_ID_ANNOTATION: "batch_other"}}}
    )
    assert cluster.get("frozen")["metadata"]["annotations"][BATCH_ID_ANNOTATION] == "batch_other"
    status = cluster.wait_phase("frozen", TERMINAL, timeout=120)["status"]
    assert status["phase"] == "Completed", status
    assert status["batchID"] == "batch_first"
    assert status["requestCounts"] == {"total": 120, "completed": 120, "failed": 0}
    out, err = _results(status)
    assert_exactly_once({f"req-{i}" for i in range(120)}, out, err)
    client = cluster.seaweed.client()
    batches = f"batches/{cluster.kube.namespace}/"
    keys = [o.object_name for o in client.list_objects(cluster.bucket, batches, recursive=True)]
    assert keys and all(k.startswith(f"{batches}batch_first/") for k in keys), keys


START_FAILURES = {
    # case: (reason the pod shows, operator settings, harness setup)
    "missing S3 Secret": ("CreateContainerConfigError", {"s3_secret_name": "no-such-secret"}),
    "image pull failure": (
        "ErrImagePull|ImagePullBackOff",
        {"runner_image": "registry.invalid/openbatch-runner:0"},
    ),
    "unschedulable": ("Unschedulable", {"runner_cpu_request": "64", "runner_cpu_limit": "64"}),
}


@pytest.mark.parametrize("case", sorted(START_FAILURES))
def test_a_runner_that_cannot_start_shows_why_and_fails_in_time(
    cluster: Cluster, tmp_path: Path, case: str
) -> None:
    """Before: the batch stayed Validating ("runner is validating the input") until the
    deadline backstop. Now the pod's reason is a condition at once, and after the grace
    (a few minutes by default, 4 s here) the batch fails with it."""
    reasons, settings = START_FAILURES[case]
    cluster.kubelet.missing_images = ("registry.invalid/",)
    cluster.kubelet.node_allocatable = {"cpu": "4", "memory": "16Gi"}
    cluster.upload("stuck.jsonl", _lines(5))
    cluster.start_operator(runner_start_grace_seconds="4", **settings)
    cluster.apply(cluster.batchjob("stuck", "stuck.jsonl"), tmp_path)

    def shows_the_reason(obj: dict[str, Any] | None) -> bool:
        cond = _condition(obj, "RunnerStarted")
        return cond is not None and cond["status"] == "False"

    obj = cluster.kube.wait_for("batchjobs", "stuck", shows_the_reason, timeout=60)
    cond = _condition(obj, "RunnerStarted")
    assert cond is not None and cond["reason"] in reasons.split("|"), cond
    assert obj is not None and obj["status"]["phase"] == "Validating"
    assert "cannot start" in obj["status"]["message"]
    if case == "missing S3 Secret":
        assert "no-such-secret" in cond["message"]
    status = cluster.wait_phase("stuck", TERMINAL, timeout=60)["status"]
    assert status["phase"] == "Failed", status
    failed = _condition({"status": status}, "Failed")
    assert failed is not None and failed["reason"] == "CannotStart"
    assert "could not start within 4s" in status["message"]
    assert any(r in status["message"] for r in reasons.split("|")), status["message"]
    assert cluster.sim.stats()["requests"] == 0
    # Should the pod start after all, the runner finds the cancel marker and stops.
    work = f"batches/{cluster.kube.namespace}/stuck/cancel"
    client = cluster.seaweed.client()
    assert any(
        o.object_name.startswith(work)
        for o in client.list_objects(cluster.bucket, f"batches/{cluster.kube.namespace}/stuck/")
    )
