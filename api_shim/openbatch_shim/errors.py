"""Typed API errors, and the one place they become OpenAI's error envelope.

Every error response has all four keys (`message`, `type`, `param`, `code`; contract §6) and
a message that stands alone, since `openai` 3.x shows callers only `Error code: N - <message>`.
"""

from typing import Any

from openbatch.wire import ErrorBody, ErrorResponse


class ApiError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return ErrorResponse(
            error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)
        ).model_dump(mode="json")


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key")


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class Conflict(ApiError):
    """409. The official client retries 409s unless told not to (contract §6)."""

    status = 409

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message, param=param, code=code, headers={"x-should-retry": "false"})


class PayloadTooLarge(ApiError):
    status = 413


class ServiceUnavailable(ApiError):
    status = 503
    type = "server_error"


class InternalError(ApiError):
    status = 500
    type = "server_error"


def invalid_value(param: str, value: object, allowed: list[str]) -> BadRequest:
    supported = ", ".join(f"'{a}'" for a in allowed)
    return BadRequest(
        f"Invalid value for '{param}': {value!r}. Supported values are: {supported}. "
        "(code: invalid_value)",
        param=param,
        code="invalid_value",
    )


def missing_parameter(param: str) -> BadRequest:
    return BadRequest(
        f"Missing required parameter: '{param}'. (code: missing_required_parameter)",
        param=param,
        code="missing_required_parameter",
    )


def batch_not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")


def file_not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="id")
