"""kopf glue: decorators that parse, observe, call `reconcile`, and apply the decision.

Level-based: a create/resume/spec-change handler and a timer all run the same
`reconcile_once`, which reads the fresh object under a per-object lock, so overlapping
triggers never act on a stale snapshot. Child creation is idempotent (409 is success) and
status is written through the `/status` subresource only.
"""

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from pydantic import ValidationError

from openbatch.admission import BatchKey, QueueEntry, slots_view
from openbatch.lifecycle import (
    ABSENT,
    TERMINAL_PHASES,
    Decision,
    Observed,
    StartProblem,
    finalize_job_name,
    invalid_spec_status,
    observes_storage,
    reconcile,
    runner_job_name,
)
from openbatch.locations import locations_of
from openbatch.resource import (
    GROUP,
    PLURAL,
    VERSION,
    BatchJob,
    BatchJobStatus,
    Phase,
)
from openbatch.routing import RoutingTable
from openbatch.tenancy import ResolvedTenant, TenancyConfig, preflight, tenancy_for
from openbatch_operator.errors import KubernetesUnavailable, OperatorError, to_kopf
from openbatch_operator.metrics import Metrics
from openbatch_operator.port import ClusterPort, StoragePort, pod_start_problem
from openbatch_operator.resources import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    build_finalize_job,
    build_runner_job,
)
from openbatch_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()  # read at import: kopf needs the timer interval up front
_TERMINAL = frozenset(p.value for p in TERMINAL_PHASES)
_log = logging.getLogger("openbatch.operator")


class State:
    """What the handlers share (kept in kopf's memo)."""

    def __init__(
        self,
        settings: OperatorSettings,
        api: k8s.ApiClient,
        tenancy: TenancyConfig | None = None,
        routing: RoutingTable | None = None,
    ) -> None:
        self.settings = settings
        self.tenancy = tenancy
        self.routing = routing
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

    def tenant(self, namespace: str) -> tuple[ResolvedTenant, str | None]:
        """The namespace's tenancy, and why it is refused (an unlisted namespace) or None."""
        cfg = self.settings
        return tenancy_for(
            self.tenancy,
            namespace,
            default_storage=cfg.default_storage,
            allow_unlisted=cfg.allow_unlisted_namespaces,
            default_allowed_urls=cfg.allowed_url_patterns,
        )

    def namespace_limits(self, namespaces: set[str]) -> dict[str, int]:
        limits = {}
        for ns in namespaces:
            cap = self.tenant(ns)[0].caps.max_running_batches
            if cap is not None:
                limits[ns] = cap
        return limits


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
    tenancy, routing = SETTINGS.load_tenancy(), SETTINGS.load_routing()
    state = State(SETTINGS, await asyncio.to_thread(_load_kube_config), tenancy, routing)
    state.metrics.serve(SETTINGS.metrics_port)
    memo["openbatch"] = state
    _log_configuration(SETTINGS, tenancy, routing)


def _log_configuration(
    cfg: OperatorSettings, tenancy: TenancyConfig | None, routing: RoutingTable | None
) -> None:
    """What this operator runs with, at INFO: Secret *names* only, never values."""
    _log.info("openbatch operator settings: %s", cfg.summary())
    if tenancy is None:
        _log.warning(
            "single-tenant mode (no OPENBATCH_OPERATOR_TENANTS_FILE): every namespace uses %s "
            "and the Secret %r; namespaces are not isolated from each other",
            cfg.storage_root,
            cfg.s3_secret_name,
        )
    else:
        for t in tenancy.tenants:
            _log.info(
                "tenant %s: storage %s, credentials Secret %r, caps %s, allowed hosts %s",
                t.namespace,
                t.storage.root,
                t.storage.credentials_secret,
                t.caps.over(tenancy.defaults.caps).model_dump(exclude_none=True),
                t.allowed_model_server_urls,
            )
        _log.info(
            "unlisted namespaces: %s",
            f"allowed on {cfg.storage_root}" if cfg.allow_unlisted_namespaces else "refused",
        )
    if routing is not None:
        keyed = sorted(m for m, e in routing.models.items() if e.api_key_secret is not None)
        _log.info("routing table: models %s; with their own key: %s", sorted(routing.models), keyed)


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


@kopf.index("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGED_BY})
def runner_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], StartProblem | None]:
    """Every pod of our Jobs, by (namespace, Job name): why it cannot start, or None.

    A watch (kopf keeps the index current), so a reconcile asks the API nothing more; a
    pod's problem shows on its BatchJob within one poll interval."""
    job_name = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name") or ""
    return {(namespace or "", job_name): pod_start_problem(body)}


def _start_problem(
    pods: kopf.Index[tuple[str, str], StartProblem | None], namespace: str, job: BatchJob
) -> StartProblem | None:
    """The first start problem among the pods of this batch's runner and finalize Jobs."""
    for job_name in (runner_job_name(job), finalize_job_name(job)):
        for problem in pods.get((namespace, job_name), ()):
            if problem is not None:
                return problem
    return None


async def reconcile_once(
    namespace: str,
    name: str,
    state: State,
    index: kopf.Index[Any, Any],
    pods: kopf.Index[tuple[str, str], StartProblem | None],
) -> Decision | None:
    key = (namespace, name)
    async with state.lock(key):
        raw = await state.cluster.get_batchjob(namespace, name)
        if raw is None:
            return None
        try:
            job = BatchJob.model_validate(raw)
        except ValidationError as exc:
            await _fail_invalid(raw, exc, state)
            return None
        if job.status.phase in TERMINAL_PHASES:
            return None
        cfg = state.settings
        tenant, refusal = state.tenant(namespace)
        where = locations_of(job, tenant.root)
        uid, batch_name = job.metadata.uid, job.metadata.name
        runner = await state.cluster.read_job(namespace, runner_job_name(job), uid, batch_name)
        # Queued batches read nothing from object storage until they are admitted.
        if observes_storage(job, runner):
            shards, result, marker = await state.storage.observe(
                where.work_uri, job.spec.parallelism
            )
            finalize = await state.cluster.read_job(
                namespace, finalize_job_name(job), uid, batch_name
            )
        else:
            shards, result, marker, finalize = (), None, False, ABSENT
        async with state.admission_lock:
            entries = _entries(index, state)
            limits = state.namespace_limits({e.key[0] for e in entries})
            view = slots_view(entries, key, limits)
            observed = Observed(
                runner=runner,
                finalize=finalize,
                shards=shards,
                result=result,
                cancel_marker=marker,
                admitted_elsewhere=view.held,
                ahead_in_queue=view.ahead,
                max_concurrent=cfg.max_concurrent_batches,
                namespace_full=view.namespace_full,
                refusal=refusal or preflight(job, tenant),
                output_file_id=where.output_file_id,
                error_file_id=where.error_file_id,
                output_uri=where.output_uri,
                error_uri=where.error_uri,
                start_problem=_start_problem(pods, namespace, job),
                start_grace_seconds=cfg.runner_start_grace_seconds,
            )
            now = datetime.now(UTC)
            decision = reconcile(job, observed, now)
            # A batch about to get its runner: is its input there? (Checked only then, so
            # queued batches read nothing; a missing input fails validation, §4.3.)
            if (
                decision.create_runner
                and not runner.exists
                and not await state.storage.input_present(where.input_uri)
            ):
                decision = reconcile(job, replace(observed, input_missing=True), now)
            if decision.create_runner or (runner.exists and not decision.terminal):
                state.admitted.add(key)
            if decision.terminal:
                state.admitted.discard(key)
        await _apply(job, raw, decision, state, now, tenant)
        return decision


async def _fail_invalid(raw: dict[str, Any], exc: ValidationError, state: State) -> None:
    """A BatchJob that does not parse fails with the first schema error (nothing runs)."""
    meta = raw.get("metadata") or {}
    namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
    try:
        current = BatchJobStatus.model_validate(raw.get("status") or {})
    except ValidationError:
        current = BatchJobStatus()
    if current.phase in TERMINAL_PHASES:
        return
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    reason = f"{where}: {first.get('msg')}"
    now = datetime.now(UTC)
    status = invalid_spec_status(current, reason, now, meta.get("generation"))
    _log.info("BatchJob %s/%s: -> Failed: %s", namespace, name, status.message)
    try:
        await state.cluster.post_event(
            raw, "Warning", Phase.FAILED.value, status.message or "", now
        )
    except KubernetesUnavailable as refused:
        _log.warning("could not post the Failed Event: %s", refused)
    body = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    await state.cluster.patch_status(namespace, name, body)


async def _apply(  # noqa: PLR0917
    job: BatchJob,
    raw: dict[str, Any],
    decision: Decision,
    state: State,
    now: datetime,
    tenant: ResolvedTenant,
) -> None:
    namespace = job.metadata.namespace or "default"
    cfg = state.settings
    where = locations_of(job, tenant.root)
    deadline = job.deadline() or now
    if decision.write_cancel_marker:
        await state.storage.write_cancel_marker(where.work_uri)
    if decision.create_runner:
        manifest = build_runner_job(job, where, cfg, deadline, now, tenant, state.routing)
        await state.cluster.create_job(namespace, manifest)
    if decision.create_finalize:
        await state.cluster.create_job(namespace, build_finalize_job(job, where, cfg, tenant))
    # Events first, then the status that records the new phase: an operator that dies in
    # between posts the Event again after its restart (at least once), never not at all.
    for event in decision.events:
        _log.info(
            "BatchJob %s/%s: %s -> %s: %s",
            namespace,
            job.metadata.name,
            job.status.phase.value if job.status.phase else "(new)",
            event.reason,
            event.message,
        )
        try:
            await state.cluster.post_event(raw, event.type.value, event.reason, event.message, now)
        except KubernetesUnavailable as exc:
            # Events are observations, not state: an API that refuses them (RBAC, quota)
            # must not stop batches from progressing.
            _log.warning("could not post the %s Event: %s", event.reason, exc)
    status = decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    await state.cluster.patch_status(namespace, job.metadata.name, status)


async def _handle(namespace: str | None, name: str | None, memo: kopf.Memo, **indexes: Any) -> None:
    state: State = memo["openbatch"]
    try:
        await reconcile_once(
            namespace or "default",
            name or "",
            state,
            indexes["batch_queue"],
            indexes["runner_pods"],
        )
    except OperatorError as exc:
        state.metrics.reconcile_errors.inc()
        raise to_kopf(exc) from exc


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def on_change(*, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    await _handle(namespace, name, memo, **kwargs)


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
    await _handle(namespace, name, memo, **kwargs)
