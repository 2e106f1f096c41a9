"""The progress record a runner shard writes next to its parts, for the operator and resume.

It travels through object storage because the runner has no Kubernetes credentials
(DESIGN §2). Counts are sums over committed parts, so they never run ahead of the results.
"""

from enum import StrEnum
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError

from openbatch.runner_args import WindowMode
from openbatch.wire import BatchErrors, BatchUsage

__all__ = ["FinalResult", "InputFingerprint", "ProgressRecord", "RunState", "WindowMode"]


class RunState(StrEnum):
    """Where one shard stands. Terminal states: completed, cancelled, expired, failed."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"  # the input failed validation; nothing was sent
    INTERRUPTED = "interrupted"  # SIGTERM: committed and exited to be resumed

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({RunState.COMPLETED, RunState.CANCELLED, RunState.EXPIRED, RunState.FAILED})


class InputFingerprint(BaseModel):
    """Identifies the input a work dir belongs to, so a resume never mixes two files.

    `digest` is a content hash (`blake2b-256:<hex>`) computed while validation reads every
    byte; it is absent when validation stopped early (a limit) or was never finished.
    """

    uri: str
    size: int
    etag: str | None = None
    digest: str | None = None


class ProgressRecord(BaseModel):
    version: int = 1
    state: RunState
    shard: int = 0
    shards: int = 1
    total: int = 0  # lines this shard owns
    completed: int = 0  # lines with a 2xx response
    failed: int = 0  # lines that ran and failed (HTTP error or no answer after retries)
    unrun: int = 0  # lines written as batch_cancelled / batch_expired (not counted as failed)
    usage: BatchUsage = Field(default_factory=BatchUsage)
    model: str | None = None
    parts: int = 0  # committed part sequence numbers used so far
    errors: BatchErrors | None = None  # validation errors (capped), OpenAI shape
    error_count: int = 0  # validation errors in total, before the cap
    input: InputFingerprint | None = None
    started_at: float | None = None
    updated_at: float | None = None
    message: str | None = None
    # How the window is sized (written from the first dispatch on). Plain strings, so a
    # newer runner's new mode or signal never makes an older reader refuse the record.
    window_mode: str | None = Field(default=None, max_length=32)
    window: int | None = Field(default=None, ge=1)  # the shard's in-flight window now
    # --polite: what each server's window follows (`vllm`, `llamacpp`, `latency`, ...),
    # comma-separated in server order; and whether the deadline forces more capacity.
    load_signal: str | None = Field(default=None, max_length=256)
    deadline_pressure: bool = False


class FinalResult(BaseModel):
    """Written by finalize next to the shards: where the joined files are and what they hold."""

    version: int = 1
    state: RunState
    total: int
    completed: int
    failed: int
    unrun: int
    usage: BatchUsage = Field(default_factory=BatchUsage)
    model: str | None = None
    output_uri: str | None = None  # null when there were no successful lines
    error_uri: str | None = None  # null when there were no error lines
    output_lines: int = 0
    error_lines: int = 0


# Bounds on what a reader of runner-written objects reads (they are untrusted: a runner
# parses untrusted input, docs/security.md). A progress record holds at most 100
# validation errors of bounded size; a result is a few hundred bytes.
MAX_PROGRESS_BYTES = 1 << 20
MAX_RESULT_BYTES = 64 << 10

_Record = TypeVar("_Record", ProgressRecord, FinalResult)


def parse_record(model: type[_Record], data: bytes, limit: int) -> _Record | None:
    """`data` as a `model`, or None when it is larger than `limit` bytes or is not one
    (wrong types, not JSON). A reader passes at most `limit + 1` bytes, so an oversized
    object is recognised without reading it whole."""
    if len(data) > limit:
        return None
    try:
        return model.model_validate_json(data)
    except ValidationError:
        return None
