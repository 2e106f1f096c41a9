"""BatchJob -> OpenAI `Batch`: the object the shim serves, checked against the official client.

Every rendered batch must carry every key and parse with `openai.types.Batch.model_validate`
(validating, not the lenient `construct`).
"""

import hashlib
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from openai.types import Batch as OpenAIBatch

from openbatch import wire
from openbatch.batch_mapping import (
    STATUS_OF_PHASE,
    UnpersistedResource,
    batch_from_resource,
    batch_id_of,
    s3_input_file_id,
    status_errors_from_wire,
    status_usage_from_wire,
)
from openbatch.ids import new_batch_id, resource_name
from openbatch.resource import (
    FILE_ID_PATTERN,
    MAX_ERROR_MESSAGE_LENGTH,
    MAX_STATUS_ERRORS,
    BatchJob,
    Phase,
    format_time,
    parse_completion_window,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "crds" / "examples"
CREATED = "2026-03-01T12:00:00Z"
CREATED_AT = 1772366400  # CREATED as Unix seconds
DAY = 86400

EVERY_BATCH_KEY = {
    "id", "object", "endpoint", "model", "errors", "input_file_id", "completion_window",
    "status", "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at",
    "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
    "cancelled_at", "request_counts", "usage", "metadata",
}  # fmt: skip
# Timestamps that depend on the phase (created_at and expires_at are always set).
PHASE_TIMES = {
    "in_progress_at": "inProgressTime",
    "finalizing_at": "finalizingTime",
    "completed_at": "completedTime",
    "failed_at": "failedTime",
    "expired_at": "expiredTime",
    "cancelling_at": "cancellingTime",
    "cancelled_at": "cancelledTime",
}


def _at(offset: int) -> str:
    """CREATED plus `offset` seconds, RFC 3339."""
    return format_time(datetime.fromisoformat(CREATED) + timedelta(seconds=offset))


def _job(
    status: dict[str, Any] | None = None,
    *,
    meta: dict[str, Any] | None = None,
    **spec: Any,
) -> BatchJob:
    """A BatchJob as read back from the API server; `meta` overrides metadata fields."""
    return BatchJob.model_validate(
        {
            "apiVersion": "openbatch.dev/v1alpha1",
            "kind": "BatchJob",
            "metadata": {
                "name": "batch-0123abcd",
                "namespace": "team-a",
                "creationTimestamp": CREATED,
                "generation": 1,
                **(meta or {}),
            },
            "spec": {
                "input": {"fileID": "file-in"},
                "endpoint": "/v1/chat/completions",
                **spec,
            },
            "status": status or {},
        }
    )


def _render(job: BatchJob) -> dict[str, Any]:
    """The JSON the shim would send, checked against the official client's model."""
    data: dict[str, Any] = orjson.loads(batch_from_resource(job).model_dump_json())
    assert set(data) == EVERY_BATCH_KEY
    OpenAIBatch.model_validate(data)
    return data


def _condition(type_: str, status: str, reason: str) -> dict[str, str]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": "",
        "lastTransitionTime": CREATED,
    }


COUNTS = {"total": 10, "completed": 7, "failed": 2}
ERRORS = [
    {
        "code": "invalid_json_line",
        "message": "This line is not parseable as valid JSON.",
        "line": 2,
    },
    {"code": "invalid_request", "message": "Cannot find file.", "param": "file_id"},
]

# (name, status as the operator writes it, OpenAI status, set phase timestamps, output, error)
PHASES: list[tuple[str, dict[str, Any], str, set[str], str | None, str | None]] = [
    ("not seen yet", {}, "validating", set(), None, None),
    (
        "queued",
        {"phase": "Validating", "conditions": [_condition("Admitted", "False", "Queued")]},
        "validating",
        set(),
        None,
        None,
    ),
    (
        "in progress",
        {"phase": "InProgress", "inProgressTime": _at(3), "requestCounts": COUNTS},
        "in_progress",
        {"in_progress_at"},
        None,
        None,
    ),
    (
        "finalizing",
        {"phase": "Finalizing", "inProgressTime": _at(3), "finalizingTime": _at(100)},
        "finalizing",
        {"in_progress_at", "finalizing_at"},
        None,
        None,
    ),
    (
        "completed",
        {
            "phase": "Completed",
            "inProgressTime": _at(3),
            "finalizingTime": _at(100),
            "completedTime": _at(102),
            "outputFileID": "file-out",
            "errorFileID": "file-err",
            "requestCounts": COUNTS,
        },
        "completed",
        {"in_progress_at", "finalizing_at", "completed_at"},
        "file-out",
        "file-err",
    ),
    (
        "completed, every request failed",
        {"phase": "Completed", "completedTime": _at(50), "errorFileID": "file-err"},
        "completed",
        {"completed_at"},
        None,
        "file-err",
    ),
    (
        "failed validation",
        {"phase": "Failed", "failedTime": _at(2), "errors": ERRORS, "errorCount": 2},
        "failed",
        {"failed_at"},
        None,
        None,
    ),
    (
        "expired",
        {
            "phase": "Expired",
            "inProgressTime": _at(3),
            "expiredTime": _at(DAY + 5),
            "outputFileID": "file-out",
            "errorFileID": "file-err",
        },
        "expired",
        {"in_progress_at", "expired_at"},
        "file-out",
        "file-err",
    ),
    (
        "cancelling",
        {"phase": "Cancelling", "inProgressTime": _at(3), "cancellingTime": _at(60)},
        "cancelling",
        {"in_progress_at", "cancelling_at"},
        None,
        None,
    ),
    (
        "cancelled",
        {
            "phase": "Cancelled",
            "inProgressTime": _at(3),
            "cancellingTime": _at(60),
            "cancelledTime": _at(65),
            "outputFileID": "file-out",
            "errorFileID": "file-err",
        },
        "cancelled",
        {"in_progress_at", "cancelling_at", "cancelled_at"},
        "file-out",
        "file-err",
    ),
]


@pytest.mark.parametrize(
    ("status", "expected", "times", "output", "error"),
    [p[1:] for p in PHASES],
    ids=[p[0] for p in PHASES],
)
def test_phase_maps_to_status_timestamps_and_files(
    status: dict[str, Any], expected: str, times: set[str], output: str | None, error: str | None
) -> None:
    data = _render(_job(status))
    assert data["status"] == expected
    assert data["object"] == "batch"
    assert data["created_at"] == CREATED_AT
    assert data["expires_at"] == CREATED_AT + DAY
    assert {key for key in PHASE_TIMES if data[key] is not None} == times
    for key in times:
        assert data[key] == CREATED_AT + _offset(status[PHASE_TIMES[key]])
    assert (data["output_file_id"], data["error_file_id"]) == (output, error)
    assert (data["errors"] is not None) == (expected == "failed")


def _offset(text: str) -> int:
    return int((datetime.fromisoformat(text) - datetime.fromisoformat(CREATED)).total_seconds())


def test_every_phase_has_an_openai_status() -> None:
    assert set(STATUS_OF_PHASE) == set(Phase)
    assert {s.value for s in STATUS_OF_PHASE.values()} == {s.value for s in wire.BatchStatus}
    assert len(set(STATUS_OF_PHASE.values())) == len(Phase)  # 1:1 (DESIGN §3)


def test_failed_batch_reports_its_validation_errors() -> None:
    data = _render(_job({"phase": "Failed", "failedTime": _at(2), "errors": ERRORS}))
    assert data["errors"] == {
        "object": "list",
        "data": [
            {
                "code": "invalid_json_line",
                "message": "This line is not parseable as valid JSON.",
                "param": None,
                "line": 2,
            },
            {
                "code": "invalid_request",
                "message": "Cannot find file.",
                "param": "file_id",
                "line": None,
            },
        ],
    }
    parsed = OpenAIBatch.model_validate(data)
    assert parsed.errors is not None and parsed.errors.data is not None
    assert parsed.errors.data[0].line == 2 and parsed.errors.data[1].param == "file_id"


@pytest.mark.parametrize(
    "status",
    [
        {"phase": "Failed", "failedTime": _at(2), "message": "runner pods kept failing"},
        {"phase": "Completed", "completedTime": _at(50), "errors": ERRORS},
    ],
    ids=["failed without validation errors", "errors recorded but not failed"],
)
def test_errors_are_null_unless_failed_with_validation_errors(status: dict[str, Any]) -> None:
    assert _render(_job(status))["errors"] is None


def test_counts_usage_and_model_are_copied() -> None:
    usage = {
        "inputTokens": 1500,
        "inputTokensDetails": {"cachedTokens": 1024},
        "outputTokens": 500,
        "outputTokensDetails": {"reasoningTokens": 300},
        "totalTokens": 2000,
    }
    status = {"phase": "InProgress", "requestCounts": COUNTS, "usage": usage, "model": "tiny"}
    data = _render(_job(status))
    assert data["request_counts"] == COUNTS
    assert data["usage"] == {
        "input_tokens": 1500,
        "input_tokens_details": {"cached_tokens": 1024},
        "output_tokens": 500,
        "output_tokens_details": {"reasoning_tokens": 300},
        "total_tokens": 2000,
    }
    assert data["model"] == "tiny"


def test_new_batch_has_zero_counts_and_usage_and_no_model() -> None:
    data = _render(_job())
    assert data["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert data["usage"]["input_tokens_details"] == {"cached_tokens": 0}
    assert data["usage"]["total_tokens"] == 0
    assert data["model"] is None and data["metadata"] is None


def test_spec_fields_are_echoed() -> None:
    data = _render(
        _job(
            endpoint="/v1/embeddings",
            completionWindow="90m",
            metadata={"customer_id": "user_1", "note": ""},
        )
    )
    assert data["endpoint"] == "/v1/embeddings"
    assert data["completion_window"] == "90m"
    assert data["expires_at"] == CREATED_AT + 90 * 60
    assert data["input_file_id"] == "file-in"
    assert data["metadata"] == {"customer_id": "user_1", "note": ""}


def test_times_become_whole_unix_seconds_in_any_zone() -> None:
    job = _job(
        {"phase": "InProgress", "inProgressTime": "2026-03-01T14:00:03.900+02:00"},
        meta={"creationTimestamp": "2026-03-01T12:00:00.5Z"},
    )
    data = _render(job)
    assert data["created_at"] == CREATED_AT
    assert data["in_progress_at"] == CREATED_AT + 3


def test_object_without_creation_time_cannot_be_rendered() -> None:
    job = _job(meta={"creationTimestamp": None})
    with pytest.raises(UnpersistedResource):
        batch_from_resource(job)


# ------------------------------------------------------------------ ids


def test_s3_input_gets_a_stable_synthetic_file_id() -> None:
    job = _job(input={"s3": {"bucket": "openbatch", "key": "inputs/a.jsonl"}})
    file_id = _render(job)["input_file_id"]
    digest = hashlib.sha256(b"s3://openbatch/inputs/a.jsonl").hexdigest()
    assert file_id == "file-s3-" + digest[:32] == s3_input_file_id("openbatch", "inputs/a.jsonl")
    assert re.fullmatch(FILE_ID_PATTERN, file_id)
    assert s3_input_file_id("openbatch", "inputs/b.jsonl") != file_id
    assert s3_input_file_id("openbatch2", "inputs/a.jsonl") != file_id


@pytest.mark.parametrize(
    ("name", "annotations", "expected"),
    [
        ("batch-0123abcd", {}, "batch_0123abcd"),
        ("nightly-eval", {}, "nightly-eval"),
        ("batch-0123abcd", {"openbatch.dev/batch-id": "batch_0123ABCD"}, "batch_0123ABCD"),
    ],
)
def test_batch_id(name: str, annotations: dict[str, str], expected: str) -> None:
    job = _job(meta={"name": name, "annotations": annotations})
    assert batch_id_of(job) == _render(job)["id"] == expected
    assert resource_name(expected) == name  # the shim finds the object again from the id


def test_generated_batch_ids_round_trip_through_the_resource_name() -> None:
    batch_id = new_batch_id()
    assert batch_id_of(_job(meta={"name": resource_name(batch_id)})) == batch_id


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_render_once_created(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    manifest["metadata"]["creationTimestamp"] = CREATED
    job = BatchJob.model_validate(manifest)
    data = _render(job)
    assert data["status"] == "validating" and data["endpoint"] == manifest["spec"]["endpoint"]
    window = parse_completion_window(manifest["spec"].get("completionWindow", "24h"))
    assert data["expires_at"] - data["created_at"] == window.total_seconds()


def test_file_example_keeps_the_annotated_id_and_metadata() -> None:
    manifest = yaml.safe_load((EXAMPLES / "batchjob-file.yaml").read_text())
    manifest["metadata"]["creationTimestamp"] = CREATED
    data = _render(BatchJob.model_validate(manifest))
    assert data["id"] == manifest["metadata"]["annotations"]["openbatch.dev/batch-id"]
    assert data["input_file_id"] == manifest["spec"]["input"]["fileID"]
    assert data["metadata"] == manifest["spec"]["metadata"]


# ------------------------------------------------------------------ wire -> status


def test_runner_usage_round_trips_through_status() -> None:
    usage = wire.BatchUsage(
        input_tokens=9,
        input_tokens_details=wire.InputTokensDetails(cached_tokens=4),
        output_tokens=5,
        output_tokens_details=wire.OutputTokensDetails(reasoning_tokens=2),
        total_tokens=14,
    )
    job = _job()
    job.status.usage = status_usage_from_wire(usage)
    assert batch_from_resource(job).usage == usage


def test_runner_errors_are_cut_to_the_status_bounds() -> None:
    errors = wire.BatchErrors(
        data=[
            wire.BatchError(code="duplicate_custom_id", message="x" * 10_000, param=None, line=n)
            for n in range(1, 151)
        ]
        + [wire.BatchError(code="c", message="m", param="p" * 300, line=0)]
    )
    items = status_errors_from_wire(errors)
    assert len(items) == MAX_STATUS_ERRORS
    assert len(items[0].message) == MAX_ERROR_MESSAGE_LENGTH and items[0].message.endswith("…")
    assert [item.line for item in items] == list(range(1, 101))
    tail = status_errors_from_wire(wire.BatchErrors(data=errors.data[-1:]))
    assert tail[0].line is None and tail[0].param is not None and len(tail[0].param) == 256
    assert status_errors_from_wire(None) == []


def test_runner_errors_render_back_unchanged_when_within_bounds() -> None:
    errors = wire.BatchErrors(
        data=[wire.BatchError(code="invalid_url", message="m", param="url", line=3)]
    )
    job = _job({"phase": "Failed", "failedTime": _at(1)})
    job.status.errors = status_errors_from_wire(errors)
    assert batch_from_resource(job).errors == errors
