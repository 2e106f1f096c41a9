"""Table tests of the tenancy model (openbatch.tenancy), the URL policy, the per-URL keys,
shard shares and fair admission: every point of docs/security.md that is pure logic."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from openbatch.admission import QueueEntry, admission_order, slots_view
from openbatch.launch import ModelTarget, runner_args_for, shard_share
from openbatch.lifecycle import Observed, RunnerState, observes_storage, reconcile
from openbatch.locations import locations_of
from openbatch.progress import FinalResult, RunState
from openbatch.resource import BatchJob, ConditionStatus, ConditionType, Phase
from openbatch.routing import parse_routing_table
from openbatch.runner_args import api_key_env, parse_run_argv
from openbatch.tenancy import (
    DefaultStorage,
    TenancyConfig,
    UnknownTenant,
    caps_refusal,
    effective_max_in_flight,
    input_refusal,
    parse_tenancy,
    preflight,
    resolve_tenant,
    tenancy_for,
)
from openbatch.url_policy import always_refused, check_direct_url
from openbatch.wire import BatchUsage

NOW = datetime(2026, 11, 1, 12, 5, tzinfo=UTC)
TENANTS: dict[str, Any] = {
    "tenants": [
        {
            "namespace": "team-a",
            "storage": {"bucket": "team-a", "prefix": "openbatch", "credentialsSecret": "a-s3"},
            "caps": {"maxInFlight": 256, "maxParallelism": 4, "maxPriority": 10},
            "allowedModelServerURLs": ["*.team-a.svc.cluster.local"],
        },
        {
            "namespace": "team-b",
            "storage": {"bucket": "team-b", "credentialsSecret": "b-s3"},
        },
    ],
    "defaults": {"caps": {"maxInFlight": 64, "maxRunningBatches": 3}},
}
CONFIG = parse_tenancy(json.dumps(TENANTS).encode())
DEFAULT_ROOT = DefaultStorage("shared", "ob", "openbatch-s3")


def job(namespace: str = "team-a", **spec: Any) -> BatchJob:
    return BatchJob.model_validate(
        {
            "metadata": {
                "name": "b1",
                "namespace": namespace,
                "uid": "u1",
                "generation": 1,
                "creationTimestamp": "2026-11-01T12:00:00Z",
            },
            "spec": {
                "input": {"s3": {"bucket": "team-a", "key": "openbatch/in.jsonl"}},
                "endpoint": "/v1/chat/completions",
                **spec,
            },
        }
    )


# ------------------------------------------------------------------ the file


def test_the_contract_file_parses_and_resolves() -> None:
    a = resolve_tenant(CONFIG, "team-a", default_storage=None)
    assert a.root == "s3://team-a/openbatch"
    assert a.credentials_secret == "a-s3"  # noqa: S105  # a Secret name  # noqa: S105
    assert (a.caps.max_in_flight, a.caps.max_parallelism, a.caps.max_priority) == (256, 4, 10)
    assert a.caps.max_running_batches == 3  # from the defaults, field by field
    assert a.allowed_model_server_urls == ("*.team-a.svc.cluster.local",)
    b = resolve_tenant(CONFIG, "team-b", default_storage=None, default_allowed_urls=["x.y"])
    assert b.root == "s3://team-b" and b.caps.max_in_flight == 64
    assert b.allowed_model_server_urls == ("x.y",)  # neither the tenant nor defaults say


@pytest.mark.parametrize(
    "edit",
    [
        {"tenants": [TENANTS["tenants"][0], TENANTS["tenants"][0]]},  # listed twice
        {"tenants": [{"namespace": "x", "storage": {"bucket": "x"}}]},  # no credentials
        {
            "tenants": [
                {
                    **TENANTS["tenants"][1],
                    "storage": {**TENANTS["tenants"][1]["storage"], "prefix": "a/../b"},
                }
            ]
        },
        {"tenants": [{**TENANTS["tenants"][1], "cap": {}}]},  # a typo is not ignored
        {"defaults": {"caps": {"maxParallelism": 65}}},
    ],
)
def test_bad_tenants_files_are_refused(edit: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_tenancy(json.dumps({**TENANTS, **edit}).encode())


def test_unlisted_namespace_is_refused_unless_default_root_is_enabled() -> None:
    with pytest.raises(UnknownTenant, match="team-c"):
        resolve_tenant(CONFIG, "team-c", default_storage=None)
    c = resolve_tenant(CONFIG, "team-c", default_storage=DEFAULT_ROOT)
    assert c.root == "s3://shared/ob" and not c.listed
    assert c.credentials_secret == "openbatch-s3"  # noqa: S105  # a Secret name  # noqa: S105
    single = resolve_tenant(TenancyConfig(), "any", default_storage=DEFAULT_ROOT)
    assert single.allowed_model_server_urls == () and single.caps.max_in_flight is None


@pytest.mark.parametrize(
    ("config", "allow", "namespace", "root", "refused"),
    [
        (None, False, "anyone", "s3://shared/ob", False),  # single-tenant mode
        (CONFIG, False, "team-a", "s3://team-a/openbatch", False),
        (CONFIG, False, "team-c", "s3://shared/ob", True),  # refused; root only for names
        (CONFIG, True, "team-c", "s3://shared/ob", False),
    ],
)
def test_tenancy_for_a_backend(
    config: TenancyConfig | None, allow: bool, namespace: str, root: str, refused: bool
) -> None:
    tenant, refusal = tenancy_for(
        config, namespace, default_storage=DEFAULT_ROOT, allow_unlisted=allow
    )
    assert tenant.root == root and (refusal is not None) == refused


# ------------------------------------------------------------------ storage


@pytest.mark.parametrize(
    ("bucket", "key", "refused"),
    [
        ("team-a", "openbatch/in.jsonl", False),
        ("team-a", "openbatch/deep/er/in.jsonl", False),
        ("team-b", "openbatch/in.jsonl", True),  # another tenant's bucket
        ("team-a", "other/in.jsonl", True),  # outside the prefix
        ("team-a", "openbatchX/in.jsonl", True),  # a prefix of the prefix is not inside
        ("team-a", "openbatch/../other/in.jsonl", True),
        ("team-a", "openbatch//in.jsonl", True),
        ("team-a", "openbatch/./in.jsonl", True),
    ],
)
def test_inputs_must_lie_inside_the_namespace_root(bucket: str, key: str, refused: bool) -> None:
    tenant = resolve_tenant(CONFIG, "team-a", default_storage=None)
    j = job(input={"s3": {"bucket": bucket, "key": key}})
    assert (input_refusal(j, tenant) is not None) == refused


def test_uploaded_files_and_work_dirs_live_under_the_tenant_root() -> None:
    tenant = resolve_tenant(CONFIG, "team-a", default_storage=None)
    j = job(input={"fileID": "file-abc"})
    assert input_refusal(j, tenant) is None
    where = locations_of(j, tenant.root)
    assert where.input_uri == "s3://team-a/openbatch/files/team-a/file-abc"
    assert where.work_uri.startswith("s3://team-a/openbatch/batches/team-a/")
    assert where.output_uri.startswith("s3://team-a/openbatch/files/team-a/")


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest",
        "http://[fd00:ec2::254]/v1",
        "http://metadata.google.internal/v1",
        "http://METADATA.google.internal./v1",
        "http://127.0.0.1:8000/v1",
        "http://localhost:8000/v1",
        "http://x.localhost/v1",
        "http://[::1]:8000/v1",
        "http://[::ffff:127.0.0.1]/v1",
        "http://[fe80::1]/v1",
        "http://0.0.0.0:8000/v1",
        "http://2130706433/v1",
        "http://0x7f.1/v1",
        "http://017700000001/v1",
        "http://user:pw@vllm.team-a.svc.cluster.local/v1",
        "http://vllm.team-a.svc.cluster.local@evil/v1",
        "ftp://vllm/v1",
    ],
)
def test_always_refused_whatever_is_allowed(url: str) -> None:
    assert always_refused(url) is not None
    assert check_direct_url(url, ["*"]) is not None


@pytest.mark.parametrize(
    ("url", "patterns", "ok"),
    [
        ("http://vllm.team-a.svc.cluster.local:8000/v1", [], False),  # default: none
        ("http://vllm.team-a.svc.cluster.local:8000/v1", ["*.team-a.svc.cluster.local"], True),
        ("http://VLLM.Team-A.svc.cluster.local/v1", ["*.team-a.svc.cluster.local"], True),
        ("http://vllm.team-b.svc.cluster.local/v1", ["*.team-a.svc.cluster.local"], False),
        ("http://kubernetes.default.svc/v1", ["*.team-a.svc.cluster.local"], False),
        ("http://team-a.svc.cluster.local.evil.com/v1", ["*.team-a.svc.cluster.local"], False),
        ("http://10.1.2.3:8000/v1", ["10.1.2.3"], True),
        ("https://api.example.com/v1", ["*"], True),
    ],
)
def test_direct_urls_need_an_allowed_host(url: str, patterns: list[str], ok: bool) -> None:
    assert (check_direct_url(url, patterns) is None) == ok


def test_preflight_covers_url_and_caps() -> None:
    a = resolve_tenant(CONFIG, "team-a", default_storage=None)
    assert preflight(job(), a) is None
    metadata = job(modelServer={"url": "http://169.254.169.254/v1"})
    assert "metadata" in (preflight(metadata, a) or "")
    other = job(modelServer={"url": "http://vllm.team-b.svc.cluster.local/v1"})
    assert "not among" in (preflight(other, a) or "")
    assert preflight(job(modelServer={"serviceRef": {"name": "vllm", "port": 80}}), a) is None


@pytest.mark.parametrize(
    ("spec", "refused"),
    [
        ({"concurrency": {"maxInFlight": 256}, "parallelism": 4, "priority": 10}, None),
        ({"concurrency": {"maxInFlight": 4096}}, None),  # clamped, not refused
        ({"parallelism": 5}, "parallelism 5 exceeds"),
        ({"priority": 11}, "priority 11 exceeds"),
        ({"priority": -1000}, None),
        ({"concurrency": {"maxInFlight": 2}, "parallelism": 3}, "maxInFlight of 2"),
    ],
)
def test_parallelism_and_priority_caps_are_refused(
    spec: dict[str, Any], refused: str | None
) -> None:
    a = resolve_tenant(CONFIG, "team-a", default_storage=None)
    reason = caps_refusal(job(**spec), a.caps)
    assert (reason is None) == (refused is None)
    if refused:
        assert refused in (reason or "")


def test_max_in_flight_is_clamped_to_the_cap() -> None:
    a = resolve_tenant(CONFIG, "team-a", default_storage=None)
    assert effective_max_in_flight(job(concurrency={"maxInFlight": 4096}), a.caps) == 256
    assert effective_max_in_flight(job(concurrency={"maxInFlight": 8}), a.caps) == 8
    j = job(concurrency={"maxInFlight": 4096}, parallelism=4)
    where = locations_of(j, a.root)
    args = runner_args_for(
        j, where, ModelTarget(routing_file="/r.json"), deadline=NOW, max_in_flight=256
    )
    assert args.concurrency == 64 == args.max_concurrency  # 256 / 4 shards


def test_a_refused_batch_fails_before_any_runner() -> None:
    d = reconcile(job(), Observed(refusal="input s3://team-b/x is outside"), NOW)
    assert d.status.phase is Phase.FAILED and not d.create_runner
    failed = d.status.condition(ConditionType.FAILED)
    validated = d.status.condition(ConditionType.VALIDATED)
    assert failed is not None and failed.reason == "PolicyViolation"
    assert validated is not None and validated.status is ConditionStatus.FALSE
    assert "outside" in (d.status.message or "")
    # Once started, a later policy change does not stop a running batch.
    running = BatchJob.model_validate(
        {**job().model_dump(by_alias=True, mode="json"), "status": {"runnerJobName": "b1-runner"}}
    )
    again = reconcile(running, Observed(runner=RunnerState(exists=True), refusal="x"), NOW)
    assert again.status.phase is not Phase.FAILED


# ------------------------------------------------------------------ keys


def test_routing_entries_carry_their_own_key_and_old_forms_still_parse() -> None:
    table = parse_routing_table(
        json.dumps(
            {
                "models": {
                    "big": {
                        "urls": ["http://vllm-a/v1", "http://vllm-b/v1"],
                        "apiKeySecret": {"name": "vllm-key", "key": "apiKey"},
                    },
                    "old": ["http://old/v1"],
                    "one": "http://one/v1",
                }
            }
        ).encode()
    )
    assert table.urls_for("big") == ["http://vllm-a/v1", "http://vllm-b/v1"]
    assert table.urls_for("one") == ["http://one/v1"]
    refs = table.key_refs()
    assert set(refs) == {"http://vllm-a/v1", "http://vllm-b/v1"}
    assert refs["http://vllm-a/v1"].name == "vllm-key"


def test_a_url_belongs_to_one_key() -> None:
    doc = {
        "a": {"urls": ["http://x/v1"], "apiKeySecret": {"name": "k1", "key": "k"}},
        "b": {"urls": ["http://x/v1"], "apiKeySecret": {"name": "k2", "key": "k"}},
    }
    with pytest.raises(ValidationError, match="belongs to one key"):
        parse_routing_table(json.dumps(doc).encode())


def test_key_variables_are_per_url() -> None:
    a, b = api_key_env("http://a/v1"), api_key_env("http://b/v1")
    assert a != b and a.startswith("OPENBATCH_API_KEY_FOR_") and a[-16:].isalnum()
    assert api_key_env("http://a/v1") == a


# ------------------------------------------------------------------ capacity


@pytest.mark.parametrize(
    ("max_in_flight", "shards", "share"),
    [(64, 1, 64), (64, 4, 16), (4096, 64, 64), (10, 3, 3), (3, 3, 1)],
)
def test_each_shard_gets_its_share_of_the_ceiling(
    max_in_flight: int, shards: int, share: int
) -> None:
    assert shard_share(max_in_flight, shards) == share
    assert share * shards <= max_in_flight


def test_runner_args_carry_the_share_as_window_and_adaptive_ceiling() -> None:
    j = job(concurrency={"maxInFlight": 4096, "adaptive": True}, parallelism=64)
    where = locations_of(j, "s3://team-a/openbatch")
    args = runner_args_for(j, where, ModelTarget(routing_file="/r.json"), deadline=NOW)
    parsed = parse_run_argv(args.to_argv()[1:])
    assert parsed.concurrency == 64 and parsed.max_concurrency == 64 and parsed.adaptive


def e(ns: str, name: str, prio: int = 0, sec: int = 0, adm: bool = False) -> QueueEntry:
    created = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=sec)).isoformat()
    return QueueEntry((ns, name), prio, created, adm, False)


ADMISSION_CASES: dict[str, tuple[list[QueueEntry], dict[str, int], list[tuple[str, str]]]] = {
    "one namespace: priority then age": (
        [e("a", "old", sec=1), e("a", "new", sec=9), e("a", "urgent", prio=5, sec=10)],
        {},
        [("a", "urgent"), ("a", "old"), ("a", "new")],
    ),
    "a busy namespace waits behind an idle one": (
        [
            e("a", "run1", adm=True),
            e("a", "run2", adm=True),
            e("a", "q1", sec=1),
            e("b", "q1", sec=5),
        ],
        {},
        [("b", "q1"), ("a", "q1")],
    ),
    "a flood alternates with a trickle": (
        [*(e("a", f"f{i}", sec=i) for i in range(4)), e("b", "t0", sec=50), e("b", "t1", sec=60)],
        {},
        [("a", "f0"), ("b", "t0"), ("a", "f1"), ("b", "t1"), ("a", "f2"), ("a", "f3")],
    ),
    "priority only orders within the fair share": (
        [e("a", "hi", prio=1000, sec=1), e("a", "hi2", prio=1000, sec=2), e("b", "lo", sec=3)],
        {},
        [("a", "hi"), ("b", "lo"), ("a", "hi2")],
    ),
    "a namespace at its cap gets nothing more": (
        [e("a", "run", adm=True), e("a", "q", sec=1), e("b", "q", sec=2)],
        {"a": 1},
        [("b", "q")],
    ),
}


@pytest.mark.parametrize(
    ("entries", "limits", "order"), ADMISSION_CASES.values(), ids=ADMISSION_CASES.keys()
)
def test_admission_is_fair_across_namespaces(
    entries: list[QueueEntry], limits: dict[str, int], order: list[tuple[str, str]]
) -> None:
    assert admission_order(entries, limits) == order
    for position, key in enumerate(order):
        view = slots_view(entries, key, limits)
        assert view.ahead == position and not view.namespace_full


def test_namespace_at_its_cap_waits_even_with_free_slots() -> None:
    entries = [e("a", "run", adm=True), e("a", "q", sec=1)]
    view = slots_view(entries, ("a", "q"), {"a": 1})
    assert view.namespace_full
    d = reconcile(job(), Observed(admitted_elsewhere=1, namespace_full=True), NOW)
    assert not d.create_runner and d.status.phase is Phase.VALIDATING
    cond = d.status.condition(ConditionType.ADMITTED)
    assert cond is not None and "maximum" in cond.message


@pytest.mark.parametrize(
    ("status", "runner", "reads"),
    [
        ({}, RunnerState(exists=False), False),  # new
        (
            {
                "conditions": [
                    {
                        "type": "Admitted",
                        "status": "False",
                        "reason": "Queued",
                        "message": "",
                        "lastTransitionTime": "2026-11-01T12:00:01Z",
                    }
                ]
            },
            RunnerState(exists=False),
            False,
        ),
        (
            {
                "conditions": [
                    {
                        "type": "Admitted",
                        "status": "True",
                        "reason": "Admitted",
                        "message": "",
                        "lastTransitionTime": "2026-11-01T12:00:01Z",
                    }
                ]
            },
            RunnerState(exists=False),
            True,
        ),
        ({"runnerJobName": "b1-runner"}, RunnerState(exists=False), True),
        ({}, RunnerState(exists=True), True),  # admitted before a lost status write
    ],
)
def test_queued_batches_do_not_read_object_storage(
    status: dict[str, Any], runner: RunnerState, reads: bool
) -> None:
    body = {**job().model_dump(by_alias=True, mode="json"), "status": status}
    assert observes_storage(BatchJob.model_validate(body), runner) is reads


# ------------------------------------------------------------------ issue 7, item 18


def test_a_batch_that_finished_between_two_polls_is_validated() -> None:
    result = FinalResult(
        state=RunState.COMPLETED,
        total=3,
        completed=3,
        failed=0,
        unrun=0,
        usage=BatchUsage(),
        output_uri="s3://team-a/openbatch/files/team-a/out",
    )
    d = reconcile(
        job(), Observed(runner=RunnerState(exists=True, complete=True), result=result), NOW
    )
    assert d.status.phase is Phase.COMPLETED
    validated = d.status.condition(ConditionType.VALIDATED)
    assert validated is not None and validated.status is ConditionStatus.TRUE


def test_an_unparseable_batchjob_fails_with_the_schema_error() -> None:
    from openbatch.lifecycle import invalid_spec_status
    from openbatch.resource import BatchJobStatus

    st = invalid_spec_status(BatchJobStatus(), "spec.modelServer.url: bad" + "x" * 9000, NOW, 1)
    assert st.phase is Phase.FAILED and st.failed_time == NOW
    failed = st.condition(ConditionType.FAILED)
    assert failed is not None and failed.reason == "InvalidSpec"
    assert len(st.message or "") <= 4096
