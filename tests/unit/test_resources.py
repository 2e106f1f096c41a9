"""The runner and finalize Job manifests (pure builders)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from openbatch.lifecycle import child_name
from openbatch.locations import locations_of
from openbatch.resource import BatchJob
from openbatch.routing import parse_routing_table
from openbatch.runner_args import api_key_env
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


# ------------------------------------------------------------------ tenancy (docs/security.md)


def _env(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(manifest)["env"]}


def test_runner_holds_only_its_namespace_credentials_secret() -> None:
    from openbatch.tenancy import parse_tenancy

    config = parse_tenancy(
        b'{"tenants": [{"namespace": "team-a", "storage": {"bucket": "team-a", '
        b'"prefix": "ob", "credentialsSecret": "team-a-s3"}}]}'
    )
    tenant = resolve_tenant(config, "team-a", default_storage=None)
    j = job()
    where = locations_of(j, tenant.root)
    for manifest in (
        build_runner_job(j, where, SETTINGS, NOW, NOW, tenant),
        build_finalize_job(j, where, SETTINGS, tenant),
    ):
        env = _env(manifest)
        refs = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in env.values()
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert refs == {"team-a-s3"}
        assert env["OPENBATCH_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "accessKey"
    assert container(build_runner_job(j, where, SETTINGS, NOW, NOW, tenant))["args"][1] == (
        "s3://team-a/ob/files/team-a/file-abc"
    )


ROUTING = parse_routing_table(
    b'{"models": {"big": {"urls": ["http://vllm-a/v1", "http://vllm-b/v1"], '
    b'"apiKeySecret": {"name": "vllm-key", "key": "token"}}, "open": ["http://open/v1"]}}'
)


def test_routed_runner_gets_each_entry_key_next_to_its_urls_only() -> None:
    j = job()
    env = _env(build_runner_job(j, locations_of(j, "s3://ob"), SETTINGS, NOW, NOW, TENANT, ROUTING))
    assert "OPENBATCH_API_KEY" not in env
    for url in ("http://vllm-a/v1", "http://vllm-b/v1"):
        ref = env[api_key_env(url)]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "vllm-key", "key": "token", "optional": True}
    assert api_key_env("http://open/v1") not in env


def test_a_spec_target_gets_only_the_spec_key_never_a_routing_key() -> None:
    platform = SETTINGS.model_copy(update={"model_server_api_key_secret": "platform-key"})
    plain = job(modelServer={"serviceRef": {"name": "mine", "port": 8000}})
    env = _env(
        build_runner_job(plain, locations_of(plain, "s3://ob"), platform, NOW, NOW, TENANT, ROUTING)
    )
    assert not [n for n in env if n.startswith("OPENBATCH_API_KEY")]
    keyed = job(
        modelServer={
            "serviceRef": {"name": "mine", "port": 8000},
            "apiKeySecretRef": {"name": "my-key", "key": "k"},
        }
    )
    url = model_server_url(keyed, SETTINGS)
    assert url is not None
    env = _env(
        build_runner_job(keyed, locations_of(keyed, "s3://ob"), platform, NOW, NOW, TENANT, ROUTING)
    )
    keys = {n: e for n, e in env.items() if n.startswith("OPENBATCH_API_KEY")}
    assert keys == {
        api_key_env(url): {
            "name": api_key_env(url),
            "valueFrom": {"secretKeyRef": {"name": "my-key", "key": "k"}},
        }
    }


def test_platform_key_only_goes_to_routed_entries_without_their_own() -> None:
    platform = SETTINGS.model_copy(update={"model_server_api_key_secret": "platform-key"})
    j = job()
    env = _env(build_runner_job(j, locations_of(j, "s3://ob"), platform, NOW, NOW, TENANT, ROUTING))
    assert env[api_key_env("http://open/v1")]["valueFrom"]["secretKeyRef"]["name"] == "platform-key"
    assert env[api_key_env("http://vllm-a/v1")]["valueFrom"]["secretKeyRef"]["name"] == "vllm-key"


def test_the_runner_maps_per_url_key_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from openbatch_runner.cli import parse_run_args

    monkeypatch.setenv(api_key_env("http://mine:8000/v1"), "tenant-token")
    monkeypatch.setenv("OPENBATCH_API_KEY", "general")
    cfg = parse_run_args(["in.jsonl", "--base-url", "http://mine:8000/v1"])
    assert cfg.key_for(["http://mine:8000/v1"]) == "tenant-token"
    other = parse_run_args(["in.jsonl", "--base-url", "http://other:8000/v1"])
    assert other.key_for(["http://other:8000/v1"]) == "general"  # people: the general key
