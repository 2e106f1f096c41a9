"""End to end on the emulated cluster: kubectl -> BatchJob -> operator (kopf) -> runner Job
(kubelet harness) -> runner process -> SeaweedFS -> status.

What these prove and what they cannot (no real scheduler, no CEL, no RBAC) is written down
in docs/operator.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from openbatch.resource import Phase
from tests.fakes.kubelet import KubeletHarness
from tests.fixtures.kube import KopfProcess, KubeApi, RunKopf, job_condition
from tests.fixtures.model_sim import ModelSimFactory, SimHandle
from tests.fixtures.s3 import SeaweedServer
from tests.operator_support import operator_env, prepare_namespace, wait_for_metric
from tests.runner_support import (
    REPO_ROOT,
    assert_exactly_once,
    chat_line,
    jsonl,
    llama_chat_line,
    parse_lines,
    read_uri,
    wait_for,
    write_uri,
)

MODEL = "sim-model"
TERMINAL = {p.value for p in (Phase.COMPLETED, Phase.FAILED, Phase.EXPIRED, Phase.CANCELLED)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Cluster:
    kube: KubeApi
    kubelet: KubeletHarness
    bucket: str
    sim: SimHandle
    run_kopf: RunKopf
    env: dict[str, str]
    metrics_port: int
    seaweed: SeaweedServer
    operator: KopfProcess | None = None

    def start_operator(self, **overrides: str) -> KopfProcess:
        env = {**self.env, **{f"OPENBATCH_OPERATOR_{k.upper()}": v for k, v in overrides.items()}}
        self.operator = self.run_kopf("openbatch_operator.handlers", env=env)
        return self.operator

    def upload(self, key: str, lines: list[dict[str, Any]], bucket: str | None = None) -> None:
        write_uri(f"s3://{bucket or self.bucket}/{key}", jsonl(lines))

    def batchjob(self, name: str, key: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": "openbatch.dev/v1alpha1",
            "kind": "BatchJob",
            "metadata": {"name": name, "namespace": self.kube.namespace},
            "spec": {
                "input": {"s3": {"bucket": self.bucket, "key": key}},
                "endpoint": "/v1/chat/completions",
                **spec,
            },
        }

    def apply(self, manifest: dict[str, Any], tmp: Path) -> None:
        path = tmp / f"{manifest['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        self.kube.kubectl("apply", "-n", self.kube.namespace, "-f", str(path))

    def get(self, name: str) -> dict[str, Any]:
        obj = self.kube.get("batchjobs", name)
        assert obj is not None, f"BatchJob {name} is gone"
        return obj

    def wait_phase(self, name: str, phases: set[str], timeout: float = 90) -> dict[str, Any]:
        def reached(obj: dict[str, Any] | None) -> bool:
            return ((obj or {}).get("status") or {}).get("phase") in phases

        obj = self.kube.wait_for("batchjobs", name, reached, timeout=timeout)
        assert obj is not None
        return obj

    def runner_jobs(self) -> list[str]:
        return [j for j in self.kubelet.jobs_seen() if j.endswith("-runner")]


@pytest.fixture
def cluster(  # pytest injects fixtures by name
    kube_api: KubeApi,
    kubelet: KubeletHarness,
    run_kopf: RunKopf,
    seaweed: SeaweedServer,
    s3_bucket: str,
    model_sim_factory: ModelSimFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cluster]:
    s3_env = seaweed.env()
    for key, value in s3_env.items():  # the test itself uploads inputs and reads results
        monkeypatch.setenv(key, value)
    sim = model_sim_factory(slots=8, service_time=0.01, models=[MODEL])
    prepare_namespace(kube_api, seaweed, {MODEL: [sim.base_url]})
    metrics_port = _free_port()
    env = operator_env(
        seaweed,
        s3_bucket,
        poll_interval_seconds="0.5",
        commit_interval_seconds="0.3",
        runner_grace_seconds="2",
        metrics_port=str(metrics_port),
    )
    yield Cluster(kube_api, kubelet, s3_bucket, sim, run_kopf, env, metrics_port, seaweed)


def _lines(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [chat_line(i, model=MODEL, **extra) for i in range(n)]


def _results(status: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    out = parse_lines(read_uri(status["outputURI"])) if status.get("outputURI") else []
    err = parse_lines(read_uri(status["errorURI"])) if status.get("errorURI") else []
    return out, err


def _events(kube: KubeApi, name: str) -> list[str]:
    events = kube.list_objects("events") or []
    return [
        e.get("reason", "") for e in events if (e.get("involvedObject") or {}).get("name") == name
    ]


def test_kubectl_apply_example_completes(cluster: Cluster, tmp_path: Path) -> None:
    """Scenario 1: the example a user applies, pointing straight at an S3 object."""
    example = yaml.safe_load((REPO_ROOT / "crds/examples/batchjob-s3.yaml").read_text())
    source = example["spec"]["input"]["s3"]
    if not cluster.seaweed.client().bucket_exists(source["bucket"]):
        cluster.seaweed.make_bucket(source["bucket"])  # the example's own bucket, unchanged
    cluster.upload(source["key"], _lines(120), bucket=source["bucket"])
    # Inputs must lie inside the namespace's storage root (docs/security.md): here the
    # single-tenant root is the example's bucket.
    cluster.start_operator(bucket=source["bucket"])
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(example))
    cluster.kube.kubectl("apply", "-n", cluster.kube.namespace, "-f", str(path))
    name = example["metadata"]["name"]
    obj = cluster.wait_phase(name, TERMINAL)
    status = obj["status"]
    assert status["phase"] == "Completed", status
    assert status["requestCounts"] == {"total": 120, "completed": 120, "failed": 0}
    assert status["model"] == MODEL and status["progress"] == "120/120"
    assert status["outputFileID"].startswith("file-") and status.get("errorFileID") is None
    out, err = _results(status)
    assert_exactly_once({f"req-{i}" for i in range(120)}, out, err)
    assert status["usage"]["inputTokens"] == sum(
        line.response.body["usage"]["prompt_tokens"] for line in out if line.response
    )
    for stamp in ("inProgressTime", "finalizingTime", "completedTime", "expiresTime"):
        assert status.get(stamp), stamp
    table = cluster.kube.kubectl("get", "bj", "-n", cluster.kube.namespace).stdout
    assert "Completed" in table and "120/120" in table and MODEL in table
    assert {"Validating", "Completed"} <= set(_events(cluster.kube, name))
    # The kubelet marks the Job Complete after the pod exits; the batch may read Completed
    # from the runner's record a moment before (CI once saw no condition yet).
    job = cluster.kube.wait_for(
        "jobs", f"{name}-runner", lambda j: job_condition(j, "Complete") is not None, timeout=30
    )
    assert job is not None
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    wait_for_metric(cluster.metrics_port, 'openbatch_batches{phase="Completed"} 1.0')


def test_invalid_input_fails_with_openai_errors(cluster: Cluster, tmp_path: Path) -> None:
    """Scenario 2."""
    lines = _lines(5)
    lines[2]["url"] = "/v1/embeddings"
    cluster.upload("bad.jsonl", lines)
    cluster.start_operator()
    cluster.apply(cluster.batchjob("bad", "bad.jsonl"), tmp_path)
    status = cluster.wait_phase("bad", TERMINAL)["status"]
    assert status["phase"] == "Failed"
    assert status["errors"] == [
        {
            "code": "invalid_url",
            "message": "The URL provided for this request does not match the batch endpoint.",
            "param": "url",
            "line": 3,
        }
    ]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidInput"
    assert cluster.sim.stats()["requests"] == 0
    assert "outputURI" not in status


def test_unknown_model_fails_with_model_not_found(cluster: Cluster, tmp_path: Path) -> None:
    """Scenario 9."""
    cluster.upload("unknown.jsonl", [chat_line(i, model="nope") for i in range(3)])
    cluster.start_operator()
    cluster.apply(cluster.batchjob("unknown", "unknown.jsonl"), tmp_path)
    status = cluster.wait_phase("unknown", TERMINAL)["status"]
    assert status["phase"] == "Failed"
    assert status["errors"][0]["code"] == "model_not_found"
    assert status["errors"][0]["param"] == "body.model"
    assert cluster.sim.stats()["requests"] == 0


def test_runner_failure_is_reported_with_its_reason(cluster: Cluster, tmp_path: Path) -> None:
    """Failed (RunnerFailed) with a message that says why, without reading pod logs."""
    cluster.upload("ok.jsonl", _lines(3))
    # Something other than a runner wrote into the batch's work dir: the runner refuses it.
    work = f"s3://{cluster.bucket}/batches/{cluster.kube.namespace}/lost"
    write_uri(f"{work}/shard-0/progress.json", b"not a progress record")
    cluster.start_operator()
    cluster.apply(cluster.batchjob("lost", "ok.jsonl"), tmp_path)
    status = cluster.wait_phase("lost", TERMINAL)["status"]
    assert status["phase"] == "Failed", status
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RunnerFailed"
    assert "PodFailurePolicy" in status["message"] and "exit code 2" in status["message"]
    job = cluster.kube.get("jobs", "lost-runner")
    assert job is not None and job["status"].get("failed") == 1  # exit 2: not retried


def test_a_missing_input_fails_validation_before_any_runner(
    cluster: Cluster, tmp_path: Path
) -> None:
    """As OpenAI fails a batch whose input file it cannot find (contract §4.3)."""
    cluster.start_operator()
    cluster.apply(cluster.batchjob("gone", "no-such-input.jsonl"), tmp_path)
    status = cluster.wait_phase("gone", TERMINAL)["status"]
    assert status["phase"] == "Failed", status
    (error,) = status["errors"]
    assert (error["code"], error["param"]) == ("invalid_request", "file_id")
    assert "Cannot find file s3://" in error["message"]
    assert cluster.kube.get("jobs", "gone-runner") is None


def _slow(cluster: Cluster, slots: int = 2, service: float = 0.05) -> None:
    cluster.sim.configure(slots=slots, service_time=service)


def test_cancel_while_running(cluster: Cluster, tmp_path: Path) -> None:
    """Scenario 3."""
    _slow(cluster)
    cluster.upload("cancel.jsonl", _lines(400))
    cluster.start_operator()
    cluster.apply(cluster.batchjob("cancel-me", "cancel.jsonl"), tmp_path)
    cluster.kube.wait_for(
        "batchjobs",
        "cancel-me",
        lambda o: ((o or {}).get("status") or {}).get("requestCounts", {}).get("completed", 0) > 0,
        timeout=60,
    )
    cluster.kube.kubectl(
        "patch", "bj", "cancel-me", "-n", cluster.kube.namespace, "--type=merge",
        "-p", '{"spec": {"cancel": true}}',
    )  # fmt: skip
    status = cluster.wait_phase("cancel-me", TERMINAL)["status"]
    assert status["phase"] == "Cancelled", status
    assert status.get("cancellingTime") and status.get("cancelledTime")
    out, err = _results(status)
    assert_exactly_once({f"req-{i}" for i in range(400)}, out, err)
    assert 0 < len(out) < 400
    assert {line.error.code for line in err if line.error} == {"batch_cancelled"}
    assert status["requestCounts"]["completed"] == len(out)
    assert status["requestCounts"]["failed"] == 0  # never-run lines are not failures


def test_short_completion_window_expires(cluster: Cluster, tmp_path: Path) -> None:
    """Scenario 4."""
    _slow(cluster, slots=1, service=0.05)
    cluster.upload("slow.jsonl", _lines(300))
    cluster.start_operator()
    cluster.apply(cluster.batchjob("short", "slow.jsonl", completionWindow="6s"), tmp_path)
    status = cluster.wait_phase("short", TERMINAL, timeout=120)["status"]
    assert status["phase"] == "Expired", status
    out, err = _results(status)
    assert_exactly_once({f"req-{i}" for i in range(300)}, out, err)
    assert 0 < len(out) < 300
    assert {line.error.code for line in err if line.error} == {"batch_expired"}
    assert status.get("expiredTime")


def test_runner_pod_killed_twice_resumes(cluster: Cluster, tmp_path: Path) -> None:
    """Scenario 5."""
    _slow(cluster, slots=4, service=0.02)
    cluster.upload("kill.jsonl", _lines(600))
    cluster.start_operator()
    cluster.apply(cluster.batchjob("killed", "kill.jsonl"), tmp_path)
    killed: list[str] = []
    for threshold in (100, 300):

        def reached(obj: dict[str, Any] | None, at_least: int = threshold) -> bool:
            counts = ((obj or {}).get("status") or {}).get("requestCounts") or {}
            return int(counts.get("completed", 0)) >= at_least

        obj = cluster.kube.wait_for("batchjobs", "killed", reached, timeout=60)
        assert obj is not None
        pod = cluster.kubelet.wait_for_pod_running("killed-runner", timeout=30, exclude=killed)
        cluster.kubelet.kill_pod(pod, signal.SIGKILL)
        killed.append(pod)
    status = cluster.wait_phase("killed", TERMINAL, timeout=120)["status"]
    assert status["phase"] == "Completed", status
    out, err = _results(status)
    assert_exactly_once({f"req-{i}" for i in range(600)}, out, err)
    assert len(out) == 600 and status["requestCounts"]["completed"] == 600
    job = cluster.kube.get("jobs", "killed-runner")
    assert job is not None and job["status"].get("failed", 0) >= 2
    assert cluster.runner_jobs() == ["killed-runner"]


def test_operator_killed_and_restarted_mid_run(cluster: Cluster, tmp_path: Path) -> None:
    """Scenario 6: never a second runner Job, never a lost status update."""
    _slow(cluster, slots=4, service=0.02)
    cluster.upload("op.jsonl", _lines(500))
    operator = cluster.start_operator()
    cluster.apply(cluster.batchjob("survivor", "op.jsonl"), tmp_path)
    cluster.wait_phase("survivor", {"InProgress"})
    operator.kill()
    time.sleep(0.5)  # the runner goes on without an operator for a moment; that is the point
    operator.restart()
    status = cluster.wait_phase("survivor", TERMINAL, timeout=120)["status"]
    assert status["phase"] == "Completed", status
    assert status["requestCounts"] == {"total": 500, "completed": 500, "failed": 0}
    assert cluster.runner_jobs() == ["survivor-runner"]
    assert len(cluster.kubelet.pods("survivor-runner")) == 1
    out, err = _results(status)
    assert_exactly_once({f"req-{i}" for i in range(500)}, out, err)


def test_parallelism_three_shards_one_result(cluster: Cluster, tmp_path: Path) -> None:
    """Scenario 7."""
    cluster.upload("sharded.jsonl", _lines(300))
    cluster.start_operator()
    cluster.apply(cluster.batchjob("wide", "sharded.jsonl", parallelism=3), tmp_path)
    cluster.apply(cluster.batchjob("narrow", "sharded.jsonl"), tmp_path)
    wide = cluster.wait_phase("wide", TERMINAL, timeout=120)["status"]
    narrow = cluster.wait_phase("narrow", TERMINAL, timeout=120)["status"]
    assert wide["phase"] == narrow["phase"] == "Completed", (wide, narrow)
    pods = cluster.kubelet.pods("wide-runner")
    assert len(pods) == 3
    assert cluster.kube.get("jobs", "wide-finalize") is not None
    assert wide["finalizeJobName"] == "wide-finalize"

    def contents(status: dict[str, Any]) -> dict[str, str]:
        out, err = _results(status)
        assert err == []
        return {
            line.custom_id: line.response.body["choices"][0]["message"]["content"]
            for line in out
            if line.response
        }

    assert contents(wide) == contents(narrow)
    assert len(contents(wide)) == 300
    assert wide["requestCounts"] == narrow["requestCounts"]


def test_admission_limit_queues_the_second_batch(cluster: Cluster, tmp_path: Path) -> None:
    """Scenario 8: maxConcurrentBatches 1; the second starts when the first ends."""
    _slow(cluster, slots=4, service=0.02)
    cluster.upload("first.jsonl", _lines(200))
    cluster.start_operator(max_concurrent_batches="1")
    cluster.apply(cluster.batchjob("first", "first.jsonl", priority=0), tmp_path)
    cluster.wait_phase("first", {"Validating", "InProgress"})
    cluster.apply(cluster.batchjob("second", "first.jsonl"), tmp_path)
    second = cluster.kube.wait_for(
        "batchjobs",
        "second",
        lambda o: any(
            c.get("type") == "Admitted" and c.get("reason") == "Queued"
            for c in ((o or {}).get("status") or {}).get("conditions", [])
        ),
        timeout=30,
    )
    assert second is not None and second["status"]["phase"] == "Validating"
    assert cluster.kube.get("jobs", "second-runner") is None
    first = cluster.wait_phase("first", TERMINAL, timeout=120)
    done = cluster.wait_phase("second", TERMINAL, timeout=120)
    assert first["status"]["phase"] == done["status"]["phase"] == "Completed"
    pod = cluster.kubelet.pods("second-runner")[0]
    started = cluster.kubelet.process_started_at(pod.name)
    finished = first["status"]["completedTime"]
    finished_at = time.mktime(time.strptime(finished, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert started >= finished_at - 1  # completedTime has whole seconds


def test_batch_against_llama_cpp(cluster: Cluster, tmp_path: Path, llama_server: Any) -> None:
    """The operator's path end to end against real model-server software (llama.cpp)."""
    cluster.upload("llama.jsonl", [llama_chat_line(i) for i in range(16)])
    # llama.cpp listens on loopback, which a spec's modelServer.url may never name
    # (docs/security.md): the platform routes to it instead.
    routes = {"models": {MODEL: [cluster.sim.base_url], "tiny": [llama_server.base_url]}}
    cluster.kube.patch(
        "configmaps", "openbatch-routing", {"data": {"models.json": json.dumps(routes)}}
    )
    cluster.start_operator()
    manifest = cluster.batchjob(
        "llama",
        "llama.jsonl",
        concurrency={"maxInFlight": 4, "requestTimeoutSeconds": 60},
    )
    cluster.apply(manifest, tmp_path)
    status = cluster.wait_phase("llama", TERMINAL, timeout=120)["status"]
    assert status["phase"] == "Completed", status
    assert status["requestCounts"] == {"total": 16, "completed": 16, "failed": 0}
    assert status["usage"]["outputTokens"] == 16 * 8
    out, err = _results(status)
    assert_exactly_once({f"q{i}" for i in range(16)}, out, err)
    assert all(line.response and line.response.body["object"] == "chat.completion" for line in out)


def test_the_operator_entrypoint_runs_batches(cluster: Cluster, tmp_path: Path) -> None:
    """`python -m openbatch_operator` (the image's entrypoint), not only `kopf run`."""
    port = _free_port()
    env = {
        **os.environ,
        **cluster.env,
        "KUBECONFIG": str(cluster.kube.kubeconfig),
        "OPENBATCH_OPERATOR_NAMESPACES": cluster.kube.namespace,
        "OPENBATCH_OPERATOR_LIVENESS": f"http://127.0.0.1:{port}/healthz",
    }
    log = (tmp_path / "operator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "openbatch_operator"],
        env=env,
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

        wait_for(live, 30, "the operator's liveness endpoint")
        assert proc.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
        cluster.upload("entry.jsonl", _lines(20))
        cluster.apply(cluster.batchjob("entry", "entry.jsonl"), tmp_path)
        status = cluster.wait_phase("entry", TERMINAL)["status"]
        assert status["phase"] == "Completed", status
        assert status["requestCounts"]["completed"] == 20
        # Issue 7, item 18: the configuration at start-up and every phase change, at INFO.
        text = (tmp_path / "operator.log").read_text()
        assert "openbatch operator settings:" in text and "single-tenant mode" in text
        changed = rf"BatchJob {cluster.kube.namespace}/entry: \w+ -> Completed: completed"
        assert re.search(changed, text), text[-3000:]
        assert cluster.seaweed.secret_key not in text  # no secret values, ever
        assert "Handler 'on_change' succeeded" not in text  # kopf's chatter stays below INFO
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp_path / "operator.log").read_text()[-3000:]


def test_batch_that_finished_while_the_operator_was_down(cluster: Cluster, tmp_path: Path) -> None:
    """Issue 7, item 18: the runner finishes while no operator runs; after the restart the
    batch still gets its Validated condition and the Event of its phase change."""
    cluster.upload("down.jsonl", _lines(30))
    operator = cluster.start_operator()
    cluster.apply(cluster.batchjob("down", "down.jsonl"), tmp_path)
    cluster.kube.wait_for("jobs", "down-runner", lambda j: j is not None, timeout=60)
    # The operator writes the status right after creating the Job: on a loaded machine a kill
    # between the two would leave no status at all, which is not the case under test.
    cluster.wait_phase("down", {"Validating"}, timeout=60)
    operator.kill()
    cluster.kube.wait_for(
        "jobs", "down-runner", lambda j: job_condition(j, "Complete") is not None, timeout=60
    )
    assert cluster.get("down")["status"]["phase"] == "Validating"  # nobody saw it run
    operator.start()
    operator.wait_ready()
    status = cluster.wait_phase("down", TERMINAL)["status"]
    assert status["phase"] == "Completed", status
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    assert validated["status"] == "True" and validated["reason"] == "Valid"
    assert status.get("inProgressTime") and status.get("finalizingTime")
    assert "Completed" in _events(cluster.kube, "down")


def test_queued_batches_do_not_read_object_storage(cluster: Cluster, tmp_path: Path) -> None:
    """Issue 8, capacity: a queued batch's reconcile makes no object-storage request. The
    operator's own storage access points at a closed port here: the admitted batch's
    reconciles fail on storage, yet the queued one still gets its Queued condition (before
    the fix every reconcile read the progress records first, and failed)."""
    _slow(cluster, slots=1, service=0.05)
    cluster.upload("q.jsonl", _lines(50))
    env = {
        **cluster.env,
        "OPENBATCH_OPERATOR_MAX_CONCURRENT_BATCHES": "1",
        "OPENBATCH_S3_ENDPOINT": f"http://127.0.0.1:{_free_port()}",
        "OPENBATCH_S3_RETRY_SECONDS": "0",
    }
    cluster.operator = cluster.run_kopf("openbatch_operator.handlers", env=env)
    cluster.apply(cluster.batchjob("holder", "q.jsonl"), tmp_path)
    cluster.kube.wait_for("jobs", "holder-runner", lambda j: j is not None, timeout=60)
    cluster.apply(cluster.batchjob("waiting", "q.jsonl"), tmp_path)
    obj = cluster.kube.wait_for(
        "batchjobs",
        "waiting",
        lambda o: any(
            c.get("type") == "Admitted" and c.get("reason") == "Queued"
            for c in ((o or {}).get("status") or {}).get("conditions", [])
        ),
        timeout=30,
    )
    assert obj is not None and obj["status"]["phase"] == "Validating"
    assert cluster.kube.get("jobs", "waiting-runner") is None
    assert "StorageUnavailable" in cluster.operator.logs() or "reading s3://" in (
        cluster.operator.logs()
    )  # the admitted one did try, and could not
