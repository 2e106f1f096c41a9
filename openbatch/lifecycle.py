"""A batch's lifecycle as one pure decision: `reconcile(job, observed, now) -> Decision`.

Both backends drive every batch with it: the operator (kopf handlers over the Kubernetes
API, runner Jobs) and the shim's local backend (SQLite, runner subprocesses). Pure:
everything it needs (the BatchJob, what the backend and object storage showed, the clock)
comes in as arguments, and what to do comes out as data; a backend only observes, calls
this, and applies the decision idempotently. Level-based: the same inputs always give the
same decision, so a restarted backend simply picks up where the status says it was.

What a backend observes of its runner (a Job, a process) is the neutral `RunnerState`; each
backend fills it from its own facts (Job conditions, exit codes).

Phases map 1:1 to OpenAI statuses. Lifecycle:

    (new) -> Validating [Admitted=False Queued] -> Validating [runner validates]
          -> InProgress -> Finalizing -> Completed
    Validating --invalid input--> Failed (InvalidInput, status.errors)
    any --runner failed for good--> Failed (RunnerFailed)
    any --spec.cancel--> Cancelling -> Cancelled (queued batches: Cancelled at once)
    any --deadline--> Expired (the runner writes batch_expired lines; queued: at once)
"""

import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from openbatch.batch_mapping import (
    annotated_batch_id_problem,
    batch_id_of,
    bounded_count,
    clip_text,
    status_errors_from_wire,
    status_usage_from_wire,
)
from openbatch.progress import FinalResult, ProgressRecord, RunState
from openbatch.resource import (
    MAX_MODEL_LENGTH,
    MAX_STATUS_MESSAGE_LENGTH,
    BatchJob,
    BatchJobStatus,
    Condition,
    ConditionReason,
    ConditionStatus,
    ConditionType,
    ErrorItem,
    Phase,
    RequestCounts,
    format_progress,
)
from openbatch.usage import add_usage, from_batch_usage, to_batch_usage
from openbatch.wire import BatchUsage

TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.EXPIRED, Phase.CANCELLED})
_PASSED_VALIDATION = frozenset(
    {RunState.IN_PROGRESS, RunState.COMPLETED, RunState.CANCELLED, RunState.EXPIRED}
)


MAX_MESSAGE = 4096  # a message this module writes from outside text
MAX_NAME = 63  # a Kubernetes object name (DNS label), and so every child name
MAX_LABEL = 63  # a label value derived from a name
MAX_REASON = 128  # a backend's reason copied into a condition's reason


def bounded_label(text: str, limit: int = MAX_LABEL) -> str:
    """`text` if it fits `limit`, else its head and a hash of the whole (deterministic).

    For label values derived from batch names: names may be far longer than a label value
    may be, and a Job whose label is too long is refused by the API server forever.
    """
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[: limit - len(digest) - 1].rstrip('-_.')}-{digest}"


def child_name(batch_name: str, suffix: str) -> str:
    """`<batch>-<suffix>`, shortened with a hash when it would pass 63 characters.

    Deterministic, so creating a child again after a restart finds the same one (409 on
    Kubernetes, the same row locally), never a second.
    """
    name = f"{batch_name}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(batch_name.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(suffix) - len(digest) - 2
    return f"{batch_name[:keep].rstrip('-')}-{digest}-{suffix}"


def runner_job_name(job: BatchJob) -> str:
    return child_name(job.metadata.name, "runner")


def finalize_job_name(job: BatchJob) -> str:
    return child_name(job.metadata.name, "finalize")


class Owner(StrEnum):
    """Whose a child run under this batch's deterministic name is."""

    THIS_BATCH = "this-batch"
    # An earlier batch of the same name (deleted, its children not yet removed): wait.
    EARLIER_BATCH = "earlier-batch"
    OTHER = "other"  # made by someone else: never adopted


@dataclass(frozen=True)
class RunnerState:
    """What a backend shows of one child run: the runner (all shards) or the finalize step.

    `stopped_at_deadline` is the backend's backstop at work (a Job's activeDeadlineSeconds,
    the local backend killing an overdue process): the runner did not stop on its own.
    `reason` and `message` are the backend's own words, for the status message.
    """

    exists: bool
    complete: bool = False  # finished its work (every shard exited 0)
    failed_for_good: bool = False  # failed, and the backend will not retry it any more
    stopped_at_deadline: bool = False
    reason: str | None = None
    message: str | None = None
    owner: Owner = Owner.THIS_BATCH
    owner_detail: str = ""  # who owns it instead, for the status message


ABSENT = RunnerState(exists=False)


@dataclass(frozen=True)
class StartProblem:
    """Why a backend cannot start a batch's runner (or finalize step) yet: its own reason
    word (`CreateContainerConfigError`, `Unschedulable`, ...) and message."""

    reason: str
    message: str = ""


@dataclass(frozen=True)
class Observed:
    runner: RunnerState = ABSENT
    finalize: RunnerState = ABSENT
    shards: tuple[ProgressRecord | None, ...] = ()  # progress record of each shard, if any
    result: FinalResult | None = None  # result.json, once finalize ran
    cancel_marker: bool = False
    admitted_elsewhere: int = 0  # other batches holding a slot (admitted, not terminal)
    ahead_in_queue: int = 0  # waiting batches that start before this one
    max_concurrent: int = 8
    namespace_full: bool = False  # the namespace holds its cap of slots (tenancy)
    # Why the tenancy policy refuses this batch (`openbatch.tenancy.preflight`), or None.
    refusal: str | None = None
    output_file_id: str = ""  # the ids this batch's files get, if they are written
    error_file_id: str = ""
    # The input does not exist (or is not the tenant's): the batch fails validation before
    # a runner starts, as OpenAI fails a batch whose input_file_id it cannot find.
    input_missing: bool = False
    # Where this batch's result files go (computed by the backend): a result naming any
    # other location is not recorded. Empty: the backend computes none (not checked).
    output_uri: str = ""
    error_uri: str = ""
    # Why the runner cannot start (None: nothing wrong seen), and how long that may last
    # before the batch fails instead of waiting for its deadline.
    start_problem: StartProblem | None = None
    start_grace_seconds: float = 300.0


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass
class Decision:
    status: BatchJobStatus
    create_runner: bool = False
    create_finalize: bool = False
    write_cancel_marker: bool = False
    events: list[Event] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status.phase in TERMINAL_PHASES


def set_condition(
    status: BatchJobStatus,
    *,
    type_: ConditionType,
    state: ConditionStatus,
    reason: ConditionReason | str,
    message: str,
    now: datetime,
    generation: int | None,
) -> None:
    """Add or update a condition; `lastTransitionTime` moves only when the status flips."""
    message = clip_text(message, MAX_STATUS_MESSAGE_LENGTH)
    current = status.condition(type_)
    if current is not None and current.status is state:
        current.reason = str(reason)
        current.message = message
        current.observed_generation = generation
        return
    fresh = Condition(
        type=type_,
        status=state,
        reason=str(reason),
        message=message,
        last_transition_time=now,
        observed_generation=generation,
    )
    status.conditions = [c for c in status.conditions if c.type is not type_] + [fresh]


class _Builder:
    """Accumulates one decision; keeps the phase-change bookkeeping in one place."""

    def __init__(self, job: BatchJob, now: datetime) -> None:
        self.job = job
        self.now = now
        self.gen = job.metadata.generation
        self.status = job.status.model_copy(deep=True)
        self.before = job.status.phase
        self.decision = Decision(status=self.status)

    def condition(
        self, type_: ConditionType, ok: bool, reason: ConditionReason | str, message: str
    ) -> None:
        state = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
        set_condition(
            self.status,
            type_=type_,
            state=state,
            reason=reason,
            message=message,
            now=self.now,
            generation=self.gen,
        )

    def phase(
        self,
        phase: Phase,
        message: str,
        warning: bool = False,
        reason: ConditionReason | None = None,
    ) -> Decision:
        st = self.status
        message = clip_text(message, MAX_STATUS_MESSAGE_LENGTH)
        st.phase = phase
        st.message = message
        stamp = {
            Phase.IN_PROGRESS: "in_progress_time",
            Phase.FINALIZING: "finalizing_time",
            Phase.COMPLETED: "completed_time",
            Phase.FAILED: "failed_time",
            Phase.EXPIRED: "expired_time",
            Phase.CANCELLING: "cancelling_time",
            Phase.CANCELLED: "cancelled_time",
        }.get(phase)
        if stamp is not None and getattr(st, stamp) is None:
            setattr(st, stamp, self.now)
        if phase in TERMINAL_PHASES:
            ok = phase is Phase.COMPLETED
            reason = reason or {
                Phase.COMPLETED: ConditionReason.COMPLETED,
                Phase.EXPIRED: ConditionReason.EXPIRED,
                Phase.CANCELLED: ConditionReason.CANCELLED,
            }.get(phase)
            if ok:
                self.condition(ConditionType.COMPLETE, True, ConditionReason.COMPLETED, message)
                self.condition(ConditionType.RUNNING, False, ConditionReason.COMPLETED, message)
            else:
                failed_reason = reason or _failure_reason(st)
                self.condition(ConditionType.FAILED, True, failed_reason, message)
                self.condition(ConditionType.RUNNING, False, failed_reason, message)
        st.progress = format_progress(st.request_counts)
        if phase is not Phase.IN_PROGRESS:
            _release_pressure(self, phase)
        if phase is not self.before:
            self.decision.events.append(
                Event(EventType.WARNING if warning else EventType.NORMAL, phase.value, message)
            )
            self.before = phase
        return self.decision


def _failure_reason(status: BatchJobStatus) -> ConditionReason:
    return ConditionReason.INVALID_INPUT if status.errors else ConditionReason.RUNNER_FAILED


def _bounded_usage(usage: BatchUsage) -> BatchUsage:
    a, b, c, d, e = (bounded_count(n) for n in from_batch_usage(usage))
    return to_batch_usage((a, b, c, d, e))


def _clip_optional(text: str | None, limit: int) -> str | None:
    return None if text is None else clip_text(text, limit)


def bounded_progress(record: ProgressRecord) -> ProgressRecord:
    """A runner's progress record with every value the status copies within the CRD's
    bounds: runner-written objects are untrusted (docs/security.md), and one value out of
    bounds (a 300-character model name, a 32 KB message, a negative count) would make the
    status update, and so every reconcile of the batch, fail."""
    return record.model_copy(
        update={
            "total": bounded_count(record.total),
            "completed": bounded_count(record.completed),
            "failed": bounded_count(record.failed),
            "unrun": bounded_count(record.unrun),
            "usage": _bounded_usage(record.usage),
            "model": _clip_optional(record.model, MAX_MODEL_LENGTH),
            "error_count": bounded_count(record.error_count),
            "message": _clip_optional(record.message, MAX_MESSAGE),
        }
    )


def bounded_result(result: FinalResult) -> FinalResult:
    """`result.json` within the status's bounds, as `bounded_progress`."""
    return result.model_copy(
        update={
            "total": bounded_count(result.total),
            "completed": bounded_count(result.completed),
            "failed": bounded_count(result.failed),
            "unrun": bounded_count(result.unrun),
            "usage": _bounded_usage(result.usage),
            "model": _clip_optional(result.model, MAX_MODEL_LENGTH),
        }
    )


def _mirror_progress(status: BatchJobStatus, shards: tuple[ProgressRecord | None, ...]) -> None:
    """Sum the shards' progress records into the status; counts never move backwards."""
    records = [r for r in shards if r is not None]
    if not records:
        return
    usage = (0, 0, 0, 0, 0)
    for r in records:
        usage = add_usage(usage, from_batch_usage(r.usage))
    old = status.request_counts
    # The total is known only once every shard has validated and counted its lines.
    total = sum(r.total for r in records) if len(records) == len(shards) else 0
    status.request_counts = RequestCounts(
        total=bounded_count(max(old.total, total)),
        completed=bounded_count(max(old.completed, sum(r.completed for r in records))),
        failed=bounded_count(max(old.failed, sum(r.failed for r in records))),
    )
    if usage[4] >= status.usage.total_tokens:
        status.usage = status_usage_from_wire(to_batch_usage(usage))
    model = next((r.model for r in records if r.model), None)
    if model:
        status.model = model


def _deadline_pressure(b: _Builder, shards: tuple[ProgressRecord | None, ...]) -> None:
    """A polite batch says when its deadline makes it take more than the spare capacity:
    a condition while it lasts, and an Event when it starts and when it ends."""
    pressed = sum(1 for r in shards if r is not None and r.deadline_pressure)
    current = b.status.condition(ConditionType.DEADLINE_PRESSURE)
    was = current is not None and current.status is ConditionStatus.TRUE
    if not pressed and not was:
        return
    if pressed:
        reason, message = (
            ConditionReason.DEADLINE_PRESSURE,
            f"{pressed} of {len(shards)} shard(s) take more than the model servers' spare "
            "capacity to finish by the deadline",
        )
    else:
        reason, message = ConditionReason.ON_TRACK, "the polite rate finishes in time again"
    b.condition(ConditionType.DEADLINE_PRESSURE, bool(pressed), reason, message)
    if bool(pressed) != was:  # an Event each way; a changed shard count only updates it
        b.decision.events.append(Event(EventType.NORMAL, str(reason), message))


def _release_pressure(b: _Builder, phase: Phase) -> None:
    """Deadline pressure belongs to a running batch: it ends with the running."""
    current = b.status.condition(ConditionType.DEADLINE_PRESSURE)
    if current is not None and current.status is ConditionStatus.TRUE:
        message = f"the batch is no longer sending requests ({phase.value})"
        b.condition(ConditionType.DEADLINE_PRESSURE, False, ConditionReason.ON_TRACK, message)


def _foreign_location(result: FinalResult, obs: Observed) -> str | None:
    """A location the result names that is not the one the backend computed, or None."""
    pairs = ((result.output_uri, obs.output_uri), (result.error_uri, obs.error_uri))
    for written, computed in pairs:
        if written and computed and written != computed:
            return written
    return None


def _apply_result(b: _Builder, result: FinalResult, obs: Observed) -> Decision:
    st = b.status
    elsewhere = _foreign_location(result, obs)
    if elsewhere is not None:
        # Only the locations computed from the namespace's root are ever recorded: a result
        # pointing elsewhere would make clients fetch another batch's (or tenant's) data.
        return b.phase(
            Phase.FAILED,
            f"the batch's result names {clip_text(elsewhere, 512)!r}, not the location "
            "computed for this batch; nothing was recorded",
            warning=True,
            reason=ConditionReason.RUNNER_FAILED,
        )
    st.request_counts = RequestCounts(
        total=result.total, completed=result.completed, failed=result.failed
    )
    st.usage = status_usage_from_wire(result.usage)
    if result.model:
        st.model = result.model
    if result.output_uri:
        st.output_uri = obs.output_uri or clip_text(result.output_uri, 2048)
        st.output_file_id = obs.output_file_id or None
    if result.error_uri:
        st.error_uri = obs.error_uri or clip_text(result.error_uri, 2048)
        st.error_file_id = obs.error_file_id or None
    # A batch can finish between two polls: the phases it went through still get their
    # timestamps, as OpenAI's do (in_progress_at <= finalizing_at <= completed_at).
    if result.state is not RunState.FAILED and st.in_progress_time is None:
        st.in_progress_time = b.now
    if result.state is not RunState.FAILED:
        # Finished between two polls: the input was valid all the same.
        b.condition(ConditionType.VALIDATED, True, ConditionReason.VALID, "input is valid")
    if st.finalizing_time is None:
        st.finalizing_time = b.now
    summary = (
        f"{result.completed} completed, {result.failed} failed"
        + (f", {result.unrun} not run" if result.unrun else "")
        + f" of {result.total}"
    )
    if result.state is RunState.CANCELLED:
        return b.phase(Phase.CANCELLED, f"cancelled: {summary}")
    if result.state is RunState.EXPIRED:
        return b.phase(Phase.EXPIRED, f"completion window expired: {summary}", warning=True)
    if result.state is RunState.FAILED:
        return b.phase(Phase.FAILED, "input failed validation", warning=True)
    return b.phase(Phase.COMPLETED, f"completed: {summary}")


def _invalid(b: _Builder, record: ProgressRecord) -> Decision:
    st = b.status
    st.errors = status_errors_from_wire(record.errors)
    st.error_count = record.error_count or len(st.errors)
    st.request_counts = RequestCounts()
    message = record.message or "input failed validation"
    b.condition(ConditionType.VALIDATED, False, ConditionReason.INVALID_INPUT, message)
    return b.phase(Phase.FAILED, message, warning=True)


def input_missing_message(input_name: str) -> str:
    return f"Cannot find file {input_name}, or you do not have access to it."


def _input_missing(b: _Builder) -> Decision:
    source = b.job.spec.input
    name = source.file_id or (f"s3://{source.s3.bucket}/{source.s3.key}" if source.s3 else "")
    message = input_missing_message(name)
    st = b.status
    st.errors = [ErrorItem(code="invalid_request", message=message, param="file_id", line=None)]
    st.error_count = 1
    st.request_counts = RequestCounts()
    b.condition(ConditionType.VALIDATED, False, ConditionReason.INVALID_INPUT, message)
    return b.phase(Phase.FAILED, message, warning=True)


def _admit(b: _Builder, obs: Observed) -> bool:
    """Global admission: at most `max_concurrent` batches hold a slot, first by priority,
    then age (the callers count who is ahead)."""
    admitted = b.status.condition(ConditionType.ADMITTED)
    if admitted is not None and admitted.status is ConditionStatus.TRUE:
        return True
    if obs.runner.exists:  # admitted before an operator restart lost the status write
        b.condition(ConditionType.ADMITTED, True, ConditionReason.ADMITTED, "runner exists")
        return True
    if obs.namespace_full:
        b.condition(
            ConditionType.ADMITTED,
            False,
            ConditionReason.QUEUED,
            "waiting for a slot: this namespace already runs its maximum number of batches",
        )
        return False
    if obs.admitted_elsewhere + obs.ahead_in_queue < obs.max_concurrent:
        b.condition(ConditionType.ADMITTED, True, ConditionReason.ADMITTED, "slot granted")
        return True
    position = obs.ahead_in_queue + 1
    b.condition(
        ConditionType.ADMITTED,
        False,
        ConditionReason.QUEUED,
        f"waiting for a slot: {obs.admitted_elsewhere} of {obs.max_concurrent} in use, "
        f"position {position} in the queue",
    )
    return False


def _runner_failure_message(obs: Observed) -> str:
    job = obs.runner
    last = next((r.message for r in obs.shards if r is not None and r.message), None)
    parts = [f"runner failed ({clip_text(job.reason or 'unknown reason', MAX_REASON)})"]
    if job.message:
        parts.append(clip_text(job.message, MAX_MESSAGE))
    if last:
        parts.append(f"last runner message: {last}")
    return "; ".join(parts)


def invalid_spec_status(
    current: BatchJobStatus, message: str, now: datetime, generation: int | None
) -> BatchJobStatus:
    """The status of a BatchJob that does not parse: Failed, saying why, nothing run. The
    CRD's schema refuses such objects in a cluster; an emulator or an older CRD may not."""
    status = current.model_copy(deep=True)
    text = f"the BatchJob is invalid: {message}"[:MAX_MESSAGE]
    status.phase = Phase.FAILED
    status.message = text
    status.failed_time = status.failed_time or now
    for type_ in (ConditionType.VALIDATED, ConditionType.FAILED):
        set_condition(
            status,
            type_=type_,
            state=ConditionStatus.FALSE
            if type_ is ConditionType.VALIDATED
            else ConditionStatus.TRUE,
            reason=ConditionReason.INVALID_SPEC,
            message=text,
            now=now,
            generation=generation,
        )
    return status


def observes_storage(job: BatchJob, runner: RunnerState) -> bool:
    """Whether a reconcile needs the batch's progress records and result (object storage
    reads). A batch still waiting for admission has none to read: its runner never ran. So
    a thousand queued batches cost no storage requests (docs/security.md, capacity)."""
    ours = runner.exists and runner.owner is Owner.THIS_BATCH
    if ours or job.status.runner_job_name is not None:
        return True
    admitted = job.status.condition(ConditionType.ADMITTED)
    return admitted is not None and admitted.status is ConditionStatus.TRUE


_REASON_CHARS = re.compile(r"[^A-Za-z0-9_,:]")


def reason_word(text: str, fallback: ConditionReason = ConditionReason.CANNOT_START) -> str:
    """A backend's reason as a condition reason (CamelCase word, bounded), else `fallback`."""
    word = _REASON_CHARS.sub("", text)[:MAX_REASON].rstrip(",:")
    return word if word[:1].isalpha() else fallback.value


def _child_conflict(b: _Builder, obs: Observed, deadline: datetime | None) -> Decision | None:
    """A child under this batch's deterministic name that this batch did not make.

    Another's child is never adopted (its pods could read this batch's work dir, or run
    another spec): the batch fails. A child an earlier, deleted batch of the same name left
    behind is removed by garbage collection shortly: the batch waits for it.
    """
    for step, name in (
        (obs.runner, runner_job_name(b.job)),
        (obs.finalize, finalize_job_name(b.job)),
    ):
        if not step.exists or step.owner is Owner.THIS_BATCH:
            continue
        if step.owner is Owner.OTHER:
            message = (
                f"{name} already exists and does not belong to this batch"
                + (f" ({step.owner_detail})" if step.owner_detail else "")
                + "; it is not adopted: delete it, or create the batch under another name"
            )
            return b.phase(
                Phase.FAILED, message, warning=True, reason=ConditionReason.RUNNER_CONFLICT
            )
        if deadline is not None and b.now >= deadline:
            return b.phase(
                Phase.EXPIRED, "completion window expired before the batch started", warning=True
            )
        return b.phase(
            b.status.phase or Phase.VALIDATING,
            f"waiting for {name} of an earlier batch of this name to be removed",
        )
    return None


def _start_problem(b: _Builder, obs: Observed) -> Decision | None:
    """Mirror why the runner cannot start into `RunnerStarted`; fail after the grace.

    The grace runs from the condition's `lastTransitionTime` (level-based: a restarted
    backend measures from the same instant), so transient trouble (an image pull retried)
    that clears in time only leaves `RunnerStarted=True`.
    """
    problem = obs.start_problem
    current = b.status.condition(ConditionType.RUNNER_STARTED)
    if problem is None:
        if current is not None and current.status is ConditionStatus.FALSE:
            b.condition(ConditionType.RUNNER_STARTED, True, ConditionReason.STARTED, "started")
        return None
    reason = reason_word(problem.reason)
    message = clip_text(problem.message or problem.reason, MAX_MESSAGE)
    b.condition(ConditionType.RUNNER_STARTED, False, reason, message)
    since = b.status.condition(ConditionType.RUNNER_STARTED)
    assert since is not None  # just set
    if (b.now - since.last_transition_time).total_seconds() < obs.start_grace_seconds:
        return None
    # Should the runner start after all (a Secret created late), it stops at once.
    b.decision.write_cancel_marker = not obs.cancel_marker
    return b.phase(
        Phase.FAILED,
        f"the runner could not start within {obs.start_grace_seconds:g}s: {reason}: {message}",
        warning=True,
        reason=ConditionReason.CANNOT_START,
    )


def _freeze_batch_id(b: _Builder) -> Decision | None:
    """Record the batch id at the first reconcile; fail a batch whose annotation is not one.

    Frozen because the id selects the work dir: an annotation edited later must not move a
    running batch's progress, parts and results somewhere else.
    """
    if b.status.batch_id is not None:
        return None
    problem = annotated_batch_id_problem(b.job)
    if problem is not None:
        message = f"the BatchJob is invalid: {problem}"
        b.condition(ConditionType.VALIDATED, False, ConditionReason.INVALID_SPEC, message)
        return b.phase(Phase.FAILED, message, warning=True, reason=ConditionReason.INVALID_SPEC)
    b.status.batch_id = batch_id_of(b.job)
    return None


def _bounded(obs: Observed) -> Observed:
    shards = tuple(None if r is None else bounded_progress(r) for r in obs.shards)
    result = None if obs.result is None else bounded_result(obs.result)
    return replace(obs, shards=shards, result=result)


def reconcile(job: BatchJob, obs: Observed, now: datetime) -> Decision:  # noqa: PLR0911, PLR0912
    b = _Builder(job, now)
    st = b.status
    if st.phase in TERMINAL_PHASES:
        return b.decision
    st.observed_generation = job.metadata.generation
    deadline = job.deadline()
    st.expires_time = deadline
    conflict = _freeze_batch_id(b) or _child_conflict(b, obs, deadline)
    if conflict is not None:
        return conflict
    obs = _bounded(obs)  # everything below copies runner-written values into the status
    _mirror_progress(st, obs.shards)

    if obs.result is not None:
        return _apply_result(b, obs.result, obs)
    invalid = next((r for r in obs.shards if r is not None and r.state is RunState.FAILED), None)
    if invalid is not None:
        return _invalid(b, invalid)

    started = obs.runner.exists or st.runner_job_name is not None
    if obs.input_missing and not started:
        return _input_missing(b)
    if job.spec.cancel and not started:
        return b.phase(Phase.CANCELLED, "cancelled before any request was sent")
    if obs.refusal is not None and not started:
        message = f"refused by the tenancy policy: {obs.refusal}"
        b.condition(ConditionType.VALIDATED, False, ConditionReason.POLICY_VIOLATION, message)
        return b.phase(Phase.FAILED, message, warning=True, reason=ConditionReason.POLICY_VIOLATION)
    if deadline is not None and now >= deadline and not started:
        return b.phase(
            Phase.EXPIRED, "completion window expired before the batch started", warning=True
        )
    if st.phase is None:
        b.phase(Phase.VALIDATING, "waiting for admission")
    if not started and not _admit(b, obs):
        queued = st.condition(ConditionType.ADMITTED)
        return b.phase(Phase.VALIDATING, queued.message if queued else "waiting for a slot")

    st.runner_job_name = st.runner_job_name or runner_job_name(job)
    if not obs.runner.exists and not obs.runner.complete:
        b.decision.create_runner = True
    if job.spec.cancel:
        b.decision.write_cancel_marker = not obs.cancel_marker
    if obs.runner.failed_for_good:
        if obs.runner.stopped_at_deadline:
            return b.phase(
                Phase.EXPIRED,
                "the runner did not stop by the deadline and was stopped by the backend; "
                "results committed before that are kept in the work dir",
                warning=True,
            )
        return b.phase(Phase.FAILED, _runner_failure_message(obs), warning=True)
    cannot_start = _start_problem(b, obs)
    if cannot_start is not None:
        return cannot_start
    if obs.runner.complete:
        st.finalize_job_name = st.finalize_job_name or finalize_job_name(job)
        if obs.finalize.failed_for_good:
            return b.phase(
                Phase.FAILED,
                f"finalize failed ({obs.finalize.reason}): {obs.finalize.message or ''}",
                warning=True,
            )
        if not obs.finalize.exists:
            b.decision.create_finalize = True
        if job.spec.cancel:
            return b.phase(Phase.CANCELLING, "cancelling: joining partial results")
        return b.phase(Phase.FINALIZING, "all requests done; joining results")
    if job.spec.cancel:
        return b.phase(Phase.CANCELLING, "cancel requested; runner is stopping")
    validated = any(r is not None and r.state in _PASSED_VALIDATION for r in obs.shards)
    if validated:
        b.condition(ConditionType.VALIDATED, True, ConditionReason.VALID, "input is valid")
        b.condition(ConditionType.RUNNING, True, ConditionReason.RUNNING, "runner is sending")
        _deadline_pressure(b, obs.shards)
        counts = st.request_counts
        return b.phase(
            Phase.IN_PROGRESS,
            f"{counts.completed + counts.failed} of {counts.total} requests done",
        )
    if obs.start_problem is not None:
        started_cond = st.condition(ConditionType.RUNNER_STARTED)
        return b.phase(
            Phase.VALIDATING,
            "the runner cannot start yet: "
            + (f"{started_cond.reason}: {started_cond.message}" if started_cond else ""),
        )
    return b.phase(Phase.VALIDATING, "runner is validating the input")
