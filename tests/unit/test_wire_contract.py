"""Our wire objects must parse as the official client's types (contract §2.5, §1.6)."""

import orjson
from openai.types import Batch as OpenAIBatch
from openai.types import FileObject as OpenAIFileObject

from openbatch.wire import (
    Batch,
    BatchError,
    BatchErrors,
    BatchRequestCounts,
    BatchStatus,
    BatchUsage,
    ErrorBody,
    ErrorResponse,
    FileObject,
    FilePurpose,
)

EVERY_BATCH_KEY = {
    "id", "object", "endpoint", "model", "errors", "input_file_id", "completion_window",
    "status", "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at",
    "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
    "cancelled_at", "request_counts", "usage", "metadata",
}  # fmt: skip


def test_batch_emits_every_key_and_parses_strictly_as_openai_batch() -> None:
    batch = Batch(
        id="batch_abc",
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        completion_window="24h",
        status=BatchStatus.FAILED,
        created_at=1711471533,
        expires_at=1711557933,
        failed_at=1711471540,
        errors=BatchErrors(
            data=[BatchError(code="invalid_json_line", message="m", param=None, line=2)]
        ),
        request_counts=BatchRequestCounts(total=3, completed=1, failed=2),
        metadata={"k": "v"},
    )
    data = orjson.loads(batch.model_dump_json())
    assert set(data) == EVERY_BATCH_KEY
    parsed = OpenAIBatch.model_validate(data)  # validating, not the lenient construct
    assert parsed.status == "failed"
    assert parsed.errors is not None and parsed.errors.data is not None
    assert parsed.errors.data[0].line == 2
    assert parsed.usage is not None and parsed.usage.input_tokens_details.cached_tokens == 0


def test_validating_batch_has_zero_counts_and_usage() -> None:
    batch = Batch(
        id="batch_1",
        endpoint="/v1/embeddings",
        input_file_id="file-1",
        completion_window="24h",
        status=BatchStatus.VALIDATING,
        created_at=1,
    )
    data = orjson.loads(batch.model_dump_json())
    assert data["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert data["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert data["model"] is None and data["errors"] is None
    OpenAIBatch.model_validate(data)


def test_file_object_parses_as_openai_file_object() -> None:
    f = FileObject(
        id="file-abc",
        bytes=120,
        created_at=1,
        expires_at=2592001,
        filename="in.jsonl",
        purpose=FilePurpose.BATCH_OUTPUT,
    )
    data = orjson.loads(f.model_dump_json())
    assert data["status"] == "processed" and data["status_details"] is None
    parsed = OpenAIFileObject.model_validate(data)
    assert parsed.purpose == "batch_output"


def test_usage_sums() -> None:
    a = BatchUsage(input_tokens=1, output_tokens=2, total_tokens=3)
    assert a.plus(a).total_tokens == 6


def test_error_envelope_has_all_four_keys() -> None:
    data = orjson.loads(ErrorResponse(error=ErrorBody(message="x")).model_dump_json())
    assert data == {
        "error": {"message": "x", "type": "invalid_request_error", "param": None, "code": None}
    }
