"""Answers that parse but are not results, and answers the runner cannot store."""

import orjson
import pytest

from openbatch.lines import OutputLine
from openbatch_runner.outcome import result_line
from openbatch_runner.reply import ok_reply
from openbatch_runner.retry import AttemptKind


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"ok"', b"3", b"null"])
def test_a_2xx_that_is_not_an_object_is_an_invalid_body(raw: bytes) -> None:
    reply = ok_reply(200, raw, lambda _h: None)
    assert reply.kind is AttemptKind.INVALID_BODY
    line = OutputLine.model_validate_json(result_line("c", reply, 2).data)
    assert line.error is not None and line.error.code == "invalid_response"
    assert "not an object" in line.error.message and "after 2 attempts" in line.error.message


def test_an_answer_too_deep_to_store_is_an_invalid_response() -> None:
    deep = b'{"a":' + b"[" * 300 + b"]" * 300 + b"}"  # orjson reads 1024 levels, writes 255
    reply = ok_reply(200, deep, lambda _h: None)
    assert reply.kind is AttemptKind.OK
    result = result_line("c", reply, 1)
    assert not result.ok
    assert orjson.loads(result.data)["error"]["code"] == "invalid_response"
