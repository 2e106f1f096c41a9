"""Pure mapping from the last attempt of a request to its output or error line (contract §5).

| outcome                          | file   | response                         | error        |
|----------------------------------|--------|----------------------------------|--------------|
| 2xx                              | output | {status_code, request_id, body}  | null         |
| HTTP 4xx/5xx (final)             | error  | {status_code, request_id, body}  | null         |
| no answer (timeout, connection,  | error  | null                             | {code, msg}  |
|   garbled body) after retries    |        |                                  |              |
| never run (cancelled / expired)  | error  | null                             | {code, msg}  |
"""

from dataclasses import dataclass

import orjson

from openbatch.ids import new_request_id, new_request_line_id
from openbatch.lines import LINE_ERROR_MESSAGES, LineErrorCode
from openbatch.usage import ZERO_USAGE, UsageTuple, usage_of
from openbatch_runner.reply import Reply
from openbatch_runner.retry import AttemptKind


@dataclass(slots=True)
class LineResult:
    ok: bool  # goes to the output file
    unrun: bool  # never sent (cancelled / expired): error file, not counted as failed
    data: bytes  # the JSONL line, with its newline
    usage: UsageTuple


_NO_ANSWER_CODES = {
    AttemptKind.TIMEOUT: LineErrorCode.REQUEST_TIMEOUT,
    AttemptKind.CONNECTION: LineErrorCode.CONNECTION_ERROR,
    AttemptKind.INVALID_BODY: LineErrorCode.INVALID_RESPONSE,
}


def result_line(custom_id: str, reply: Reply, attempts: int) -> LineResult:
    """`attempts` is the number of requests sent for the line (what its error message says)."""
    if reply.kind is AttemptKind.OK or reply.kind is AttemptKind.HTTP_ERROR:
        response = {
            "status_code": reply.status,
            "request_id": reply.request_id or new_request_id(),
            "body": reply.body,
        }
        try:
            data = orjson.dumps(
                {
                    "id": new_request_line_id(),
                    "custom_id": custom_id,
                    "response": response,
                    "error": None,
                }
            )
        except orjson.JSONEncodeError as exc:  # e.g. nested deeper than orjson writes
            message = f"the model server's answer cannot be stored: {exc}"
            line = error_line(custom_id, LineErrorCode.INVALID_RESPONSE, message)
            return LineResult(False, False, line, ZERO_USAGE)
        ok = reply.kind is AttemptKind.OK
        return LineResult(ok, False, data + b"\n", usage_of(reply.body) if ok else ZERO_USAGE)
    code = _NO_ANSWER_CODES[reply.kind]
    message = f"{reply.detail} (after {attempts} attempt{'s' if attempts != 1 else ''})"
    return LineResult(False, False, error_line(custom_id, code, message), ZERO_USAGE)


def error_line(custom_id: str, code: str, message: str) -> bytes:
    return (
        orjson.dumps(
            {
                "id": new_request_line_id(),
                "custom_id": custom_id,
                "response": None,
                "error": {"code": code, "message": message},
            }
        )
        + b"\n"
    )


def unrun_line(custom_id: str, code: str) -> LineResult:
    """`batch_cancelled` / `batch_expired` for a line that was never executed."""
    return LineResult(
        False, True, error_line(custom_id, code, LINE_ERROR_MESSAGES[code]), ZERO_USAGE
    )
