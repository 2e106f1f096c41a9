"""The operator posts a phase change's Event before the status that records the phase, so
an operator that dies in between posts it again after its restart (issue 7, item 18).

The handlers' `_apply` runs against a fake cluster port (the port is the seam the operator
injects; nothing of the unit under test is patched)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client as k8s

from openbatch.lifecycle import Observed, reconcile
from openbatch.resource import BatchJob
from openbatch.tenancy import TenancyConfig, resolve_tenant
from openbatch_operator import handlers
from openbatch_operator.errors import KubernetesUnavailable

NOW = datetime(2026, 11, 1, 12, 5, tzinfo=UTC)
RAW: dict[str, Any] = {
    "apiVersion": "openbatch.dev/v1alpha1",
    "kind": "BatchJob",
    "metadata": {
        "name": "b1",
        "namespace": "team-a",
        "uid": "u1",
        "generation": 1,
        "creationTimestamp": "2026-11-01T12:00:00Z",
    },
    "spec": {"input": {"fileID": "file-abc"}, "endpoint": "/v1/chat/completions", "cancel": True},
}


class FakeCluster:
    def __init__(self, *, fail_status: bool = False, fail_events: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_status = fail_status
        self.fail_events = fail_events

    async def post_event(self, raw: Any, type_: str, reason: str, message: str, now: Any) -> None:
        self.calls.append(f"event:{reason}")
        if self.fail_events:
            raise KubernetesUnavailable("events are forbidden")

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.calls.append(f"status:{status.get('phase')}")
        if self.fail_status:
            raise KubernetesUnavailable("the API server went away")

    async def create_job(self, namespace: str, manifest: dict[str, Any]) -> None:
        self.calls.append("job")


def _state(cluster: FakeCluster) -> handlers.State:
    state = handlers.State(handlers.SETTINGS, k8s.ApiClient())
    state.cluster = cluster  # type: ignore[assignment]  # the port, faked
    return state


def _apply(cluster: FakeCluster) -> None:
    job = BatchJob.model_validate(RAW)
    decision = reconcile(job, Observed(), NOW)  # cancelled before it started
    tenant = resolve_tenant(
        TenancyConfig(), "team-a", default_storage=handlers.SETTINGS.default_storage
    )
    asyncio.run(handlers._apply(job, RAW, decision, _state(cluster), NOW, tenant))


def test_the_event_is_posted_before_the_status_records_the_phase() -> None:
    cluster = FakeCluster()
    _apply(cluster)
    assert cluster.calls == ["event:Cancelled", "status:Cancelled"]


def test_a_crash_before_the_status_write_repeats_the_event() -> None:
    first = FakeCluster(fail_status=True)
    with pytest.raises(KubernetesUnavailable):
        _apply(first)
    assert first.calls == ["event:Cancelled", "status:Cancelled"]
    again = FakeCluster()  # the restarted operator sees the old status: same decision
    _apply(again)
    assert again.calls == ["event:Cancelled", "status:Cancelled"]


def test_refused_events_do_not_hold_up_the_status() -> None:
    cluster = FakeCluster(fail_events=True)
    _apply(cluster)
    assert cluster.calls == ["event:Cancelled", "status:Cancelled"]
