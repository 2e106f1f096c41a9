"""JSONL line models: the batch input line and the output/error line (contract §4.1, §5.1).

The runner's hot path writes lines with orjson directly for speed; these models are the
contract those bytes must satisfy, and tests parse every produced line with them.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class InputLine(BaseModel):
    """One request of a batch input file."""

    model_config = ConfigDict(extra="allow")

    custom_id: str
    method: Literal["POST"]
    url: str
    body: dict[str, Any]


class LineResponse(BaseModel):
    status_code: int
    request_id: str
    body: Any


class LineError(BaseModel):
    """A non-HTTP failure of one request: never run (cancelled/expired) or never answered."""

    code: str
    message: str


class OutputLine(BaseModel):
    """One line of an output or error file; all four keys are always present."""

    model_config = ConfigDict(extra="forbid")

    id: str
    custom_id: str
    response: LineResponse | None
    error: LineError | None


class LineErrorCode:
    """Codes of `OutputLine.error` for requests that got no HTTP answer."""

    BATCH_CANCELLED = "batch_cancelled"
    BATCH_EXPIRED = "batch_expired"
    REQUEST_TIMEOUT = "request_timeout"
    CONNECTION_ERROR = "connection_error"
    INVALID_RESPONSE = "invalid_response"
    RUNNER_ERROR = "runner_error"  # the runner failed to handle the line (a bug): counted failed


LINE_ERROR_MESSAGES: dict[str, str] = {
    LineErrorCode.BATCH_CANCELLED: "This request was not executed because the batch was cancelled.",
    LineErrorCode.BATCH_EXPIRED: (
        "This request could not be executed before the completion window expired."
    ),
}
