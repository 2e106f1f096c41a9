"""The BatchJob custom resource (`batchjobs.openbatch.dev/v1alpha1`) as typed models.

Kubernetes objects are camelCase (`fileID`, `inProgressTime`); Python attributes are
snake_case and every model reads and writes the camelCase names through one alias
generator. The hand-written CRD in `crds/batchjobs.openbatch.dev.yaml` is the schema the API
server enforces; `tests/unit/test_crd.py` fails when this module and that file disagree on a
field, a bound, an enum or a default.

Readers ignore unknown fields (Kubernetes client convention): a CRD upgraded ahead of the
operator must not make the operator crash on objects it cannot fully understand. The API
server already rejects unknown fields on writes (strict field validation) and prunes them.

This module imports no Kubernetes client: the shim, the operator and the tests all share it.
"""

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    field_validator,
    model_validator,
)

from openbatch.endpoints import Endpoint
from openbatch.runner_args import (
    DEFAULT_IN_FLIGHT,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_REQUEST_TIMEOUT,
    WindowMode,
)
from openbatch.secret_ref import SecretKeyRef

GROUP = "openbatch.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "BatchJob"
PLURAL = "batchjobs"
SINGULAR = "batchjob"
SHORT_NAME = "bj"
CRD_NAME = f"{PLURAL}.{GROUP}"

# Written by the API shim: the exact OpenAI batch id, because a CR name is only the DNS-safe
# (lossy) form of it. Objects created with kubectl have no such annotation.
BATCH_ID_ANNOTATION = f"{GROUP}/batch-id"
# Written by the shim: the completion window exactly as the client sent it (`7d`), when the
# spec had to spell it in hours (`168h`); the Batch object echoes what was sent.
COMPLETION_WINDOW_ANNOTATION = f"{GROUP}/completion-window"
# Written by the shim for idempotent creates (DESIGN §9): the key and a digest of the
# create parameters it was used with.
IDEMPOTENCY_KEY_ANNOTATION = f"{GROUP}/idempotency-key"
IDEMPOTENCY_DIGEST_ANNOTATION = f"{GROUP}/idempotency-digest"
# Written by the shim: creation time in nanoseconds, so that listing newest-first is a total
# order even when many batches share one creationTimestamp second.
CREATED_NS_ANNOTATION = f"{GROUP}/created-ns"
# Written by the shim with `spec.cancel`: when the cancel was asked (Unix seconds), the
# Batch object's `cancelling_at` until the operator records its own time.
CANCEL_REQUESTED_ANNOTATION = f"{GROUP}/cancel-requested-at"

DEFAULT_COMPLETION_WINDOW = "24h"
# The longest window the operator accepts. OpenAI only offers 24h; a week covers large
# self-hosted backfills while keeping child Jobs' activeDeadlineSeconds meaningful.
MAX_COMPLETION_WINDOW = timedelta(hours=168)

# Bounds shared with the CRD (the test compares them field by field).
MAX_STATUS_ERRORS = 100  # status.errors items; errorCount keeps the uncapped total
MAX_ERROR_MESSAGE_LENGTH = 4096
MAX_ERROR_CODE_LENGTH = 128
MAX_ERROR_PARAM_LENGTH = 256
MAX_METADATA_PAIRS = 16  # OpenAI `Metadata`
MAX_METADATA_KEY_LENGTH = 64
MAX_METADATA_VALUE_LENGTH = 512
MAX_MODEL_LENGTH = 256  # status.model
MAX_STATUS_MESSAGE_LENGTH = 32768  # status.message and every condition's message
MAX_BATCH_ID_LENGTH = 253  # a batch id is a path segment of the work dir (DESIGN §4)

# OpenAI's `expires_after` / `output_expires_after` bounds: 1 hour to 30 days.
MIN_EXPIRES_AFTER_SECONDS = 3600
MAX_EXPIRES_AFTER_SECONDS = 2_592_000
DEFAULT_OUTPUT_EXPIRES_AFTER_SECONDS = MAX_EXPIRES_AFTER_SECONDS

FILE_ID_PATTERN = r"^file-[A-Za-z0-9_-]{1,64}$"
# S3 bucket naming rules: 3-63 lowercase letters, digits, dots and hyphens, alphanumeric ends.
S3_BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
COMPLETION_WINDOW_PATTERN = r"^[1-9][0-9]{0,5}[smh]$"
# An absolute http(s) base URL without query or fragment (the runner appends endpoint paths)
# and without userinfo (`user:pw@host` is refused in every mode: docs/security.md).
URL_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
URL_PATH_PATTERN = r"^/\S*$"
# metav1.Condition's reason: a CamelCase word meant for machines.
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
PROGRESS_PATTERN = r"^[0-9]+/[0-9]+$"
# A batch id (`batch_…`, or a name-derived one): one safe path segment, never `.` or `..`.
BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

_ACRONYMS = {"id": "ID", "uri": "URI", "url": "URL"}


def _camel(name: str) -> str:
    """`output_file_id` -> `outputFileID`: Kubernetes spells initialisms in capitals."""
    first, *rest = name.split("_")
    return first + "".join(_ACRONYMS.get(word, word.capitalize()) for word in rest)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes `metav1.Time`."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# A timestamp in a Kubernetes object: parsed from RFC 3339 (a zone is required, so no value is
# ever read as local time) and written back in the canonical `…Z` form.
Time = Annotated[AwareDatetime, PlainSerializer(format_time, return_type=str, when_used="json")]

_WINDOW = re.compile(COMPLETION_WINDOW_PATTERN)
_WINDOW_UNITS = {"s": "seconds", "m": "minutes", "h": "hours"}


def parse_completion_window(text: str) -> timedelta:
    """`"24h"` -> 24 hours. Raises ValueError for another format or more than 168h.

    The CRD checks the same two things (a pattern and a CEL `duration()` rule), so an object
    the API server accepted always parses; the shim calls this on `completion_window`.
    """
    if not _WINDOW.fullmatch(text):
        raise ValueError(
            f"completion window {text!r} must be a whole number of seconds, minutes or hours "
            "such as '24h', '90m' or '3600s'"
        )
    window = timedelta(**{_WINDOW_UNITS[text[-1]]: int(text[:-1])})
    if window > MAX_COMPLETION_WINDOW:
        raise ValueError(f"completion window {text!r} is longer than the maximum of 168h")
    return window


class KubeModel(BaseModel):
    """Base of every model here: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
    )

    def to_api(self) -> dict[str, Any]:
        """The JSON body to send to the API server: camelCase, RFC 3339 times, unset fields
        left out (a null would be pruned, or for a nullable field stored as null)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SpecModel(KubeModel):
    """Spec parts are frozen: the spec is immutable after creation (except `cancel`)."""

    model_config = ConfigDict(frozen=True)


# ---------------------------------------------------------------------------- spec


class S3Object(SpecModel):
    """An input file read straight from object storage (kubectl users, no upload)."""

    bucket: str = Field(min_length=3, max_length=63, pattern=S3_BUCKET_PATTERN)
    key: str = Field(min_length=1, max_length=1024)


class Input(SpecModel):
    """Where the JSONL input is: an uploaded file (the shim's path) or an S3 object."""

    file_id: str | None = Field(default=None, max_length=69, pattern=FILE_ID_PATTERN)
    s3: S3Object | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.file_id is None) == (self.s3 is None):
            raise ValueError("input needs exactly one of fileID or s3")
        return self


class ServiceRef(SpecModel):
    """A Service in the BatchJob's namespace that serves the OpenAI API."""

    name: str = Field(max_length=63, pattern=DNS_LABEL_PATTERN)
    port: int = Field(ge=1, le=65535)
    path: str = Field(default="/v1", max_length=256, pattern=URL_PATH_PATTERN)


class ModelServer(SpecModel):
    """Overrides the routing table (DESIGN §7): where this batch's requests go."""

    url: str | None = Field(default=None, max_length=2048, pattern=URL_PATTERN)
    service_ref: ServiceRef | None = None
    # The bearer token for this target: a Secret in the BatchJob's own namespace. Platform
    # keys (routing-table entries) are never sent to a target a spec names.
    api_key_secret_ref: SecretKeyRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.url is None) == (self.service_ref is None):
            raise ValueError("modelServer needs exactly one of url or serviceRef")
        return self


class Concurrency(SpecModel):
    """Per-batch request concurrency and retry bounds (DESIGN §6).

    `mode` says how the window is sized; when it is absent, the older `adaptive` flag
    decides (`adaptive` or `fixed`). When both are given, `mode` wins.
    """

    max_in_flight: int = Field(default=DEFAULT_IN_FLIGHT, ge=1, le=4096)
    # Absent unless given (also in dumps), so specs written before `mode` existed keep
    # their exact form (the CRD's default, idempotency digests).
    mode: WindowMode | None = Field(default=None, exclude_if=lambda value: value is None)
    adaptive: bool = False
    request_timeout_seconds: int = Field(default=int(DEFAULT_REQUEST_TIMEOUT), ge=1, le=3600)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=20)

    @property
    def window_mode(self) -> WindowMode:
        """The mode in effect: `mode` if given, else what `adaptive` says."""
        if self.mode is not None:
            return self.mode
        return WindowMode.ADAPTIVE if self.adaptive else WindowMode.FIXED


MetadataKey = Annotated[str, StringConstraints(max_length=MAX_METADATA_KEY_LENGTH)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE_LENGTH)]


class BatchJobSpec(SpecModel):
    """What the batch should do. Written once, by the shim or a kubectl user."""

    input: Input
    endpoint: Endpoint
    completion_window: str = Field(
        default=DEFAULT_COMPLETION_WINDOW, max_length=7, pattern=COMPLETION_WINDOW_PATTERN
    )
    model_server: ModelServer | None = None
    concurrency: Concurrency = Concurrency()
    parallelism: int = Field(default=1, ge=1, le=64)
    priority: int = Field(default=0, ge=-1000, le=1000)
    metadata: (
        Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS)] | None
    ) = None
    output_expires_after_seconds: int | None = Field(
        default=None, ge=MIN_EXPIRES_AFTER_SECONDS, le=MAX_EXPIRES_AFTER_SECONDS
    )
    cancel: bool = False

    @field_validator("completion_window")
    @classmethod
    def _window_in_range(cls, value: str) -> str:
        parse_completion_window(value)
        return value


# ---------------------------------------------------------------------------- status


class Phase(StrEnum):
    """One phase per OpenAI batch status (DESIGN §3), derived by the operator from conditions.

    There is deliberately no `Queued` phase: OpenAI has no such status. A batch waiting for
    admission is `Validating` with condition `Admitted=False`, reason `Queued`.
    """

    VALIDATING = "Validating"
    IN_PROGRESS = "InProgress"
    FINALIZING = "Finalizing"
    COMPLETED = "Completed"
    FAILED = "Failed"
    EXPIRED = "Expired"
    CANCELLING = "Cancelling"
    CANCELLED = "Cancelled"


class ConditionType(StrEnum):
    ADMITTED = "Admitted"  # the operator's global admission gave this batch a slot
    VALIDATED = "Validated"  # the runner accepted the whole input file
    RUNNING = "Running"  # runner pods are working on requests
    COMPLETE = "Complete"  # terminal success (OpenAI `completed`)
    FAILED = "Failed"  # terminal: failed, expired or cancelled, told apart by the reason
    # The runner could start (False: the backend's reason it cannot, e.g. a missing Secret).
    RUNNER_STARTED = "RunnerStarted"
    # A polite batch takes more than the spare capacity to meet its deadline (True while so).
    DEADLINE_PRESSURE = "DeadlinePressure"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionReason(StrEnum):
    """Reasons the operator writes. The CRD keeps `reason` an open CamelCase string, so a
    newer operator's new reason never breaks an older reader."""

    QUEUED = "Queued"
    ADMITTED = "Admitted"
    VALIDATING = "Validating"
    VALID = "Valid"
    INVALID_INPUT = "InvalidInput"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    COMPLETED = "Completed"
    EXPIRED = "Expired"
    CANCELLING = "Cancelling"
    CANCELLED = "Cancelled"
    RUNNER_FAILED = "RunnerFailed"
    # The spec breaks this namespace's tenancy policy (input outside its storage root, a
    # refused model-server URL, a cap): failed before a runner started (docs/security.md).
    POLICY_VIOLATION = "PolicyViolation"
    # The object breaks the CRD's schema (it bypassed the API server's validation, or the
    # CRD is older than the operator): failed with the first schema error.
    INVALID_SPEC = "InvalidSpec"
    # The runner started after the backend reported why it could not (RunnerStarted=True).
    STARTED = "Started"
    # The runner could not start within the grace period (its reason is in the message).
    CANNOT_START = "CannotStart"
    # A child under the runner's deterministic name exists that this batch does not own.
    RUNNER_CONFLICT = "RunnerConflict"
    # DeadlinePressure=True: the polite rate would miss the deadline; False: it no longer does.
    DEADLINE_PRESSURE = "DeadlinePressure"
    ON_TRACK = "OnTrack"


class Condition(KubeModel):
    """One entry of `status.conditions`, shaped like `metav1.Condition`."""

    type: ConditionType
    status: ConditionStatus
    reason: str = Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)
    message: str = Field(max_length=MAX_STATUS_MESSAGE_LENGTH)
    last_transition_time: Time
    observed_generation: int | None = Field(default=None, ge=0)


class RequestCounts(KubeModel):
    total: int = Field(default=0, ge=0)
    completed: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)


class InputTokensDetails(KubeModel):
    cached_tokens: int = Field(default=0, ge=0)


class OutputTokensDetails(KubeModel):
    reasoning_tokens: int = Field(default=0, ge=0)


class Usage(KubeModel):
    """Token totals of the batch: OpenAI's `usage`, camelCased."""

    input_tokens: int = Field(default=0, ge=0)
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = Field(default=0, ge=0)
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = Field(default=0, ge=0)


class ErrorItem(KubeModel):
    """One validation error in OpenAI's `BatchError` shape (`line` is 1-based)."""

    code: str = Field(min_length=1, max_length=MAX_ERROR_CODE_LENGTH)
    message: str = Field(max_length=MAX_ERROR_MESSAGE_LENGTH)
    param: str | None = Field(default=None, max_length=MAX_ERROR_PARAM_LENGTH)
    line: int | None = Field(default=None, ge=1)


class BatchJobStatus(KubeModel):
    """What the operator observed. Written only by the operator, through `/status`."""

    observed_generation: int | None = Field(default=None, ge=0)
    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=8)
    progress: str | None = Field(default=None, max_length=32, pattern=PROGRESS_PATTERN)
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    usage: Usage = Field(default_factory=Usage)
    errors: list[ErrorItem] = Field(default_factory=list, max_length=MAX_STATUS_ERRORS)
    error_count: int = Field(default=0, ge=0)
    model: str | None = Field(default=None, max_length=MAX_MODEL_LENGTH)
    # The batch id (work dir) fixed at the first reconcile: editing the annotation later
    # changes nothing.
    batch_id: str | None = Field(
        default=None, max_length=MAX_BATCH_ID_LENGTH, pattern=BATCH_ID_PATTERN
    )
    output_file_id: str | None = Field(default=None, max_length=69, pattern=FILE_ID_PATTERN)
    error_file_id: str | None = Field(default=None, max_length=69, pattern=FILE_ID_PATTERN)
    output_uri: str | None = Field(default=None, max_length=2048)
    error_uri: str | None = Field(default=None, max_length=2048)
    runner_job_name: str | None = Field(default=None, max_length=63)
    finalize_job_name: str | None = Field(default=None, max_length=63)
    in_progress_time: Time | None = None
    finalizing_time: Time | None = None
    completed_time: Time | None = None
    failed_time: Time | None = None
    expired_time: Time | None = None
    cancelling_time: Time | None = None
    cancelled_time: Time | None = None
    expires_time: Time | None = None
    message: str | None = Field(default=None, max_length=MAX_STATUS_MESSAGE_LENGTH)

    def condition(self, type_: ConditionType) -> Condition | None:
        """The condition of that type, if the operator has written one."""
        return next((c for c in self.conditions if c.type is type_), None)


def format_progress(counts: RequestCounts) -> str:
    """The `status.progress` printer-column text: finished requests over total (`120/500`).

    Printer columns cannot compute, so the operator writes this string with the counts.
    """
    return f"{counts.completed + counts.failed}/{counts.total}"


# ---------------------------------------------------------------------------- object


class ObjectMeta(KubeModel):
    """The parts of `metadata` OpenBatch reads; the API server owns the rest."""

    name: str
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: Time | None = None
    deletion_timestamp: Time | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class BatchJob(KubeModel):
    """A whole BatchJob object as the API server returns it (or a manifest to apply)."""

    api_version: Literal["openbatch.dev/v1alpha1"] = "openbatch.dev/v1alpha1"
    kind: Literal["BatchJob"] = "BatchJob"
    metadata: ObjectMeta
    spec: BatchJobSpec
    status: BatchJobStatus = Field(default_factory=BatchJobStatus)

    def deadline(self) -> datetime | None:
        """Creation time plus the completion window: when the batch expires.

        None until the API server has set `creationTimestamp`. The operator writes this as
        `status.expiresTime`; the shim reports it as `expires_at` from the first response on.
        """
        created = self.metadata.creation_timestamp
        if created is None:
            return None
        return created + parse_completion_window(self.spec.completion_window)
