"""The runner and finalize Job manifests (pure builders)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from openbatch.lifecycle import child_name
from openbatch.locations import locations_of
from openbatch.resource import BatchJob
from openbatch.tenancy import TenancyConfig, resolve_tenant
from openbatch_operator.port import job_state
from openbatch_operator.resources import build_finalize_job, build_runner_job, model_server_url
from openbatch_operator.settings import OperatorSettings

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(bucket="ob", runner_image="registry.local/runner:1")
TENANT = resolve_tenant(TenancyConfig(), "team-a", default_storage=SETTINGS.default_storage)


def job(**spec: Any) -> BatchJob:
    return BatchJob.model_validate(
        {
            "metadata": {
                "name": "nightly",
                "namespace": "team-a",
                "uid": "uid-1",
                "creationTimestamp": "2026-11-01T11:00:00Z",
            },
            "spec": {
                "input": {"fileID": "file-abc"},
                "endpoint": "/v1/embeddings",
                **spec,
            },
        }
    )


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = manifest["spec"]["template"]["spec"]["containers"][0]
    return c


def test_runner_job_is_locked_down() -> None:
    j = job()
    m = build_runner_job(
        j, locations_of(j, "s3://ob"), SETTINGS, NOW + timedelta(hours=1), NOW, TENANT
    )
    assert m["metadata"]["name"] == "nightly-runner"
    assert m["metadata"]["ownerReferences"][0] == {
        "apiVersion": "openbatch.dev/v1alpha1",
        "kind": "BatchJob",
        "name": "nightly",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    pod = m["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(m)
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["image"] == "registry.local/runner:1"
    assert set(c["resources"]) == {"requests", "limits"}
    env = {e["name"]: e for e in c["env"]}
    assert env["OPENBATCH_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "openbatch-s3"
    assert "value" not in env["OPENBATCH_S3_ACCESS_KEY"]  # never inlined
    spec = m["spec"]
    assert spec["backoffLimit"] == SETTINGS.runner_backoff_limit
    assert spec["activeDeadlineSeconds"] == 3600 + SETTINGS.deadline_backstop_seconds
    assert spec["ttlSecondsAfterFinished"] == SETTINGS.runner_ttl_seconds
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, 3]
    assert "completionMode" not in spec


def test_runner_args_point_at_the_batch_locations() -> None:
    j = job(concurrency={"maxInFlight": 7, "adaptive": True, "maxAttempts": 2})
    where = locations_of(j, "s3://ob")
    args = container(build_runner_job(j, where, SETTINGS, NOW, NOW, TENANT))["args"]
    assert args[:2] == ["run", "s3://ob/files/team-a/file-abc"]
    assert args[args.index("--work-dir") + 1] == where.work_uri
    assert where.work_uri.startswith("s3://ob/batches/team-a/")
    assert args[args.index("--endpoint") + 1] == "/v1/embeddings"
    assert args[args.index("--concurrency") + 1] == "7" and "--adaptive" in args
    assert args[args.index("--deadline") + 1] == "2026-11-01T12:00:00Z"
    assert args[args.index("--models") + 1] == "/etc/openbatch/routing/models.json"
    assert "--shard" not in args


def test_model_server_override() -> None:
    j = job(modelServer={"serviceRef": {"name": "vllm", "port": 8000}})
    assert model_server_url(j, SETTINGS) == "http://vllm.team-a.svc.cluster.local:8000/v1"
    m = build_runner_job(j, locations_of(j, "s3://ob"), SETTINGS, NOW, NOW, TENANT)
    args = container(m)["args"]
    assert args[args.index("--base-url") + 1].startswith("http://vllm.team-a")
    assert "--models" not in args
    mounts = [v["name"] for v in m["spec"]["template"]["spec"]["volumes"]]
    assert mounts == ["tmp"]  # no routing table needed


def test_sharded_batch_is_an_indexed_job() -> None:
    j = job(parallelism=3)
    m = build_runner_job(j, locations_of(j, "s3://ob"), SETTINGS, NOW, NOW, TENANT)
    assert m["spec"]["completionMode"] == "Indexed"
    assert m["spec"]["completions"] == 3 == m["spec"]["parallelism"]
    args = container(m)["args"]
    assert args[args.index("--shard") + 1] == "$(JOB_COMPLETION_INDEX)/3"
    fin = build_finalize_job(j, locations_of(j, "s3://ob"), SETTINGS, TENANT)
    assert fin["metadata"]["name"] == "nightly-finalize"
    fargs = container(fin)["args"]
    assert fargs[:2] == ["finalize", "--work-dir"] and fargs[fargs.index("--shards") + 1] == "3"


def test_locations_are_deterministic_and_distinct() -> None:
    a, b = locations_of(job(), "s3://ob"), locations_of(job(), "s3://ob")
    assert a == b and a.output_file_id != a.error_file_id
    assert a.output_uri == f"s3://ob/files/team-a/{a.output_file_id}"
    s3 = job(input={"s3": {"bucket": "raw", "key": "x/in.jsonl"}})
    assert locations_of(s3, "s3://ob").input_uri == "s3://raw/x/in.jsonl"


def test_long_names_stay_valid() -> None:
    name = child_name("b" * 70, "finalize")
    assert len(name) <= 63 and name.endswith("-finalize")
    assert child_name("b" * 70, "finalize") == name
    assert child_name("short", "runner") == "short-runner"


def test_locations_take_a_root() -> None:
    """The same batch under an S3 prefix and under a local directory (the local backend)."""
    j = job()
    s3 = locations_of(j, "s3://ob/tenants/a/")
    assert s3.input_uri == "s3://ob/tenants/a/files/team-a/file-abc"
    assert s3.work_uri.startswith("s3://ob/tenants/a/batches/team-a/")
    local = locations_of(j, "/srv/openbatch")
    assert local.input_uri == "/srv/openbatch/files/team-a/file-abc"
    assert local.output_uri == f"/srv/openbatch/files/team-a/{local.output_file_id}"
    assert (local.output_file_id, local.error_file_id) == (s3.output_file_id, s3.error_file_id)


def test_job_conditions_become_a_neutral_runner_state() -> None:
    def failed(reason: str) -> dict[str, Any]:
        condition = {"type": "Failed", "status": "True", "reason": reason, "message": "m"}
        return {"status": {"conditions": [condition]}}

    killed = job_state(failed("DeadlineExceeded"))
    assert killed.failed_for_good and killed.stopped_at_deadline
    crashed = job_state(failed("BackoffLimitExceeded"))
    assert crashed.failed_for_good and not crashed.stopped_at_deadline
    assert crashed.reason == "BackoffLimitExceeded" and crashed.message == "m"
    done = job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    assert done.complete and not done.failed_for_good
