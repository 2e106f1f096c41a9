"""OpenAI's `validating` step for a batch input file: a pure, streaming line validator.

The validator sees one physical line at a time (what `openbatch.jsonl.iter_lines` yields),
parses it once with orjson and checks it with plain dict lookups, so a 200 MiB file
validates in seconds with memory bounded by the longest line plus a compact `custom_id`
set (`openbatch.custom_ids.CustomIdSet`). It does no I/O: callers read the file and feed
it, and stop reading when `stopped` turns true.

Errors reproduce contract §4.3: OpenAI's `code`, `param`, 1-based physical `line` and
message. Where OpenAI's wording was never captured, the wording is ours and is listed in
the constants below:

* non-UTF-8 line: `invalid_json_line`, "This line is not valid UTF-8 text."
* `custom_id` / `body` of the wrong type (or `null`): `invalid_request` with that param,
  OpenAI's generic validator wording, e.g.
  "Invalid type for 'custom_id': expected a string, but got an integer instead."
* `method` other than "POST": `invalid_request`, param `method`,
  "Invalid value: 'GET'. Supported values are: 'POST'." (a non-string method gets the
  "Invalid type for 'method': expected a string, ..." form).
* `body.model` of the wrong type: `invalid_request`, param `body.model`, the same
  "Invalid type for 'body.model': ..." form; an absent, `null` or empty model is
  "Model parameter is required."
* unsupported batch endpoint: `invalid_request`, param `endpoint`, line null,
  "The endpoint '<e>' is not supported; supported endpoints are /v1/chat/completions,
  /v1/completions, /v1/embeddings and /v1/responses."
* a body the runner cannot delimit in the raw line (it forwards the body's exact bytes,
  see `openbatch.request_body`): `invalid_request`, param `body`,
  "The request body cannot be forwarded to the model server unchanged: <reason>."
* `empty_file`, `too_many_requests`, `file_too_large`: see `EMPTY_FILE_MESSAGE` and the
  message builders below.

Rules this module decides (OpenAI does not document them):

* At most one error per line, chosen by this precedence: line size → JSON/UTF-8 → missing top-level
  key (`custom_id`, `method`, `url`, `body`, first missing wins) → top-level types
  (`custom_id`, `method`, `body`) → `url` → `body.model` → the endpoint's required field
  → `body.stream` → `model_not_found` → `mismatched_model` → `duplicate_custom_id`.
* A line's `custom_id` is registered whenever it is a string, even if the line has another
  error, so that a later line reusing it is reported as the duplicate.
* The batch's model is the `body.model` of the first line that passes every check up to
  and including `model_not_found`; lines that fail earlier checks never set it.
* An endpoint's required body field counts as missing when absent or `null`; its type and
  the rest of the body are the model server's to judge at run time (a per-request error
  in the error file, as on OpenAI).
* `body.stream` is rejected when truthy, whatever its type.
* A UTF-8 byte order mark at the start of the file is accepted: `iter_lines` drops it
  (editors on Windows write one). Anywhere else it is data (orjson rejects it).
* A line longer than `max_line_bytes` (default 8 MiB, not an OpenAI limit: it bounds the
  runner's memory) is `invalid_request`, param null, "This line is N bytes; the maximum
  is M bytes per line.", checked before JSON. `iter_lines(..., max_line_bytes=...)` hands
  such a line over as an `OversizedLine` so that it is never held in memory.
* Byte counting is `len(line) + 1` per physical line fed (the newline); `\\r` of CRLF files
  is already stripped by `iter_lines`, so `bytes` is within one byte per line of the file
  size (an `OversizedLine` counts its full size). Callers that know the real size should
  also check it before feeding.
* The size and line limits stop validation: the one limit error is always reported, even
  past `max_reported_errors`, because it is what tells the caller why reading stopped; so
  `errors` holds at most `max_reported_errors + 1` entries.
"""

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from openbatch.custom_ids import CustomIdSet
from openbatch.endpoints import ENDPOINT_TITLES, REQUIRED_BODY_FIELDS, Endpoint
from openbatch.jsonl import OversizedLine, line_size
from openbatch.request_body import BodySpanError, body_span
from openbatch.wire import BatchError, BatchErrors

DEFAULT_MAX_LINES = 50_000  # contract §4.2: at most 50,000 requests per batch
DEFAULT_MAX_BYTES = 209_715_200  # contract §4.2: 200 MiB input file
# Ours, not OpenAI's: one request line is held (parsed and re-encoded) in memory per request in
# flight, so its size bounds the runner's memory. 8 MiB fits a request with a few images.
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
# How many errors a report lists. OpenAI documents no cap; one is needed so that a file of
# a million broken lines does not produce a million-entry `errors.data`.
DEFAULT_MAX_REPORTED_ERRORS = 100


class ErrorCode:
    """The `code` values of batch validation errors (contract §4.3)."""

    INVALID_JSON_LINE = "invalid_json_line"
    MISSING_REQUIRED_PARAMETER = "missing_required_parameter"
    INVALID_REQUEST = "invalid_request"
    INVALID_URL = "invalid_url"
    STREAMING_UNSUPPORTED = "streaming_unsupported"
    MODEL_NOT_FOUND = "model_not_found"
    DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
    MISMATCHED_MODEL = "mismatched_model"
    EMPTY_FILE = "empty_file"
    TOO_MANY_REQUESTS = "too_many_requests"
    FILE_TOO_LARGE = "file_too_large"


INVALID_JSON_MESSAGE = "This line is not parseable as valid JSON."
INVALID_UTF8_MESSAGE = "This line is not valid UTF-8 text."
INVALID_URL_MESSAGE = "The URL provided for this request does not match the batch endpoint."
MODEL_REQUIRED_MESSAGE = "Model parameter is required."
EMPTY_FILE_MESSAGE = "The batch input file is empty."

# Top-level keys of an input line, in the order their absence is reported (contract §4.1).
REQUIRED_KEYS = ("custom_id", "method", "url", "body")
ALLOWED_METHOD = "POST"

# One line's error before it becomes a `BatchError`: (code, param, message).
_LineError = tuple[str, str | None, str]


def missing_parameter_message(param: str) -> str:
    return f"Missing required parameter: '{param}'."


def invalid_type_message(param: str, expected: str, value: object) -> str:
    """OpenAI's generic wording for a wrong JSON type, e.g. for `custom_id`: 123."""
    return f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead."


def invalid_method_message(value: str) -> str:
    return f"Invalid value: '{value}'. Supported values are: '{ALLOWED_METHOD}'."


def streaming_message(endpoint: Endpoint) -> str:
    return f"{ENDPOINT_TITLES[endpoint]}: Streaming is not supported in the Batch API."


def model_not_found_message(model: str) -> str:
    return f"The provided model '{model}' is not supported by the Batch API."


def mismatched_model_message(model: str) -> str:
    return (
        f"The model '{model}' for this request does not match the rest of the batch. "
        "Each batch must contain requests for a single model."
    )


def duplicate_custom_id_message(custom_id: str) -> str:
    return (
        f"The custom_id '{custom_id}' for this request is a duplicate of another request. "
        "The custom_id parameter must be unique for each request in a batch."
    )


def line_too_large_message(size: int, max_line_bytes: int) -> str:
    return f"This line is {size} bytes; the maximum is {max_line_bytes} bytes per line."


def unforwardable_body_message(reason: str) -> str:
    return f"The request body cannot be forwarded to the model server unchanged: {reason}."


def too_many_requests_message(max_lines: int) -> str:
    return f"The batch input file has more than {max_lines} requests; the maximum is {max_lines}."


def file_too_large_message(max_bytes: int) -> str:
    return f"The batch input file is larger than the {max_bytes} byte maximum."


def unsupported_endpoint_message(endpoint: str) -> str:
    supported = [e.value for e in Endpoint]
    listed = ", ".join(supported[:-1]) + " and " + supported[-1]
    return f"The endpoint '{endpoint}' is not supported; supported endpoints are {listed}."


_JSON_TYPE_NAMES: dict[type, str] = {
    type(None): "null",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


def json_type(value: object) -> str:
    """Name a parsed JSON value's type the way OpenAI's validator messages do."""
    return _JSON_TYPE_NAMES.get(type(value), "an object")


@dataclass(frozen=True)
class ValidationLimits:
    """Batch-level limits (contract §4.2); every value must be at least 1."""

    max_lines: int = DEFAULT_MAX_LINES
    max_bytes: int = DEFAULT_MAX_BYTES
    max_reported_errors: int = DEFAULT_MAX_REPORTED_ERRORS
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

    def __post_init__(self) -> None:
        for name in ("max_lines", "max_bytes", "max_reported_errors", "max_line_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


_DEFAULT_LIMITS = ValidationLimits()


def _supported_endpoint(endpoint: Endpoint | str) -> Endpoint | None:
    try:
        return Endpoint(endpoint)
    except ValueError:
        return None


class ValidationReport(BaseModel):
    """The outcome of validating one input file; any error fails the whole batch.

    `errors` lists the first `max_reported_errors` line errors (plus a limit error, if
    one stopped validation) in line order; `error_count` counts them all. `requests` is
    the number of non-blank lines fed, including one that exceeded `max_lines`; `bytes`
    is `len(line) + 1` summed over the lines fed. `model` is the batch's single model
    (None until a line passes the model checks).
    """

    ok: bool
    errors: list[BatchError]
    error_count: int
    requests: int
    bytes: int
    model: str | None

    def to_batch_errors(self) -> BatchErrors | None:
        """The batch's `errors` field: None when the file is valid."""
        if self.ok:
            return None
        return BatchErrors(data=list(self.errors))


class StreamingValidator:
    """Validate an input file line by line; `finish()` returns the report.

    Feed every physical line in order, blank ones included, with its 0-based index. Once
    `stopped` is true (a size or line limit was hit, or the endpoint is unsupported), more
    lines are ignored and the caller should stop reading.
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        limits: ValidationLimits = _DEFAULT_LIMITS,
        known_models: Collection[str] | None = None,
    ) -> None:
        self._limits = limits
        self._known_models = frozenset(known_models) if known_models is not None else None
        self._errors: list[BatchError] = []
        self._error_count = 0
        self._requests = 0
        self._bytes = 0
        self._model: str | None = None
        self._ids = CustomIdSet()
        self._stopped = False
        self._finished: ValidationReport | None = None
        supported = _supported_endpoint(endpoint)
        # An unsupported endpoint stops validation at once; the chat values below are then
        # never used, they only keep every attribute typed and always set.
        self._url = (supported or Endpoint.CHAT_COMPLETIONS).value
        self._required = REQUIRED_BODY_FIELDS[supported or Endpoint.CHAT_COMPLETIONS]
        self._stream_message = streaming_message(supported or Endpoint.CHAT_COMPLETIONS)
        if supported is None:
            self._stop(
                BatchError(
                    code=ErrorCode.INVALID_REQUEST,
                    message=unsupported_endpoint_message(str(endpoint)),
                    param="endpoint",
                    line=None,
                )
            )

    @property
    def stopped(self) -> bool:
        """True once no further line can change the outcome: stop reading the file."""
        return self._stopped

    def feed(self, index: int, line: bytes) -> None:
        """Check one physical line (0-based `index`, without its newline)."""
        if self._stopped:
            return
        limits = self._limits
        size = line_size(line)
        self._bytes += size + 1
        if self._bytes > limits.max_bytes:
            self._stop(
                BatchError(
                    code=ErrorCode.FILE_TOO_LARGE,
                    message=file_too_large_message(limits.max_bytes),
                    param=None,
                    line=None,
                )
            )
            return
        oversized = isinstance(line, OversizedLine) or size > limits.max_line_bytes
        if not oversized and not line.strip():
            return  # blank lines carry no request but keep their physical number
        self._requests += 1
        if self._requests > limits.max_lines:
            self._stop(
                BatchError(
                    code=ErrorCode.TOO_MANY_REQUESTS,
                    message=too_many_requests_message(limits.max_lines),
                    param=None,
                    line=index + 1,
                )
            )
            return
        if oversized:
            message = line_too_large_message(size, limits.max_line_bytes)
            self._report(ErrorCode.INVALID_REQUEST, None, message, index + 1)
            return
        error = self._check(line)
        if error is not None:
            self._report(error[0], error[1], error[2], index + 1)

    def finish(self) -> ValidationReport:
        """Close validation and return the report (idempotent)."""
        if self._finished is None:
            if self._requests == 0 and not self._stopped:
                self._report(ErrorCode.EMPTY_FILE, None, EMPTY_FILE_MESSAGE, None)
            self._finished = ValidationReport(
                ok=self._error_count == 0,
                errors=list(self._errors),
                error_count=self._error_count,
                requests=self._requests,
                bytes=self._bytes,
                model=self._model,
            )
            self._stopped = True
        return self._finished

    def _check(self, line: bytes) -> _LineError | None:
        """Return the line's one error as (code, param, message), or None if it is valid.

        Plain tuples, not `BatchError`s: a file of broken lines builds a model only for
        the errors that are reported. The checks run in the precedence order of the
        module docstring, split by stage.
        """
        try:
            obj: Any = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return ErrorCode.INVALID_JSON_LINE, None, INVALID_UTF8_MESSAGE
            return ErrorCode.INVALID_JSON_LINE, None, INVALID_JSON_MESSAGE
        if type(obj) is not dict:
            return ErrorCode.INVALID_JSON_LINE, None, INVALID_JSON_MESSAGE

        custom_id = obj.get("custom_id")
        # Registered before any other check so that a later reuse is caught even when
        # this line fails for another reason.
        is_new_id = self._ids.add(custom_id) if type(custom_id) is str else True

        error = self._envelope_error(obj) or self._body_error(obj["body"])
        if error is not None:
            return error
        try:
            body_span(line)  # the runner forwards these exact bytes
        except BodySpanError as exc:
            return ErrorCode.INVALID_REQUEST, "body", unforwardable_body_message(str(exc))
        return self._batch_error(obj["body"]["model"], obj["custom_id"], is_new_id)

    def _envelope_error(self, obj: dict[str, Any]) -> _LineError | None:
        """Top-level keys: presence, then types, then the URL."""
        for key in REQUIRED_KEYS:
            if key not in obj:
                return ErrorCode.MISSING_REQUIRED_PARAMETER, key, missing_parameter_message(key)
        custom_id = obj["custom_id"]
        if type(custom_id) is not str:
            message = invalid_type_message("custom_id", "a string", custom_id)
            return ErrorCode.INVALID_REQUEST, "custom_id", message
        method = obj["method"]
        if method != ALLOWED_METHOD:
            if type(method) is str:
                message = invalid_method_message(method)
            else:
                message = invalid_type_message("method", "a string", method)
            return ErrorCode.INVALID_REQUEST, "method", message
        body = obj["body"]
        if type(body) is not dict:
            message = invalid_type_message("body", "an object", body)
            return ErrorCode.INVALID_REQUEST, "body", message
        if obj["url"] != self._url:
            return ErrorCode.INVALID_URL, "url", INVALID_URL_MESSAGE
        return None

    def _body_error(self, body: dict[str, Any]) -> _LineError | None:
        """The body on its own: `model`, the endpoint's required field, `stream`."""
        model = body.get("model")
        if model is None or model == "":
            return ErrorCode.INVALID_REQUEST, "body.model", MODEL_REQUIRED_MESSAGE
        if type(model) is not str:
            message = invalid_type_message("body.model", "a string", model)
            return ErrorCode.INVALID_REQUEST, "body.model", message
        for field, field_message in self._required:
            if body.get(field) is None:
                return ErrorCode.INVALID_REQUEST, "body." + field, field_message
        if body.get("stream"):
            return ErrorCode.STREAMING_UNSUPPORTED, "body.stream", self._stream_message
        return None

    def _batch_error(self, model: str, custom_id: str, is_new_id: bool) -> _LineError | None:
        """Checks against the rest of the batch: known model, single model, unique id."""
        if self._known_models is not None and model not in self._known_models:
            return ErrorCode.MODEL_NOT_FOUND, "body.model", model_not_found_message(model)
        if self._model is None:
            self._model = model
        elif model != self._model:
            return ErrorCode.MISMATCHED_MODEL, "body.model", mismatched_model_message(model)
        if not is_new_id:
            message = duplicate_custom_id_message(custom_id)
            return ErrorCode.DUPLICATE_CUSTOM_ID, "custom_id", message
        return None

    def _report(self, code: str, param: str | None, message: str, line: int | None) -> None:
        self._error_count += 1
        if len(self._errors) < self._limits.max_reported_errors:
            self._errors.append(BatchError(code=code, message=message, param=param, line=line))

    def _stop(self, error: BatchError) -> None:
        """Record a limit error (always listed, even past the cap) and stop validating."""
        self._error_count += 1
        self._errors.append(error)
        self._stopped = True


def validate_lines(
    lines: Iterable[tuple[int, bytes]],
    endpoint: Endpoint | str,
    *,
    limits: ValidationLimits = _DEFAULT_LIMITS,
    known_models: Collection[str] | None = None,
) -> ValidationReport:
    """Validate `(index, line)` pairs (e.g. `iter_lines(reader)`), stopping early at a limit."""
    validator = StreamingValidator(endpoint, limits=limits, known_models=known_models)
    if not validator.stopped:  # an unsupported endpoint reads no line at all
        for index, line in lines:
            validator.feed(index, line)
            if validator.stopped:
                break
    return validator.finish()
