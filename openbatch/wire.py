"""OpenAI wire objects (snake_case) exactly as the Batch and Files APIs serve them.

Every key is emitted, with `null` where there is no value (contract §2.5): strict clients
and other languages' SDKs expect full objects.
"""

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


class FilePurpose(StrEnum):
    ASSISTANTS = "assistants"
    ASSISTANTS_OUTPUT = "assistants_output"
    BATCH = "batch"
    BATCH_OUTPUT = "batch_output"
    FINE_TUNE = "fine-tune"
    FINE_TUNE_RESULTS = "fine-tune-results"
    VISION = "vision"
    USER_DATA = "user_data"
    EVALS = "evals"


class WireModel(BaseModel):
    """Base for wire objects: unknown keys are kept so vendor extensions round-trip."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class BatchError(WireModel):
    """One batch-level (validation) error: OpenAI's `BatchError`."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(WireModel):
    object: Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class BatchRequestCounts(WireModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(WireModel):
    cached_tokens: int = 0


class OutputTokensDetails(WireModel):
    reasoning_tokens: int = 0


class BatchUsage(WireModel):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0

    def plus(self, other: "BatchUsage") -> "BatchUsage":
        """Sum two usage records (token totals of a batch are sums over its requests)."""
        return BatchUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            input_tokens_details=InputTokensDetails(
                cached_tokens=self.input_tokens_details.cached_tokens
                + other.input_tokens_details.cached_tokens
            ),
            output_tokens=self.output_tokens + other.output_tokens,
            output_tokens_details=OutputTokensDetails(
                reasoning_tokens=self.output_tokens_details.reasoning_tokens
                + other.output_tokens_details.reasoning_tokens
            ),
            total_tokens=self.total_tokens + other.total_tokens,
        )


class Batch(WireModel):
    """OpenAI's `Batch` object with every field of contract §2.5."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts = Field(default_factory=BatchRequestCounts)
    usage: BatchUsage = Field(default_factory=BatchUsage)
    metadata: dict[str, str] | None = None


class FileStatus(StrEnum):
    UPLOADED = "uploaded"
    PROCESSED = "processed"
    ERROR = "error"


class FileObject(WireModel):
    """OpenAI's `OpenAIFile`; `status` is deprecated upstream but still required."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: FilePurpose
    status: FileStatus = FileStatus.PROCESSED
    status_details: str | None = None


class FileDeleted(WireModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class ErrorBody(WireModel):
    """The inner object of OpenAI's error envelope; all four keys are always sent."""

    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorResponse(WireModel):
    error: ErrorBody


class ExpiresAfter(WireModel):
    """`expires_after` of an upload and `output_expires_after` of a batch (anchor created_at)."""

    anchor: Literal["created_at"] = "created_at"
    seconds: int


class CreateBatchRequest(WireModel):
    """The body of `POST /v1/batches` (contract §2.1), as parsed after validation.

    `idempotency_key` is OpenBatch's extension (DESIGN §9), sent with `extra_body`.
    """

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: ExpiresAfter | None = None
    idempotency_key: str | None = None


class ListBatchesResponse(WireModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class ListFilesResponse(WireModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class Model(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "openbatch"


class ModelList(WireModel):
    object: Literal["list"] = "list"
    data: list[Model]
