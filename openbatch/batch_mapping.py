"""The one place the BatchJob resource (camelCase) meets the OpenAI wire objects (snake_case).

`batch_from_resource` renders the OpenAI `Batch` the shim serves for every GET: the CR is the
source of truth for batch state (DESIGN §2), so nothing here reads storage or a clock. The
`status_*_from_wire` helpers go the other way, for the operator copying a runner's progress
record (wire shapes) into `status`, trimmed to the CRD's bounds.

Decisions fixed here:
- Batch id: the `openbatch.dev/batch-id` annotation the shim writes; for a kubectl-made
  object, its name with a leading `batch-` turned into `batch_`, else the name itself. Each
  rule survives `openbatch.ids.resource_name` unchanged, so the shim finds the CR again from
  the id it served. The first reconcile freezes the id into `status.batchID`, which wins
  from then on (an edited annotation changes nothing).
- `input_file_id` of an S3 input (no uploaded file exists): `file-s3-` followed by the first
  32 hex digits of SHA-256 over `s3://<bucket>/<key>`. It is stable for an object location,
  fits the `fileID` pattern, cannot collide with generated ids (those have no `-` after
  `file-`) and does not reveal the key. The Files API does not know it (404 on retrieve).
- `expires_at` is creation + completion window from the spec, so even the create response
  (before the operator ran) has it, as OpenAI's does (contract §2.1).
- `errors` only for a `Failed` batch with recorded validation errors; OpenAI sends `null`
  otherwise, even when single requests failed (those live in the error file).
- A batch the operator has not seen yet (no phase) is `validating`; one asked to cancel
  (`spec.cancel`) that the operator has not moved yet is `cancelling`, since the request.
"""

import hashlib
import re
from datetime import UTC, datetime

from openbatch import wire
from openbatch.endpoints import Endpoint
from openbatch.ids import resource_name
from openbatch.resource import (
    BATCH_ID_ANNOTATION,
    BATCH_ID_PATTERN,
    CANCEL_REQUESTED_ANNOTATION,
    COMPLETION_WINDOW_ANNOTATION,
    CREATED_NS_ANNOTATION,
    IDEMPOTENCY_DIGEST_ANNOTATION,
    IDEMPOTENCY_KEY_ANNOTATION,
    MAX_BATCH_ID_LENGTH,
    MAX_ERROR_CODE_LENGTH,
    MAX_ERROR_MESSAGE_LENGTH,
    MAX_ERROR_PARAM_LENGTH,
    MAX_STATUS_ERRORS,
    BatchJob,
    BatchJobSpec,
    Concurrency,
    ErrorItem,
    Input,
    InputTokensDetails,
    ObjectMeta,
    OutputTokensDetails,
    Phase,
    Usage,
)

STATUS_OF_PHASE: dict[Phase, wire.BatchStatus] = {
    Phase.VALIDATING: wire.BatchStatus.VALIDATING,
    Phase.IN_PROGRESS: wire.BatchStatus.IN_PROGRESS,
    Phase.FINALIZING: wire.BatchStatus.FINALIZING,
    Phase.COMPLETED: wire.BatchStatus.COMPLETED,
    Phase.FAILED: wire.BatchStatus.FAILED,
    Phase.EXPIRED: wire.BatchStatus.EXPIRED,
    Phase.CANCELLING: wire.BatchStatus.CANCELLING,
    Phase.CANCELLED: wire.BatchStatus.CANCELLED,
}

_S3_FILE_ID_PREFIX = "file-s3-"
_GENERATED_NAME_PREFIX = "batch-"


class UnpersistedResource(ValueError):
    """The object has no `creationTimestamp` yet, so it has no `created_at` to report.

    Only objects read back from the API server can be rendered; a manifest being built cannot.
    """


_BATCH_ID = re.compile(BATCH_ID_PATTERN)


def valid_batch_id(text: str) -> bool:
    """A batch id names the work dir (`batches/<ns>/<id>`): one bounded, safe path segment."""
    return len(text) <= MAX_BATCH_ID_LENGTH and _BATCH_ID.fullmatch(text) is not None


def annotated_batch_id_problem(job: BatchJob) -> str | None:
    """Why the batch-id annotation cannot name a work dir, or None (absent or valid)."""
    annotated = job.metadata.annotations.get(BATCH_ID_ANNOTATION)
    if annotated is None or valid_batch_id(annotated):
        return None
    return (
        f"annotation {BATCH_ID_ANNOTATION} {annotated[:80]!r} is not a batch id (at most "
        f"{MAX_BATCH_ID_LENGTH} letters, digits, '_', '.' and '-', starting with a letter or digit)"
    )


def batch_id_of(job: BatchJob) -> str:
    """The OpenAI batch id a BatchJob is served under (rules in the module docstring).

    Once the operator has frozen it into `status.batchID` that value wins: the id selects
    the work dir, so editing the annotation later must change nothing. An annotation that is
    not a valid id is ignored here (the lifecycle fails such a batch before it starts).
    """
    frozen = job.status.batch_id
    if frozen:
        return frozen
    annotated = job.metadata.annotations.get(BATCH_ID_ANNOTATION)
    if annotated and valid_batch_id(annotated):
        return annotated
    name = job.metadata.name
    if name.startswith(_GENERATED_NAME_PREFIX):
        return "batch_" + name[len(_GENERATED_NAME_PREFIX) :]
    return name


def s3_input_file_id(bucket: str, key: str) -> str:
    """The stable synthetic `input_file_id` of an S3 input (see the module docstring)."""
    digest = hashlib.sha256(f"s3://{bucket}/{key}".encode()).hexdigest()
    return _S3_FILE_ID_PREFIX + digest[:32]


def input_file_id_of(source: Input) -> str:
    if source.file_id is not None:
        return source.file_id
    if source.s3 is None:  # unreachable: Input's validator requires exactly one
        raise ValueError("input has neither fileID nor s3")
    return s3_input_file_id(source.s3.bucket, source.s3.key)


def _unix(value: datetime | None) -> int | None:
    """RFC 3339 time -> whole Unix seconds (OpenAI timestamps are integers)."""
    return None if value is None else int(value.timestamp())


def batch_from_resource(obj: BatchJob) -> wire.Batch:
    """Render a BatchJob as the OpenAI `Batch` object, every key present."""
    created = obj.metadata.creation_timestamp
    if created is None:
        raise UnpersistedResource(f"BatchJob {obj.metadata.name!r} has no creationTimestamp")
    spec, status = obj.spec, obj.status
    phase = status.phase or Phase.VALIDATING
    cancelling_time = status.cancelling_time
    if spec.cancel and phase in (Phase.VALIDATING, Phase.IN_PROGRESS):
        # Asked to cancel, not yet seen by the operator: it is cancelling from now on, and
        # only ever becomes cancelled (contract §3.3).
        phase = Phase.CANCELLING
        requested = obj.metadata.annotations.get(CANCEL_REQUESTED_ANNOTATION, "")
        if cancelling_time is None and requested.isdigit():
            cancelling_time = datetime.fromtimestamp(int(requested), UTC)
    errors = None
    if phase is Phase.FAILED and status.errors:
        errors = wire.BatchErrors(
            data=[
                wire.BatchError(code=e.code, message=e.message, param=e.param, line=e.line)
                for e in status.errors
            ]
        )
    counts, usage = status.request_counts, status.usage
    return wire.Batch(
        id=batch_id_of(obj),
        endpoint=spec.endpoint.value,
        model=status.model,
        errors=errors,
        input_file_id=input_file_id_of(spec.input),
        completion_window=obj.metadata.annotations.get(
            COMPLETION_WINDOW_ANNOTATION, spec.completion_window
        ),
        status=STATUS_OF_PHASE[phase],
        output_file_id=status.output_file_id,
        error_file_id=status.error_file_id,
        created_at=int(created.timestamp()),
        in_progress_at=_unix(status.in_progress_time),
        expires_at=_unix(obj.deadline()),
        finalizing_at=_unix(status.finalizing_time),
        completed_at=_unix(status.completed_time),
        failed_at=_unix(status.failed_time),
        expired_at=_unix(status.expired_time),
        cancelling_at=_unix(cancelling_time),
        cancelled_at=_unix(status.cancelled_time),
        request_counts=wire.BatchRequestCounts(
            total=counts.total, completed=counts.completed, failed=counts.failed
        ),
        usage=wire.BatchUsage(
            input_tokens=usage.input_tokens,
            input_tokens_details=wire.InputTokensDetails(
                cached_tokens=usage.input_tokens_details.cached_tokens
            ),
            output_tokens=usage.output_tokens,
            output_tokens_details=wire.OutputTokensDetails(
                reasoning_tokens=usage.output_tokens_details.reasoning_tokens
            ),
            total_tokens=usage.total_tokens,
        ),
        metadata=dict(spec.metadata) if spec.metadata is not None else None,
    )


def status_usage_from_wire(usage: wire.BatchUsage) -> Usage:
    """A runner's usage totals (wire shape) as `status.usage`, each within its bounds."""
    return Usage(
        input_tokens=bounded_count(usage.input_tokens),
        input_tokens_details=InputTokensDetails(
            cached_tokens=bounded_count(usage.input_tokens_details.cached_tokens)
        ),
        output_tokens=bounded_count(usage.output_tokens),
        output_tokens_details=OutputTokensDetails(
            reasoning_tokens=bounded_count(usage.output_tokens_details.reasoning_tokens)
        ),
        total_tokens=bounded_count(usage.total_tokens),
    )


# The largest count or token total copied into a status: JSON-safe, well inside int64, and
# small enough that `status.progress` ("done/total", at most 32 characters) always fits.
MAX_COUNT = 10**15 - 1


def clip_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters (the last one an ellipsis when it was cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_count(value: int) -> int:
    """A count from outside (a runner's record) within a status field's bounds."""
    return min(max(value, 0), MAX_COUNT)


def status_errors_from_wire(errors: wire.BatchErrors | None) -> list[ErrorItem]:
    """A runner's validation errors as `status.errors`, cut to the CRD's bounds.

    Messages quote user input (model names, custom ids) of any length, and the API server
    would reject the whole status update over one long string, so each text is clipped and
    at most `MAX_STATUS_ERRORS` are kept; the uncapped total belongs in `errorCount`.
    """
    if errors is None:
        return []
    return [
        ErrorItem(
            code=clip_text(e.code, MAX_ERROR_CODE_LENGTH) or "unknown_error",
            message=clip_text(e.message, MAX_ERROR_MESSAGE_LENGTH),
            param=None if e.param is None else clip_text(e.param, MAX_ERROR_PARAM_LENGTH),
            line=bounded_count(e.line) if e.line is not None and e.line >= 1 else None,
        )
        for e in errors.data[:MAX_STATUS_ERRORS]
    ]


def batchjob_from_create(
    request: wire.CreateBatchRequest,
    *,
    batch_id: str,
    namespace: str,
    spec_window: str,
    created_ns: int,
    idempotency_digest: str | None = None,
    concurrency: Concurrency | None = None,
) -> BatchJob:
    """The BatchJob a validated `POST /v1/batches` becomes (the reverse of the rendering).

    `spec_window` is the request's completion window as the spec spells it (`168h` for
    `7d`; the shim has checked it against the windows it allows); the request's own spelling
    is kept in an annotation and echoed back.
    """
    annotations = {
        BATCH_ID_ANNOTATION: batch_id,
        CREATED_NS_ANNOTATION: str(created_ns),
    }
    if request.completion_window != spec_window:
        annotations[COMPLETION_WINDOW_ANNOTATION] = request.completion_window
    if request.idempotency_key is not None and idempotency_digest is not None:
        annotations[IDEMPOTENCY_KEY_ANNOTATION] = request.idempotency_key
        annotations[IDEMPOTENCY_DIGEST_ANNOTATION] = idempotency_digest
    expires = request.output_expires_after
    return BatchJob(
        metadata=ObjectMeta(
            name=resource_name(batch_id), namespace=namespace, annotations=annotations
        ),
        spec=BatchJobSpec(
            input=Input(file_id=request.input_file_id),
            endpoint=Endpoint(request.endpoint),
            completion_window=spec_window,
            concurrency=concurrency or Concurrency(),
            metadata=request.metadata,
            output_expires_after_seconds=expires.seconds if expires is not None else None,
        ),
    )


def created_order(job: BatchJob) -> tuple[int, str]:
    """Sort key of "newest first" listings: creation time in ns, then name (a total order)."""
    raw = job.metadata.annotations.get(CREATED_NS_ANNOTATION, "")
    if raw.isdigit():
        ns = int(raw)
    elif job.metadata.creation_timestamp is not None:
        ns = int(job.metadata.creation_timestamp.timestamp()) * 1_000_000_000
    else:
        ns = 0
    return ns, job.metadata.name
