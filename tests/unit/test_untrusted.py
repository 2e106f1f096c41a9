"""Issue 8 §5-6: what a runner or a user wrote cannot crash, stall or redirect reconcile.

Table tests of the pure pieces: bounded progress and results, the size cap of runner-written
objects, label values of long names, the adoption decision, the frozen batch id, and pods
that cannot start.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from openbatch.batch_mapping import MAX_COUNT, batch_id_of
from openbatch.lifecycle import (
    ABSENT,
    Observed,
    Owner,
    RunnerState,
    StartProblem,
    bounded_label,
    reason_word,
    reconcile,
)
from openbatch.locations import locations_of
from openbatch.progress import (
    MAX_PROGRESS_BYTES,
    FinalResult,
    ProgressRecord,
    RunState,
    parse_record,
)
from openbatch.resource import (
    BATCH_ID_ANNOTATION,
    BatchJob,
    BatchJobStatus,
    ConditionStatus,
    ConditionType,
    Phase,
)
from openbatch.storage.local import LocalStore
from openbatch.tenancy import TenancyConfig, resolve_tenant
from openbatch.wire import BatchError, BatchErrors, BatchUsage, InputTokensDetails
from openbatch_operator.port import _read_capped, job_state, ownership, pod_start_problem
from openbatch_operator.resources import build_finalize_job, build_runner_job
from openbatch_operator.settings import OperatorSettings

CREATED = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
NOW = CREATED + timedelta(minutes=5)
RUNNING = RunnerState(exists=True)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
OUT = "s3://ob/files/team-a/file-out"
ERR = "s3://ob/files/team-a/file-err"


def make_job(
    name: str = "b1", annotations: dict[str, str] | None = None, **status: Any
) -> BatchJob:
    return BatchJob.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": "team-a",
                "uid": "u-1",
                "generation": 1,
                "creationTimestamp": "2026-11-01T12:00:00Z",
                "annotations": annotations or {},
            },
            "spec": {
                "input": {"s3": {"bucket": "obk", "key": "in.jsonl"}},
                "endpoint": "/v1/chat/completions",
                "completionWindow": "1h",
            },
            "status": status,
        }
    )


def admitted(phase: str = "InProgress", **status: Any) -> BatchJob:
    cond = {
        "type": "Admitted",
        "status": "True",
        "reason": "Admitted",
        "message": "slot granted",
        "lastTransitionTime": "2026-11-01T12:00:01Z",
    }
    return make_job(
        phase=phase, conditions=[cond], runnerJobName="b1-runner", batchID="b1", **status
    )


def assert_fits_the_crd(status: BatchJobStatus) -> None:
    """The models carry the CRD's bounds (tests/unit/test_crd.py), so a status that parses
    back is one the API server accepts."""
    BatchJobStatus.model_validate(status.to_api())


# ----- hostile progress records -----------------------------------------------------------------

HOSTILE_RECORDS: dict[str, ProgressRecord] = {
    "300-character model": ProgressRecord(state=RunState.IN_PROGRESS, total=3, model="m" * 300),
    "32 KB message": ProgressRecord(state=RunState.IN_PROGRESS, message="x" * 32_768),
    "1 MB message": ProgressRecord(state=RunState.IN_PROGRESS, message="y" * 1_000_000),
    "negative counts": ProgressRecord(
        state=RunState.IN_PROGRESS, total=-5, completed=-1, failed=-2, unrun=-3
    ),
    "huge counts": ProgressRecord(
        state=RunState.IN_PROGRESS, total=10**30, completed=10**30, failed=10**25
    ),
    "negative usage": ProgressRecord(
        state=RunState.IN_PROGRESS,
        usage=BatchUsage(
            input_tokens=-1,
            input_tokens_details=InputTokensDetails(cached_tokens=-9),
            total_tokens=-3,
        ),
    ),
    "huge usage": ProgressRecord(
        state=RunState.IN_PROGRESS, usage=BatchUsage(input_tokens=10**40, total_tokens=10**40)
    ),
    "huge error texts": ProgressRecord(
        state=RunState.FAILED,
        error_count=-4,
        errors=BatchErrors(
            data=[BatchError(code="c" * 999, message="m" * 99_999, param="p" * 999, line=10**30)]
            * 500
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RECORDS))
def test_a_hostile_progress_record_leaves_a_status_the_crd_accepts(case: str) -> None:
    record = HOSTILE_RECORDS[case]
    decision = reconcile(admitted(), Observed(runner=RUNNING, shards=(record,)), NOW)
    st = decision.status
    assert_fits_the_crd(st)
    assert st.phase in (Phase.IN_PROGRESS, Phase.VALIDATING, Phase.FAILED)
    assert len(st.model or "") <= 256
    counts = st.request_counts
    assert min(counts.total, counts.completed, counts.failed) >= 0
    assert max(counts.total, counts.completed, counts.failed) <= MAX_COUNT
    assert 0 <= st.usage.total_tokens <= MAX_COUNT
    assert st.error_count >= 0 and len(st.errors) <= 100


def test_a_clipped_model_name_is_still_recorded() -> None:
    record = HOSTILE_RECORDS["300-character model"]
    st = reconcile(admitted(), Observed(runner=RUNNING, shards=(record,)), NOW).status
    assert st.model is not None and len(st.model) == 256 and st.model.startswith("m" * 255)


def test_a_32kb_runner_message_in_a_runner_failure_does_not_raise() -> None:
    """Before: the message went into a condition unclipped, and Condition() raised."""
    failed = RunnerState(
        exists=True, failed_for_good=True, reason="BackoffLimitExceeded", message="z" * 40_000
    )
    record = HOSTILE_RECORDS["32 KB message"]
    decision = reconcile(admitted(), Observed(runner=failed, shards=(record,)), NOW)
    assert decision.status.phase is Phase.FAILED
    assert "BackoffLimitExceeded" in (decision.status.message or "")
    assert_fits_the_crd(decision.status)


def test_hostile_results_are_bounded_too() -> None:
    result = FinalResult(
        state=RunState.COMPLETED,
        total=-1,
        completed=10**30,
        failed=-7,
        unrun=0,
        model="q" * 1000,
        usage=BatchUsage(output_tokens=-3),
        output_uri=OUT,
    )
    obs = Observed(runner=RUNNING, result=result, output_uri=OUT, error_uri=ERR)
    st = reconcile(admitted(), obs, NOW).status
    assert st.phase is Phase.COMPLETED and st.output_uri == OUT
    assert_fits_the_crd(st)


@pytest.mark.parametrize(
    ("output", "error"),
    [
        ("s3://other-tenant/files/team-b/file-x", None),
        (None, "s3://ob/files/team-b/file-err"),
        (OUT + "/../../team-b/file-out", None),
        ("file:///etc/passwd", ERR),
    ],
)
def test_a_result_naming_another_location_is_not_recorded(
    output: str | None, error: str | None
) -> None:
    result = FinalResult(
        state=RunState.COMPLETED,
        total=2,
        completed=1,
        failed=1,
        unrun=0,
        output_uri=output,
        error_uri=error,
    )
    obs = Observed(runner=RUNNING, result=result, output_uri=OUT, error_uri=ERR)
    decision = reconcile(admitted(), obs, NOW)
    st = decision.status
    assert st.phase is Phase.FAILED
    assert "not the location computed for this batch" in (st.message or "")
    assert st.output_uri is None and st.error_uri is None
    assert st.output_file_id is None and st.error_file_id is None


def test_a_result_at_the_computed_locations_is_recorded() -> None:
    result = FinalResult(
        state=RunState.COMPLETED,
        total=2,
        completed=1,
        failed=1,
        unrun=0,
        output_uri=OUT,
        error_uri=ERR,
    )
    obs = Observed(
        runner=RUNNING,
        result=result,
        output_uri=OUT,
        error_uri=ERR,
        output_file_id="file-out",
        error_file_id="file-err",
    )
    st = reconcile(admitted(), obs, NOW).status
    assert st.phase is Phase.COMPLETED
    assert (st.output_uri, st.error_uri) == (OUT, ERR)


VALID = ProgressRecord(state=RunState.IN_PROGRESS, total=4, completed=1).model_dump_json().encode()


@pytest.mark.parametrize(
    ("data", "parses"),
    [
        (VALID, True),
        (VALID + b" " * (MAX_PROGRESS_BYTES - len(VALID)), True),  # exactly at the cap
        (VALID + b" " * (MAX_PROGRESS_BYTES - len(VALID) + 1), False),  # one byte over
        (b'{"state": "in_progress", "total": "many"}', False),
        (b'{"state": 5}', False),
        (b'{"state": "in_progress", "usage": []}', False),
        (b'{"state": "in_progress", "model": {"a": 1}}', False),
        (b"[]", False),
        (b"not json", False),
        (b"\xff\xfe\x00garbage", False),
        (b"[" * 100_000, False),
        (b"", False),
    ],
)
def test_parse_record_refuses_what_is_not_a_bounded_record(data: bytes, parses: bool) -> None:
    record = parse_record(ProgressRecord, data, MAX_PROGRESS_BYTES)
    assert (record is not None) is parses


def test_a_huge_object_is_never_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    path.write_bytes(b"x" * (5 * MAX_PROGRESS_BYTES))
    data = _read_capped(LocalStore(), str(path), MAX_PROGRESS_BYTES)
    assert data is not None and len(data) == MAX_PROGRESS_BYTES + 1
    assert _read_capped(LocalStore(), str(tmp_path / "absent.json"), 10) is None


# ----- names up to the CRD's limit ---------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 62, 63, 64, 100, 253])
def test_label_values_of_names_fit_a_label(length: int) -> None:
    name = ("a-" * 200)[: length - 1] + "z"
    value = bounded_label(name)
    assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), value
    assert value == bounded_label(name)  # deterministic: selectors find it again
    if length <= 63:
        assert value == name


def test_long_names_sharing_a_prefix_get_different_labels() -> None:
    a, b = "x" * 90 + "a", "x" * 90 + "b"
    assert bounded_label(a) != bounded_label(b)


@pytest.mark.parametrize("length", [63, 100, 253])
def test_child_jobs_of_long_names_carry_valid_names_and_labels(length: int) -> None:
    name = "n" * length
    batch = make_job(name)
    settings = OperatorSettings(bucket="ob")
    tenant = resolve_tenant(TenancyConfig(), "team-a", default_storage=settings.default_storage)
    where = locations_of(batch, tenant.root)
    deadline = CREATED + timedelta(hours=1)
    for manifest in (
        build_runner_job(batch, where, settings, deadline, NOW, tenant),
        build_finalize_job(batch, where, settings, tenant),
    ):
        meta = manifest["metadata"]
        assert len(meta["name"]) <= 63
        labels = {**meta["labels"], **manifest["spec"]["template"]["metadata"]["labels"]}
        for value in labels.values():
            assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), value


# ----- adoption ---------------------------------------------------------------------------------


def _ref(**fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "openbatch.dev/v1alpha1",
        "kind": "BatchJob",
        "name": "b1",
        "uid": "u-1",
        "controller": True,
        **fields,
    }


@pytest.mark.parametrize(
    ("refs", "owner"),
    [
        ([_ref()], Owner.THIS_BATCH),
        ([_ref(uid="u-0")], Owner.EARLIER_BATCH),  # a deleted batch of the same name
        ([_ref(uid="u-0", name="other")], Owner.OTHER),
        ([_ref(controller=False)], Owner.OTHER),  # an owner, not the controller
        ([_ref(kind="CronJob", apiVersion="batch/v1")], Owner.OTHER),
        ([_ref(apiVersion="evil.example/v1")], Owner.OTHER),
        ([{"kind": "Deployment", "name": "x", "uid": "u-1", "controller": True}], Owner.OTHER),
        ([], Owner.OTHER),
        (None, Owner.OTHER),
        (["not a reference"], Owner.OTHER),
    ],
)
def test_only_a_job_controlled_by_this_batch_is_adopted(
    refs: list[Any] | None, owner: Owner
) -> None:
    meta = {} if refs is None else {"ownerReferences": refs}
    assert ownership(meta, "u-1", "b1")[0] is owner
    state = job_state({"metadata": meta, "status": {}}, "u-1", "b1")
    assert state.exists and state.owner is owner


def test_a_foreign_runner_job_fails_the_batch_and_is_not_adopted() -> None:
    foreign = RunnerState(exists=True, owner=Owner.OTHER, owner_detail="its controller is X y")
    for job in (make_job(), admitted()):
        decision = reconcile(job, Observed(runner=foreign), NOW)
        st = decision.status
        assert st.phase is Phase.FAILED and not decision.create_runner
        assert not decision.write_cancel_marker and not decision.create_finalize
        failed = st.condition(ConditionType.FAILED)
        assert failed is not None and failed.reason == "RunnerConflict"
        assert "b1-runner already exists and does not belong to this batch" in (st.message or "")
        assert "its controller is X y" in (st.message or "")


def test_a_foreign_finalize_job_fails_the_batch() -> None:
    foreign = RunnerState(exists=True, owner=Owner.OTHER)
    done = RunnerState(exists=True, complete=True)
    decision = reconcile(admitted(), Observed(runner=done, finalize=foreign), NOW)
    assert decision.status.phase is Phase.FAILED and not decision.create_finalize
    assert "b1-finalize already exists" in (decision.status.message or "")


def test_an_earlier_batchs_job_is_waited_for_not_adopted() -> None:
    leftover = RunnerState(exists=True, complete=True, owner=Owner.EARLIER_BATCH)
    decision = reconcile(make_job(), Observed(runner=leftover), NOW)
    st = decision.status
    assert st.phase is Phase.VALIDATING and not decision.create_runner
    assert "earlier batch" in (st.message or "")
    assert st.condition(ConditionType.ADMITTED) is None  # not admitted on its account
    # Gone: the batch starts as any other.
    decision = reconcile(make_job(), Observed(runner=ABSENT), NOW)
    assert decision.create_runner
    # Still there at the deadline: the batch expires without running.
    late = reconcile(make_job(), Observed(runner=leftover), CREATED + timedelta(hours=2))
    assert late.status.phase is Phase.EXPIRED and not late.create_runner


# ----- the batch-id annotation ------------------------------------------------------------------


def test_the_batch_id_is_frozen_at_the_first_reconcile() -> None:
    job = make_job(annotations={BATCH_ID_ANNOTATION: "batch_abc"})
    st = reconcile(job, Observed(), NOW).status
    assert st.batch_id == "batch_abc"
    root = "s3://ob"
    before = locations_of(job.model_copy(update={"status": st}), root)
    edited = job.model_copy(
        update={
            "metadata": job.metadata.model_copy(
                update={"annotations": {BATCH_ID_ANNOTATION: "batch_other"}}
            ),
            "status": st,
        }
    )
    assert batch_id_of(edited) == "batch_abc"
    after = locations_of(edited, root)
    assert after == before and after.work_uri.endswith("/batch_abc")
    again = reconcile(edited, Observed(runner=RUNNING), NOW).status
    assert again.batch_id == "batch_abc"


def test_without_an_annotation_the_name_is_frozen() -> None:
    assert reconcile(make_job("batch-xyz"), Observed(), NOW).status.batch_id == "batch_xyz"


@pytest.mark.parametrize(
    "annotated", ["..", "../team-b/batch_x", "a/b", ".hidden", "", " x", "x" * 254, "batch_x\n"]
)
def test_an_invalid_batch_id_annotation_fails_before_anything_runs(annotated: str) -> None:
    job = make_job(annotations={BATCH_ID_ANNOTATION: annotated})
    decision = reconcile(job, Observed(), NOW)
    st = decision.status
    assert st.phase is Phase.FAILED and not decision.create_runner and st.batch_id is None
    failed = st.condition(ConditionType.FAILED)
    assert failed is not None and failed.reason == "InvalidSpec"
    assert BATCH_ID_ANNOTATION in (st.message or "")
    # The locations never use it, even before the decision is applied.
    assert "/.." not in locations_of(job, "s3://ob").work_uri
    assert_fits_the_crd(st)


# ----- runner pods that cannot start ------------------------------------------------------------


def _pod(phase: str = "Pending", waiting: str | None = None, **extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if waiting is not None:
        status["containerStatuses"] = [
            {"name": "runner", "state": {"waiting": {"reason": waiting, "message": "why"}}}
        ]
    status.update(extra)
    return {"metadata": {"name": "b1-runner-x"}, "status": status}


UNSCHEDULABLE: dict[str, Any] = {
    "conditions": [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu.",
        }
    ]
}


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (_pod(waiting="CreateContainerConfigError"), "CreateContainerConfigError"),
        (_pod(waiting="ErrImagePull"), "ErrImagePull"),
        (_pod(waiting="ImagePullBackOff"), "ImagePullBackOff"),
        (_pod(waiting="InvalidImageName"), "InvalidImageName"),
        (_pod(**UNSCHEDULABLE), "Unschedulable"),
        (_pod(waiting="ContainerCreating"), None),  # a normal step
        (_pod(), None),
        (_pod("Running"), None),
        (_pod("Succeeded"), None),
        (_pod("Failed", waiting="ErrImagePull"), None),
        ({**_pod(waiting="ErrImagePull"), "metadata": {"deletionTimestamp": "x"}}, None),
        ({}, None),
    ],
)
def test_pod_start_problem(pod: dict[str, Any], reason: str | None) -> None:
    problem = pod_start_problem(pod)
    assert (problem.reason if problem else None) == reason


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("CreateContainerConfigError", "CreateContainerConfigError"),
        ("Err Image/Pull!", "ErrImagePull"),
        ("9lives", "CannotStart"),
        ("", "CannotStart"),
        ("A" * 5000, "A" * 128),
        ("Trailing:", "Trailing"),
    ],
)
def test_reason_word(text: str, word: str) -> None:
    assert reason_word(text) == word


MISSING_SECRET = StartProblem("CreateContainerConfigError", 'secret "openbatch-s3" not found')


def _started_condition(st: BatchJobStatus) -> tuple[str, str, str] | None:
    cond = st.condition(ConditionType.RUNNER_STARTED)
    return None if cond is None else (cond.status.value, cond.reason, cond.message)


def test_a_runner_that_cannot_start_shows_it_then_fails_after_the_grace() -> None:
    job = admitted(phase="Validating")
    obs = Observed(runner=RUNNING, start_problem=MISSING_SECRET, start_grace_seconds=120)
    first = reconcile(job, obs, NOW)
    st = first.status
    assert st.phase is Phase.VALIDATING and not first.terminal
    assert _started_condition(st) == (
        "False",
        "CreateContainerConfigError",
        'secret "openbatch-s3" not found',
    )
    assert "cannot start" in (st.message or "") and "openbatch-s3" in (st.message or "")
    # Still within the grace: the condition keeps the instant it first went False.
    later = job.model_copy(update={"status": st})
    within = reconcile(later, obs, NOW + timedelta(seconds=119))
    assert not within.terminal
    cond = within.status.condition(ConditionType.RUNNER_STARTED)
    assert cond is not None and cond.last_transition_time == NOW
    # Past it: failed with the pod's reason, and the marker stops a runner that starts late.
    past = reconcile(later, obs, NOW + timedelta(seconds=120))
    st = past.status
    assert st.phase is Phase.FAILED and past.write_cancel_marker
    failed = st.condition(ConditionType.FAILED)
    assert failed is not None and failed.reason == "CannotStart"
    assert "CreateContainerConfigError" in (st.message or "")
    assert "openbatch-s3" in (st.message or "")
    assert_fits_the_crd(st)


def test_a_transient_start_problem_that_clears_leaves_runner_started_true() -> None:
    job = admitted(phase="Validating")
    pulling = Observed(runner=RUNNING, start_problem=StartProblem("ErrImagePull", "timeout"))
    st = reconcile(job, pulling, NOW).status
    backoff = Observed(runner=RUNNING, start_problem=StartProblem("ImagePullBackOff", "back-off"))
    st = reconcile(
        job.model_copy(update={"status": st}), backoff, NOW + timedelta(seconds=5)
    ).status
    assert _started_condition(st) == ("False", "ImagePullBackOff", "back-off")
    fine = reconcile(
        job.model_copy(update={"status": st}),
        Observed(runner=RUNNING),
        NOW + timedelta(seconds=9),
    ).status
    cond = fine.condition(ConditionType.RUNNER_STARTED)
    assert cond is not None and cond.status is ConditionStatus.TRUE and cond.reason == "Started"
    assert fine.phase is Phase.VALIDATING and fine.message == "runner is validating the input"


def test_a_hostile_start_problem_text_fits_the_condition() -> None:
    obs = Observed(runner=RUNNING, start_problem=StartProblem("no such/reason!" * 500, "m" * 10**6))
    st = reconcile(admitted(phase="Validating"), obs, NOW).status
    assert_fits_the_crd(st)


def test_batches_without_start_problems_get_no_runner_started_condition() -> None:
    st = reconcile(admitted(phase="Validating"), Observed(runner=RUNNING), NOW).status
    assert st.condition(ConditionType.RUNNER_STARTED) is None
