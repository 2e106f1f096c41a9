"""Table tests of the operator's pure `reconcile`: every phase transition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from openbatch.admission import QueueEntry, SlotsView, queue_length, slots_view
from openbatch.lifecycle import ABSENT, Observed, RunnerState, reconcile
from openbatch.progress import FinalResult, ProgressRecord, RunState
from openbatch.resource import BatchJob, ConditionStatus, ConditionType, Phase
from openbatch.wire import BatchError, BatchErrors, BatchUsage

CREATED = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
NOW = CREATED + timedelta(minutes=5)
RUNNING = RunnerState(exists=True)
DONE = RunnerState(exists=True, complete=True)


def make_job(
    phase: Phase | None = None, *, cancel: bool = False, parallelism: int = 1, **status: Any
) -> BatchJob:
    body: dict[str, Any] = {
        "metadata": {
            "name": "b1",
            "namespace": "team-a",
            "uid": "u-1",
            "generation": 1,
            "creationTimestamp": "2026-11-01T12:00:00Z",
        },
        "spec": {
            "input": {"s3": {"bucket": "inputs", "key": "in.jsonl"}},
            "endpoint": "/v1/chat/completions",
            "completionWindow": "1h",
            "cancel": cancel,
            "parallelism": parallelism,
        },
        "status": {"phase": phase.value if phase else None, **status},
    }
    if body["status"]["phase"] is None:
        del body["status"]["phase"]
    return BatchJob.model_validate(body)


def admitted(phase: Phase, **status: Any) -> BatchJob:
    cond = {
        "type": "Admitted",
        "status": "True",
        "reason": "Admitted",
        "message": "slot granted",
        "lastTransitionTime": "2026-11-01T12:00:01Z",
    }
    return make_job(phase, conditions=[cond], runnerJobName="b1-runner", **status)


def record(state: RunState, **fields: Any) -> ProgressRecord:
    return ProgressRecord(state=state, **fields)


def test_new_batch_is_admitted_and_gets_a_runner() -> None:
    d = reconcile(make_job(), Observed(), NOW)
    assert d.status.phase is Phase.VALIDATING and d.create_runner
    assert d.status.runner_job_name == "b1-runner"
    cond = d.status.condition(ConditionType.ADMITTED)
    assert cond is not None and cond.status is ConditionStatus.TRUE
    assert d.status.expires_time == CREATED + timedelta(hours=1)
    assert [e.reason for e in d.events] == ["Validating"]


def test_full_operator_queues_the_batch() -> None:
    d = reconcile(make_job(), Observed(admitted_elsewhere=2, max_concurrent=2), NOW)
    assert d.status.phase is Phase.VALIDATING and not d.create_runner
    cond = d.status.condition(ConditionType.ADMITTED)
    assert cond is not None and cond.status is ConditionStatus.FALSE and cond.reason == "Queued"
    assert "position 1" in cond.message
    assert d.status.runner_job_name is None
    # still queued on the next reconcile: the message follows the queue
    job = make_job(Phase.VALIDATING).model_copy(update={"status": d.status})
    again = reconcile(job, Observed(admitted_elsewhere=2, ahead_in_queue=3, max_concurrent=2), NOW)
    assert again.status.message is not None and "position 4" in again.status.message
    assert again.events == []  # no phase change, no new Event
    # a batch ahead in the queue takes the last free slot first
    d = reconcile(
        make_job(), Observed(admitted_elsewhere=1, ahead_in_queue=1, max_concurrent=2), NOW
    )
    assert not d.create_runner


def test_runner_job_recreated_if_missing_but_not_duplicated() -> None:
    assert reconcile(admitted(Phase.VALIDATING), Observed(runner=ABSENT), NOW).create_runner
    assert not reconcile(admitted(Phase.VALIDATING), Observed(runner=RUNNING), NOW).create_runner


def test_validated_runner_moves_to_in_progress_with_counts() -> None:
    rec = record(
        RunState.IN_PROGRESS,
        total=10,
        completed=3,
        failed=1,
        model="m",
        usage=BatchUsage(input_tokens=5, output_tokens=7, total_tokens=12),
    )
    d = reconcile(admitted(Phase.VALIDATING), Observed(runner=RUNNING, shards=(rec,)), NOW)
    st = d.status
    assert st.phase is Phase.IN_PROGRESS and st.in_progress_time == NOW
    assert (st.request_counts.total, st.request_counts.completed, st.request_counts.failed) == (
        10,
        3,
        1,
    )
    assert st.usage.total_tokens == 12 and st.model == "m" and st.progress == "4/10"
    validated = st.condition(ConditionType.VALIDATED)
    assert validated is not None and validated.status is ConditionStatus.TRUE


def test_deadline_pressure_is_a_condition_and_an_event_each_way() -> None:
    calm = record(RunState.IN_PROGRESS, total=10, completed=3)
    pressed = record(RunState.IN_PROGRESS, total=10, completed=4, deadline_pressure=True)
    job = admitted(Phase.IN_PROGRESS)
    d = reconcile(job, Observed(runner=RUNNING, shards=(calm, None)), NOW)
    assert d.status.condition(ConditionType.DEADLINE_PRESSURE) is None  # never pressed
    assert [e.reason for e in d.events] == []
    job = job.model_copy(update={"status": d.status})
    d = reconcile(job, Observed(runner=RUNNING, shards=(calm, pressed)), NOW)
    cond = d.status.condition(ConditionType.DEADLINE_PRESSURE)
    assert cond is not None and cond.status is ConditionStatus.TRUE
    assert cond.reason == "DeadlinePressure" and "1 of 2 shard(s)" in cond.message
    assert [(e.type.value, e.reason) for e in d.events] == [("Normal", "DeadlinePressure")]
    job = job.model_copy(update={"status": d.status})
    d = reconcile(job, Observed(runner=RUNNING, shards=(calm, pressed)), NOW)
    assert d.events == []  # still pressed: said once
    job = job.model_copy(update={"status": d.status})
    d = reconcile(job, Observed(runner=RUNNING, shards=(calm, calm)), NOW)
    cond = d.status.condition(ConditionType.DEADLINE_PRESSURE)
    assert cond is not None and cond.status is ConditionStatus.FALSE and cond.reason == "OnTrack"
    assert [e.reason for e in d.events] == ["OnTrack"]


def test_still_validating_while_no_shard_reported() -> None:
    d = reconcile(admitted(Phase.VALIDATING), Observed(runner=RUNNING, shards=(None,)), NOW)
    assert d.status.phase is Phase.VALIDATING and d.events == []


def test_invalid_input_fails_with_openai_errors() -> None:
    errors = BatchErrors(
        data=[BatchError(code="model_not_found", message="no", param="body.model", line=1)]
    )
    rec = record(RunState.FAILED, errors=errors, error_count=3, message="input failed")
    d = reconcile(admitted(Phase.VALIDATING), Observed(runner=RUNNING, shards=(rec,)), NOW)
    st = d.status
    assert st.phase is Phase.FAILED and st.failed_time == NOW
    assert st.errors[0].code == "model_not_found" and st.error_count == 3
    failed = st.condition(ConditionType.FAILED)
    assert failed is not None and failed.reason == "InvalidInput"
    assert d.events[-1].type.value == "Warning"


@pytest.mark.parametrize(
    ("state", "phase", "time_field"),
    [
        (RunState.COMPLETED, Phase.COMPLETED, "completed_time"),
        (RunState.CANCELLED, Phase.CANCELLED, "cancelled_time"),
        (RunState.EXPIRED, Phase.EXPIRED, "expired_time"),
    ],
)
def test_result_decides_the_terminal_phase(state: RunState, phase: Phase, time_field: str) -> None:
    result = FinalResult(
        state=state,
        total=10,
        completed=6,
        failed=1,
        unrun=3,
        model="m",
        output_uri="s3://b/files/team-a/out",
        error_uri="s3://b/files/team-a/err",
        usage=BatchUsage(input_tokens=1, output_tokens=2, total_tokens=3),
    )
    obs = Observed(
        runner=DONE, result=result, output_file_id="file-out1", error_file_id="file-err1"
    )
    d = reconcile(admitted(Phase.IN_PROGRESS), obs, NOW)
    st = d.status
    assert st.phase is phase and getattr(st, time_field) == NOW
    assert st.finalizing_time == NOW
    assert (st.request_counts.completed, st.request_counts.failed) == (6, 1)
    assert st.output_file_id == "file-out1" and st.error_file_id == "file-err1"
    assert st.output_uri == "s3://b/files/team-a/out"
    assert d.terminal and not d.create_runner


def test_empty_files_have_null_ids() -> None:
    result = FinalResult(
        state=RunState.COMPLETED, total=2, completed=2, failed=0, unrun=0, output_uri="s3://x/o"
    )
    obs = Observed(runner=DONE, result=result, output_file_id="file-a", error_file_id="file-b")
    st = reconcile(admitted(Phase.IN_PROGRESS), obs, NOW).status
    assert st.output_file_id == "file-a" and st.error_file_id is None and st.error_uri is None


def test_sharded_runner_done_starts_finalize() -> None:
    job = admitted(Phase.IN_PROGRESS)
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"parallelism": 3})})
    d = reconcile(job, Observed(runner=DONE, shards=(None, None, None)), NOW)
    assert d.status.phase is Phase.FINALIZING and d.create_finalize
    assert d.status.finalize_job_name == "b1-finalize" and d.status.finalizing_time == NOW
    d = reconcile(job, Observed(runner=DONE, finalize=RUNNING), NOW)
    assert not d.create_finalize


def test_runner_failure_is_reported() -> None:
    failed = RunnerState(
        exists=True, failed_for_good=True, reason="BackoffLimitExceeded", message="x"
    )
    rec = record(RunState.INTERRUPTED, total=5, message="storage error: bucket gone")
    d = reconcile(admitted(Phase.IN_PROGRESS), Observed(runner=failed, shards=(rec,)), NOW)
    assert d.status.phase is Phase.FAILED
    assert "BackoffLimitExceeded" in (d.status.message or "")
    assert "bucket gone" in (d.status.message or "")
    cond = d.status.condition(ConditionType.FAILED)
    assert cond is not None and cond.reason == "RunnerFailed"


def test_deadline_backstop_expires() -> None:
    killed = RunnerState(
        exists=True, failed_for_good=True, stopped_at_deadline=True, reason="DeadlineExceeded"
    )
    d = reconcile(admitted(Phase.IN_PROGRESS), Observed(runner=killed), NOW)
    assert d.status.phase is Phase.EXPIRED


def test_cancel_running_batch_writes_marker_once() -> None:
    job = admitted(Phase.IN_PROGRESS)
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"cancel": True})})
    d = reconcile(job, Observed(runner=RUNNING), NOW)
    assert d.status.phase is Phase.CANCELLING and d.write_cancel_marker
    assert d.status.cancelling_time == NOW and d.events[-1].reason == "Cancelling"
    d = reconcile(job, Observed(runner=RUNNING, cancel_marker=True), NOW)
    assert not d.write_cancel_marker


def test_cancel_queued_batch_is_immediate() -> None:
    d = reconcile(make_job(cancel=True), Observed(admitted_elsewhere=9, max_concurrent=1), NOW)
    assert d.status.phase is Phase.CANCELLED and not d.create_runner


def test_queued_batch_expires_at_its_deadline() -> None:
    later = CREATED + timedelta(hours=2)
    d = reconcile(
        make_job(Phase.VALIDATING), Observed(admitted_elsewhere=1, max_concurrent=1), later
    )
    assert d.status.phase is Phase.EXPIRED and d.status.expired_time == later


def test_terminal_batches_are_left_alone() -> None:
    job = admitted(Phase.COMPLETED)
    d = reconcile(job, Observed(runner=ABSENT), NOW)
    assert d.status == job.status and not d.create_runner and d.events == []


def test_counts_never_go_backwards() -> None:
    job = admitted(Phase.IN_PROGRESS, requestCounts={"total": 10, "completed": 8, "failed": 0})
    stale = record(RunState.IN_PROGRESS, total=10, completed=5)
    st = reconcile(job, Observed(runner=RUNNING, shards=(stale,)), NOW).status
    assert st.request_counts.completed == 8


def test_condition_transition_time_moves_only_on_flip() -> None:
    rec = record(RunState.IN_PROGRESS, total=4)
    first = reconcile(admitted(Phase.VALIDATING), Observed(runner=RUNNING, shards=(rec,)), NOW)
    job = admitted(Phase.IN_PROGRESS).model_copy(update={"status": first.status})
    later = NOW + timedelta(seconds=30)
    second = reconcile(job, Observed(runner=RUNNING, shards=(rec,)), later)
    cond = second.status.condition(ConditionType.RUNNING)
    assert cond is not None and cond.last_transition_time == NOW


def test_admission_order_priority_then_age() -> None:
    def e(name: str, prio: int, created: str, adm: bool = False, term: bool = False) -> QueueEntry:
        return QueueEntry(("ns", name), prio, created, adm, term)

    entries = [
        e("running", 0, "2026-01-01T00:00:00Z", adm=True),
        e("done", 0, "2026-01-01T00:00:00Z", adm=True, term=True),
        e("old", 0, "2026-01-01T00:00:01Z"),
        e("new", 0, "2026-01-01T00:00:09Z"),
        e("urgent", 5, "2026-01-01T00:00:10Z"),
    ]
    assert slots_view(entries, ("ns", "urgent")) == SlotsView(1, 0)
    assert slots_view(entries, ("ns", "old")) == SlotsView(1, 1)
    assert slots_view(entries, ("ns", "new")) == SlotsView(1, 2)
    assert slots_view(entries, ("ns", "running")).held == 0  # its own slot is not counted
    assert queue_length(entries) == 3


def test_a_missing_input_fails_validation_before_any_runner() -> None:
    """OpenAI creates the batch, then fails it: `invalid_request`, line null (contract §4.3)."""
    d = reconcile(make_job(), Observed(input_missing=True), NOW)
    assert d.status.phase is Phase.FAILED and not d.create_runner
    (error,) = d.status.errors
    assert (error.code, error.param, error.line) == ("invalid_request", "file_id", None)
    assert "Cannot find file" in error.message


def test_deadline_pressure_ends_with_the_running_and_follows_the_shard_count() -> None:
    one = record(RunState.IN_PROGRESS, total=10, completed=3, deadline_pressure=True)
    calm = record(RunState.IN_PROGRESS, total=10, completed=3)
    job = admitted(Phase.IN_PROGRESS)
    d = reconcile(job, Observed(runner=RUNNING, shards=(one, calm)), NOW)
    job = job.model_copy(update={"status": d.status})
    d = reconcile(job, Observed(runner=RUNNING, shards=(one, one)), NOW)
    cond = d.status.condition(ConditionType.DEADLINE_PRESSURE)
    assert cond is not None and "2 of 2 shard(s)" in cond.message
    assert d.events == []  # still pressed: the message follows, no second Event
    job = job.model_copy(update={"status": d.status})
    result = FinalResult(state=RunState.COMPLETED, total=20, completed=20, failed=0, unrun=0)
    d = reconcile(job, Observed(runner=DONE, shards=(one, one), result=result), NOW)
    assert d.status.phase is Phase.COMPLETED
    cond = d.status.condition(ConditionType.DEADLINE_PRESSURE)
    assert cond is not None and cond.status is ConditionStatus.FALSE
    assert "no longer sending" in cond.message
