"""kopf glue: decorators that parse, observe, call `reconcile`, and apply the decision.

Level-based: a create/resume/spec-change handler and a timer all run the same
`reconcile_once`, which reads the fresh object under a per-object lock, so overlapping
triggers never act on a stale snapshot. Child creation is idempotent (409 is success) and
status is written through the `/status` subresource only.
"""

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from pydantic import ValidationError

from openbatch.admission import BatchKey, QueueEntry, slots_view
from openbatch.lifecycle import (
    TERMINAL_PHASES,
    Decision,
    Observed,
    finalize_job_name,
    reconcile,
    runner_job_name,
)
from openbatch.locations import locations_of
from openbatch.resource import GROUP, PLURAL, VERSION, BatchJob
from openbatch_operator.errors import InvalidResource, OperatorError, to_kopf
from openbatch_operator.metrics import Metrics
from openbatch_operator.port import ClusterPort, StoragePort
from openbatch_operator.resources import build_finalize_job, build_runner_job
from openbatch_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()  # read at import: kopf needs the timer interval up front
_TERMINAL = frozenset(p.value for p in TERMINAL_PHASES)
_log = logging.getLogger("openbatch.operator")


class State:
    """What the handlers share (kept in kopf's memo)."""

    def __init__(self, settings: OperatorSettings, api: k8s.ApiClient) -> None:
        self.settings = settings
        self.cluster = ClusterPort(api)
        self.storage = StoragePort()
        self.metrics = Metrics()
        self.locks: dict[BatchKey, asyncio.Lock] = {}
        # Admissions granted by this process that the index may not show yet.
        self.admitted: set[BatchKey] = set()
        self.admission_lock = asyncio.Lock()
        # Latest (phase, completed, failed, queued) of every BatchJob, for the metrics.
        self.seen: dict[BatchKey, tuple[str | None, int, int, bool]] = {}

    def refresh_metrics(self) -> None:
        rows = list(self.seen.values())
        self.metrics.observe(
            (phase for phase, _, _, _ in rows),
            sum(c for _, c, _, _ in rows),
            sum(f for _, _, f, _ in rows),
            sum(1 for *_, queued in rows if queued),
        )

    def lock(self, key: BatchKey) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())


def _load_kube_config() -> k8s.ApiClient:
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's own bookkeeping lives under our prefix (STYLE.md).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.watching.server_timeout = 300
    state = State(SETTINGS, await asyncio.to_thread(_load_kube_config))
    state.metrics.serve(SETTINGS.metrics_port)
    memo["openbatch"] = state


def _entry(namespace: str | None, name: str | None, body: kopf.Body) -> QueueEntry:
    status = body.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return QueueEntry(
        key=(namespace or "", name or ""),
        priority=int((body.get("spec") or {}).get("priority") or 0),
        created=str(body.get("metadata", {}).get("creationTimestamp") or ""),
        admitted=conditions.get("Admitted") == "True",
        terminal=status.get("phase") in _TERMINAL,
    )


@kopf.index(GROUP, VERSION, PLURAL)
def batch_queue(
    namespace: str | None, name: str | None, body: kopf.Body, **_: Any
) -> dict[BatchKey, tuple[QueueEntry, str | None, int, int]]:
    status = body.get("status") or {}
    counts = status.get("requestCounts") or {}
    return {
        (namespace or "", name or ""): (
            _entry(namespace, name, body),
            status.get("phase"),
            int(counts.get("completed") or 0),
            int(counts.get("failed") or 0),
        )
    }


def _entries(index: kopf.Index[Any, Any], state: State) -> list[QueueEntry]:
    out = []
    for key in index:
        for entry, *_ in index[key]:
            fresh = entry.key in state.admitted and not entry.admitted
            out.append(
                QueueEntry(entry.key, entry.priority, entry.created, True, entry.terminal)
                if fresh
                else entry
            )
    return out


async def reconcile_once(
    namespace: str, name: str, state: State, index: kopf.Index[Any, Any]
) -> Decision | None:
    key = (namespace, name)
    async with state.lock(key):
        raw = await state.cluster.get_batchjob(namespace, name)
        if raw is None:
            return None
        try:
            job = BatchJob.model_validate(raw)
        except ValidationError as exc:
            raise InvalidResource(f"BatchJob {namespace}/{name} is not valid: {exc}") from exc
        if job.status.phase in TERMINAL_PHASES:
            return None
        cfg = state.settings
        where = locations_of(job, cfg.storage_root)
        shards, result, marker = await state.storage.observe(where.work_uri, job.spec.parallelism)
        runner = await state.cluster.read_job(namespace, runner_job_name(job))
        finalize = await state.cluster.read_job(namespace, finalize_job_name(job))
        # Before a runner starts: a batch whose input is not there fails validation (§4.3).
        unstarted = not runner.exists and job.status.runner_job_name is None
        input_missing = unstarted and not await state.storage.input_exists(where.input_uri)
        async with state.admission_lock:
            held, ahead = slots_view(_entries(index, state), key)
            observed = Observed(
                runner=runner,
                finalize=finalize,
                shards=shards,
                result=result,
                cancel_marker=marker,
                admitted_elsewhere=held,
                ahead_in_queue=ahead,
                max_concurrent=cfg.max_concurrent_batches,
                output_file_id=where.output_file_id,
                error_file_id=where.error_file_id,
                input_missing=input_missing,
            )
            now = datetime.now(UTC)
            decision = reconcile(job, observed, now)
            if decision.create_runner or (runner.exists and not decision.terminal):
                state.admitted.add(key)
            if decision.terminal:
                state.admitted.discard(key)
        await _apply(job, raw, decision, state, now)
        return decision


async def _apply(
    job: BatchJob, raw: dict[str, Any], decision: Decision, state: State, now: datetime
) -> None:
    namespace = job.metadata.namespace or "default"
    cfg = state.settings
    where = locations_of(job, cfg.storage_root)
    deadline = job.deadline() or now
    if decision.write_cancel_marker:
        await state.storage.write_cancel_marker(where.work_uri)
    if decision.create_runner:
        await state.cluster.create_job(namespace, build_runner_job(job, where, cfg, deadline, now))
    if decision.create_finalize:
        await state.cluster.create_job(namespace, build_finalize_job(job, where, cfg))
    status = decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    await state.cluster.patch_status(namespace, job.metadata.name, status)
    for event in decision.events:
        kopf.event(
            kopf.Body(cast(kopf.RawBody, raw)),
            type=event.type.value,
            reason=event.reason,
            message=event.message,
        )


async def _handle(
    namespace: str | None, name: str | None, memo: kopf.Memo, index: kopf.Index[Any, Any]
) -> None:
    state: State = memo["openbatch"]
    try:
        await reconcile_once(namespace or "default", name or "", state, index)
    except OperatorError as exc:
        state.metrics.reconcile_errors.inc()
        raise to_kopf(exc) from exc


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def on_change(*, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    await _handle(namespace, name, memo, kwargs["batch_queue"])


@kopf.on.event(GROUP, VERSION, PLURAL)
def track(
    *, type: str | None, namespace: str | None, name: str, body: kopf.Body, memo: Any, **_: Any
) -> None:
    """Every watch event, deletions included, keeps the metrics current without a poll."""
    state: State | None = memo.get("openbatch")
    if state is None:
        return
    key = (namespace or "", name)
    if type == "DELETED":
        state.seen.pop(key, None)
    else:
        entry = _entry(namespace, name, body)
        status = body.get("status") or {}
        counts = status.get("requestCounts") or {}
        state.seen[key] = (
            status.get("phase"),
            int(counts.get("completed") or 0),
            int(counts.get("failed") or 0),
            not entry.admitted and not entry.terminal,
        )
    state.refresh_metrics()


def _not_terminal(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in _TERMINAL


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.poll_interval_seconds, when=_not_terminal)
async def tick(*, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    await _handle(namespace, name, memo, kwargs["batch_queue"])
