"""The batch input validator (OpenAI's `validating` step) and the compact custom_id set.

One table drives the validator: each case is a whole input file, the batch endpoint, an
optional routing table and limits, and the errors expected as (code, param, line). The
table runs through both `StreamingValidator` and `validate_lines` so the two cannot drift.
Exact message wordings, the report model, early stopping, bounded memory on a 100,000-line
stream and `CustomIdSet` have their own tests below.
"""

import io
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from openbatch.custom_ids import CustomIdSet, keyed_digest
from openbatch.endpoints import Endpoint
from openbatch.jsonl import iter_lines
from openbatch.validation import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_LINES,
    DEFAULT_MAX_REPORTED_ERRORS,
    StreamingValidator,
    ValidationLimits,
    ValidationReport,
    validate_lines,
)
from openbatch.wire import BatchError, BatchErrors

CHAT = Endpoint.CHAT_COMPLETIONS
COMPLETIONS = Endpoint.COMPLETIONS
EMBEDDINGS = Endpoint.EMBEDDINGS
RESPONSES = Endpoint.RESPONSES

MISSING: Any = object()  # marks a key to leave out of a generated line

BODIES: dict[Endpoint, dict[str, Any]] = {
    CHAT: {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    COMPLETIONS: {"model": "m", "prompt": "hi"},
    EMBEDDINGS: {"model": "m", "input": ["a", "b"]},
    RESPONSES: {"model": "m", "input": "hi"},
}


def req(
    custom_id: Any = "r1",
    *,
    endpoint: Endpoint = CHAT,
    method: Any = "POST",
    url: Any = None,
    body: Any = None,
    **body_changes: Any,
) -> bytes:
    """One input line for `endpoint`; MISSING drops a key, `body_changes` edit the body."""
    if body is None:
        body = dict(BODIES[endpoint])
        for key, value in body_changes.items():
            if value is MISSING:
                body.pop(key, None)
            else:
                body[key] = value
    top = {"custom_id": custom_id, "method": method, "url": url or endpoint.value, "body": body}
    return orjson.dumps({k: v for k, v in top.items() if v is not MISSING})


def jsonl(*lines: bytes, sep: bytes = b"\n", trailing: bool = True) -> bytes:
    return sep.join(lines) + (sep if trailing else b"")


Expected = list[tuple[str, str | None, int | None]]


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expected: Expected
    endpoint: Endpoint | str = CHAT
    known_models: frozenset[str] | None = None
    limits: ValidationLimits = field(default_factory=ValidationLimits)
    error_count: int | None = None  # when the cap hides errors; else len(expected)
    stopped: bool = False


def missing(param: str, line: int) -> tuple[str, str | None, int | None]:
    return ("missing_required_parameter", param, line)


def invalid(param: str, line: int) -> tuple[str, str | None, int | None]:
    return ("invalid_request", param, line)


def json_error(line: int) -> tuple[str, str | None, int | None]:
    return ("invalid_json_line", None, line)


TWO_LINE_BYTES = len(req("a")) + 1 + len(req("b")) + 1
BAD = b"{not json"

CASES = [
    # -- valid files, every endpoint --
    Case("valid chat", jsonl(req("a"), req("b")), []),
    Case("valid completions", jsonl(req("a", endpoint=COMPLETIONS)), [], COMPLETIONS),
    Case("valid embeddings", jsonl(req("a", endpoint=EMBEDDINGS)), [], EMBEDDINGS),
    Case("valid responses", jsonl(req("a", endpoint=RESPONSES)), [], RESPONSES),
    Case("endpoint given as a string", jsonl(req("a")), [], "/v1/chat/completions"),
    Case("extra top-level and body keys", jsonl(req("a")[:-1] + b',"x":1}', req("b", n=2)), []),
    Case("stream false is fine", jsonl(req("a", stream=False)), []),
    Case("padded JSON line", jsonl(b"  " + req("a") + b"\t "), []),
    Case("known model", jsonl(req("a")), [], known_models=frozenset({"m", "other"})),
    Case("empty custom_id is a string", jsonl(req("")), []),
    # -- JSON and UTF-8 --
    Case("not JSON", jsonl(req("a"), BAD), [json_error(2)]),
    Case("truncated object", jsonl(req("a")[:-3]), [json_error(1)]),
    Case("JSON array", jsonl(b"[1, 2]"), [json_error(1)]),
    Case("JSON string", jsonl(b'"hello"'), [json_error(1)]),
    Case("JSON null", jsonl(b"null"), [json_error(1)]),
    Case("JSON number", jsonl(b"42"), [json_error(1)]),
    Case(
        "non-UTF-8 bytes",
        jsonl(req("a"), req("\x00b").replace(b"\\u0000", b"\xff")),
        [json_error(2)],
    ),
    Case("UTF-8 byte order mark at the start", jsonl(b"\xef\xbb\xbf" + req("a")), []),
    Case(
        "UTF-8 byte order mark later on",
        jsonl(req("a"), b"\xef\xbb\xbf" + req("b")),
        [json_error(2)],
    ),
    Case("lone surrogate escape", jsonl(req("x").replace(b'"x"', b'"\\ud800"')), [json_error(1)]),
    # -- missing top-level keys: the first missing one, in custom_id/method/url/body order --
    Case("missing custom_id", jsonl(req(MISSING)), [missing("custom_id", 1)]),
    Case("missing method", jsonl(req(method=MISSING)), [missing("method", 1)]),
    Case("missing url", jsonl(req(url=MISSING)), [missing("url", 1)]),
    Case("missing body", jsonl(req(body=MISSING)), [missing("body", 1)]),
    Case("missing all: custom_id wins", jsonl(b"{}"), [missing("custom_id", 1)]),
    Case(
        "missing url and body: url wins", jsonl(req(url=MISSING, body=MISSING)), [missing("url", 1)]
    ),
    Case(
        "one error per offending line",
        jsonl(*(req(f"r{i}", method=MISSING) for i in range(4))),
        [missing("method", line) for line in range(1, 5)],
    ),
    # -- wrong types and values --
    Case("custom_id integer", jsonl(req(7)), [invalid("custom_id", 1)]),
    Case("custom_id null", jsonl(req(None)), [invalid("custom_id", 1)]),
    Case("method GET", jsonl(req(method="GET")), [invalid("method", 1)]),
    Case("method lowercase", jsonl(req(method="post")), [invalid("method", 1)]),
    Case("method not a string", jsonl(req(method=1)), [invalid("method", 1)]),
    Case("body an array", jsonl(req(body=[1])), [invalid("body", 1)]),
    Case("body a string", jsonl(req(body="{}")), [invalid("body", 1)]),
    Case("missing beats a wrong type", jsonl(req(7, method=MISSING)), [missing("method", 1)]),
    Case("custom_id type beats method", jsonl(req(7, method="GET")), [invalid("custom_id", 1)]),
    Case("method beats body type", jsonl(req(method="GET", body=1)), [invalid("method", 1)]),
    # -- url --
    Case("url of another endpoint", jsonl(req(url="/v1/completions")), [("invalid_url", "url", 1)]),
    Case(
        "absolute url",
        jsonl(req(url="https://api.openai.com/v1/chat/completions")),
        [("invalid_url", "url", 1)],
    ),
    Case("url not a string", jsonl(req(url=["/v1/chat/completions"])), [("invalid_url", "url", 1)]),
    Case("body type beats url", jsonl(req(url="/x", body=[])), [invalid("body", 1)]),
    Case("url beats model", jsonl(req(url="/x", model=MISSING)), [("invalid_url", "url", 1)]),
    # -- body.model and each endpoint's required field --
    Case("model missing", jsonl(req(model=MISSING)), [invalid("body.model", 1)]),
    Case("model null", jsonl(req(model=None)), [invalid("body.model", 1)]),
    Case("model empty", jsonl(req(model="")), [invalid("body.model", 1)]),
    Case("model not a string", jsonl(req(model=3)), [invalid("body.model", 1)]),
    Case(
        "model beats messages",
        jsonl(req(model=MISSING, messages=MISSING)),
        [invalid("body.model", 1)],
    ),
    Case("chat without messages", jsonl(req(messages=MISSING)), [invalid("body.messages", 1)]),
    Case("chat with null messages", jsonl(req(messages=None)), [invalid("body.messages", 1)]),
    Case(
        "completions without prompt",
        jsonl(req(endpoint=COMPLETIONS, prompt=MISSING)),
        [invalid("body.prompt", 1)],
        COMPLETIONS,
    ),
    Case(
        "embeddings without input",
        jsonl(req(endpoint=EMBEDDINGS, input=MISSING)),
        [invalid("body.input", 1)],
        EMBEDDINGS,
    ),
    Case(
        "responses without input",
        jsonl(req(endpoint=RESPONSES, input=MISSING)),
        [invalid("body.input", 1)],
        RESPONSES,
    ),
    Case(
        "chat body on the completions endpoint",
        jsonl(req(endpoint=COMPLETIONS, body=BODIES[CHAT])),
        [invalid("body.prompt", 1)],
        COMPLETIONS,
    ),
    # -- streaming --
    Case("chat stream", jsonl(req(stream=True)), [("streaming_unsupported", "body.stream", 1)]),
    Case(
        "completions stream",
        jsonl(req(endpoint=COMPLETIONS, stream=True)),
        [("streaming_unsupported", "body.stream", 1)],
        COMPLETIONS,
    ),
    Case(
        "embeddings stream",
        jsonl(req(endpoint=EMBEDDINGS, stream=1)),
        [("streaming_unsupported", "body.stream", 1)],
        EMBEDDINGS,
    ),
    Case(
        "responses stream",
        jsonl(req(endpoint=RESPONSES, stream="yes")),
        [("streaming_unsupported", "body.stream", 1)],
        RESPONSES,
    ),
    Case(
        "required field beats stream",
        jsonl(req(messages=MISSING, stream=True)),
        [invalid("body.messages", 1)],
    ),
    # -- routing table --
    Case(
        "unknown model",
        jsonl(req("a"), req("b", model="x")),
        [("model_not_found", "body.model", 1), ("model_not_found", "body.model", 2)],
        known_models=frozenset({"other"}),
    ),
    Case(
        "empty routing table",
        jsonl(req("a")),
        [("model_not_found", "body.model", 1)],
        known_models=frozenset(),
    ),
    Case(
        "stream beats unknown model",
        jsonl(req(stream=True)),
        [("streaming_unsupported", "body.stream", 1)],
        known_models=frozenset(),
    ),
    Case(
        "unknown model does not set the batch model",
        jsonl(req("a", model="x"), req("b"), req("c")),
        [("model_not_found", "body.model", 1)],
        known_models=frozenset({"m"}),
    ),
    Case(
        "unknown model beats mismatch and duplicate",
        jsonl(req("a"), req("a", model="x")),
        [("model_not_found", "body.model", 2)],
        known_models=frozenset({"m"}),
    ),
    # -- single model per batch --
    Case(
        "mismatched model",
        jsonl(req("a"), req("b", model="n"), req("c"), req("d", model="o")),
        [("mismatched_model", "body.model", 2), ("mismatched_model", "body.model", 4)],
    ),
    Case(
        "an invalid first line does not set the batch model",
        jsonl(req("a", model="n", messages=MISSING), req("b"), req("c")),
        [invalid("body.messages", 1)],
    ),
    Case(
        "mismatch beats duplicate",
        jsonl(req("a"), req("a", model="n")),
        [("mismatched_model", "body.model", 2)],
    ),
    # -- duplicate custom_id --
    Case(
        "duplicate on every later occurrence",
        jsonl(req("a"), req("b"), req("a"), req("a")),
        [("duplicate_custom_id", "custom_id", 3), ("duplicate_custom_id", "custom_id", 4)],
    ),
    Case(
        "an invalid line still registers its custom_id",
        jsonl(req("a", method=MISSING), req("a")),
        [missing("method", 1), ("duplicate_custom_id", "custom_id", 2)],
    ),
    Case(
        "a duplicate with another error reports the other error",
        jsonl(req("a"), req("a", url="/x")),
        [("invalid_url", "url", 2)],
    ),
    Case("ids differing only in case are distinct", jsonl(req("a"), req("A")), []),
    # -- empty files, blank lines, CRLF, trailing newline --
    Case("empty file", b"", [("empty_file", None, None)]),
    Case("only blank lines", b"\n  \n\t\r\n\n", [("empty_file", None, None)]),
    Case(
        "blank lines keep physical numbering",
        jsonl(b"", req("a"), b"   ", b"", BAD, b"\t"),
        [json_error(5)],
    ),
    Case("CRLF file", jsonl(req("a"), req("b"), sep=b"\r\n"), []),
    Case("CRLF error numbering", jsonl(req("a"), b"", BAD, sep=b"\r\n"), [json_error(3)]),
    Case("CRLF blank lines only", b"\r\n\r\n", [("empty_file", None, None)]),
    Case("no trailing newline", jsonl(req("a"), BAD, trailing=False), [json_error(2)]),
    Case("trailing newline is not a line", jsonl(req("a"), req("b")) + b"\n", []),
    # -- limits --
    Case("exactly max_lines", jsonl(req("a"), req("b")), [], limits=ValidationLimits(max_lines=2)),
    Case(
        "too many requests stops at the first line past the limit",
        jsonl(req("a"), b"", req("b"), req("c"), BAD),
        [("too_many_requests", None, 4)],
        limits=ValidationLimits(max_lines=2),
        stopped=True,
    ),
    Case(
        "blank lines do not count as requests",
        jsonl(req("a"), b"", b"", req("b")),
        [],
        limits=ValidationLimits(max_lines=2),
    ),
    Case(
        "exactly max_bytes",
        jsonl(req("a"), req("b")),
        [],
        limits=ValidationLimits(max_bytes=TWO_LINE_BYTES),
    ),
    Case(
        "file too large",
        jsonl(req("a"), req("b"), BAD),
        [("file_too_large", None, None)],
        limits=ValidationLimits(max_bytes=TWO_LINE_BYTES - 1),
        stopped=True,
    ),
    Case(
        "blank lines count as bytes",
        jsonl(req("a"), req("b"), b""),
        [("file_too_large", None, None)],
        limits=ValidationLimits(max_bytes=TWO_LINE_BYTES),
        stopped=True,
    ),
    Case(
        "errors before the limit are kept",
        jsonl(BAD, req("a"), req("b")),
        [json_error(1), ("too_many_requests", None, 3)],
        limits=ValidationLimits(max_lines=2),
        stopped=True,
    ),
    Case(
        "a line over max_line_bytes, checked before JSON",
        jsonl(req("a"), req("b") + b" " * 40, b"{" * 400, req("c")),
        [("invalid_request", None, 2), ("invalid_request", None, 3)],
        limits=ValidationLimits(max_line_bytes=len(req("a")) + 1),
    ),
    Case(
        "a line exactly at max_line_bytes",
        jsonl(req("a")),
        [],
        limits=ValidationLimits(max_line_bytes=len(req("a"))),
    ),
    # -- reporting cap --
    Case(
        "errors past the cap are counted, not listed",
        jsonl(*(BAD for _ in range(5))),
        [json_error(1), json_error(2)],
        limits=ValidationLimits(max_reported_errors=2),
        error_count=5,
    ),
    Case(
        "a limit error is listed even past the cap",
        jsonl(BAD, BAD, BAD, req("a"), BAD),
        [json_error(1), json_error(2), ("too_many_requests", None, 5)],
        limits=ValidationLimits(max_lines=4, max_reported_errors=2),
        error_count=4,
        stopped=True,
    ),
    # -- unsupported endpoint --
    Case(
        "unsupported endpoint",
        jsonl(req("a")),
        [("invalid_request", "endpoint", None)],
        endpoint="/v1/moderations",
        stopped=True,
    ),
]


def observed(report: ValidationReport) -> Expected:
    return [(e.code, e.param, e.line) for e in report.errors]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validation_table(case: Case) -> None:
    validator = StreamingValidator(
        case.endpoint, limits=case.limits, known_models=case.known_models
    )
    for index, line in iter_lines(io.BytesIO(case.data)):
        if validator.stopped:
            break
        validator.feed(index, line)
    assert validator.stopped is case.stopped
    report = validator.finish()

    assert observed(report) == case.expected
    expected_count = case.error_count if case.error_count is not None else len(case.expected)
    assert report.error_count == expected_count
    assert report.ok is (expected_count == 0)
    assert all(e.message for e in report.errors)
    assert len(report.errors) <= case.limits.max_reported_errors + 1

    streamed = validate_lines(
        iter_lines(io.BytesIO(case.data)),
        case.endpoint,
        limits=case.limits,
        known_models=case.known_models,
    )
    assert streamed == report


def test_case_names_are_unique() -> None:
    assert len({c.name for c in CASES}) == len(CASES)


def test_messages() -> None:
    """Exact wordings: OpenAI's where captured (contract §4.3), ours where not."""
    data = jsonl(
        BAD,
        req("\x00").replace(b"\\u0000", b"\xff"),
        req(MISSING),
        req(7),
        req(None),
        req("m1", method="GET"),
        req("m2", method=2),
        req("b1", body=[]),
        req("u1", url="/v1/embeddings"),
        req("x1", model=MISSING),
        req("x2", model=5),
        req("x3", messages=MISSING),
        req("s1", stream=True),
        req("n1", model="nope"),
        req("ok"),
        req("mm", model="other"),
        req("ok"),
    )
    report = validate_lines(iter_lines(io.BytesIO(data)), CHAT, known_models={"m", "other"})
    messages = [(e.line, e.message) for e in report.errors]
    assert messages == [
        (1, "This line is not parseable as valid JSON."),
        (2, "This line is not valid UTF-8 text."),
        (3, "Missing required parameter: 'custom_id'."),
        (4, "Invalid type for 'custom_id': expected a string, but got an integer instead."),
        (5, "Invalid type for 'custom_id': expected a string, but got null instead."),
        (6, "Invalid value: 'GET'. Supported values are: 'POST'."),
        (7, "Invalid type for 'method': expected a string, but got an integer instead."),
        (8, "Invalid type for 'body': expected an object, but got an array instead."),
        (9, "The URL provided for this request does not match the batch endpoint."),
        (10, "Model parameter is required."),
        (11, "Invalid type for 'body.model': expected a string, but got an integer instead."),
        (12, "Messages parameter is required."),
        (13, "Chat Completions: Streaming is not supported in the Batch API."),
        (14, "The provided model 'nope' is not supported by the Batch API."),
        (
            16,
            "The model 'other' for this request does not match the rest of the batch. "
            "Each batch must contain requests for a single model.",
        ),
        (
            17,
            "The custom_id 'ok' for this request is a duplicate of another request. "
            "The custom_id parameter must be unique for each request in a batch.",
        ),
    ]


@pytest.mark.parametrize(
    ("endpoint", "field", "message"),
    [
        (COMPLETIONS, "prompt", "Prompt parameter is required."),
        (EMBEDDINGS, "input", "Input parameter is required."),
        (RESPONSES, "input", "Input parameter is required."),
    ],
)
def test_endpoint_messages(endpoint: Endpoint, field: str, message: str) -> None:
    title = {COMPLETIONS: "Completions", EMBEDDINGS: "Embeddings", RESPONSES: "Responses"}
    data = jsonl(
        req("a", endpoint=endpoint, **{field: MISSING}), req("b", endpoint=endpoint, stream=True)
    )
    report = validate_lines(iter_lines(io.BytesIO(data)), endpoint)
    assert [e.message for e in report.errors] == [
        message,
        f"{title[endpoint]}: Streaming is not supported in the Batch API.",
    ]


def test_batch_level_messages() -> None:
    def only(data: bytes, endpoint: str = CHAT, **limits: int) -> BatchError:
        report = validate_lines(
            iter_lines(io.BytesIO(data)), endpoint, limits=ValidationLimits(**limits)
        )
        assert len(report.errors) == 1
        return report.errors[0]

    assert only(b"").message == "The batch input file is empty."
    assert only(jsonl(req("a"), req("b")), max_lines=1).message == (
        "The batch input file has more than 1 requests; the maximum is 1."
    )
    assert only(jsonl(req("a")), max_bytes=10).message == (
        "The batch input file is larger than the 10 byte maximum."
    )
    assert only(b"", "/v1/videos").message == (
        "The endpoint '/v1/videos' is not supported; supported endpoints are "
        "/v1/chat/completions, /v1/completions, /v1/embeddings and /v1/responses."
    )


def test_report_model() -> None:
    lines = [req("a"), b"", req("b", model="n")]
    data = jsonl(*lines, sep=b"\r\n")
    report = validate_lines(iter_lines(io.BytesIO(data)), CHAT)
    assert report.requests == 2
    assert report.bytes == sum(len(line) + 1 for line in lines)  # `\r` is stripped upstream
    assert report.model == "m"
    assert not report.ok
    batch_errors = report.to_batch_errors()
    assert isinstance(batch_errors, BatchErrors)
    assert orjson.loads(batch_errors.model_dump_json()) == {
        "object": "list",
        "data": [
            {
                "code": "mismatched_model",
                "message": report.errors[0].message,
                "param": "body.model",
                "line": 3,
            }
        ],
    }
    assert ValidationReport.model_validate_json(report.model_dump_json()) == report

    good = validate_lines(iter_lines(io.BytesIO(jsonl(req("a")))), CHAT)
    assert good.ok
    assert good.errors == []
    assert good.error_count == 0
    assert good.to_batch_errors() is None
    assert good.model == "m"

    empty = validate_lines(iter(()), CHAT)
    assert (empty.ok, empty.requests, empty.bytes, empty.model) == (False, 0, 0, None)


def test_defaults() -> None:
    assert (DEFAULT_MAX_LINES, DEFAULT_MAX_BYTES, DEFAULT_MAX_REPORTED_ERRORS) == (
        50_000,
        209_715_200,
        100,
    )
    limits = ValidationLimits()
    assert (limits.max_lines, limits.max_bytes, limits.max_reported_errors) == (
        50_000,
        209_715_200,
        100,
    )
    assert limits.max_line_bytes == DEFAULT_MAX_LINE_BYTES == 8 * 1024 * 1024
    for name in ("max_lines", "max_bytes", "max_reported_errors", "max_line_bytes"):
        with pytest.raises(ValueError, match=name):
            ValidationLimits(**{name: 0})


def test_an_oversized_line_is_reported_with_its_full_size() -> None:
    big = b'{"custom_id": "' + b"x" * 5000 + b'"}'
    data = req("a") + b"\n" + big + b"\n" + req("b") + b"\n"
    limits = ValidationLimits(max_line_bytes=1000)
    report = validate_lines(
        iter_lines(io.BytesIO(data), 64, max_line_bytes=1000), CHAT, limits=limits
    )
    assert [(e.code, e.param, e.line) for e in report.errors] == [("invalid_request", None, 2)]
    assert report.errors[0].message == (
        f"This line is {len(big)} bytes; the maximum is 1000 bytes per line."
    )
    assert report.bytes == len(data) and report.requests == 3


def counting(lines: list[bytes], seen: list[int]) -> Iterator[tuple[int, bytes]]:
    for index, line in enumerate(lines):
        seen.append(index)
        yield index, line


def test_validate_lines_stops_reading_at_a_limit() -> None:
    seen: list[int] = []
    lines = [req(f"r{i}") for i in range(10)]
    report = validate_lines(counting(lines, seen), CHAT, limits=ValidationLimits(max_lines=3))
    assert seen == [0, 1, 2, 3]
    assert report.requests == 4
    assert observed(report) == [("too_many_requests", None, 4)]


def test_unsupported_endpoint_reads_nothing() -> None:
    seen: list[int] = []
    validator = StreamingValidator("/v1/videos")
    assert validator.stopped
    report = validate_lines(counting([req("a")], seen), "/v1/videos")
    assert seen == []
    assert report.requests == 0
    assert observed(report) == [("invalid_request", "endpoint", None)]


def test_feed_after_stop_is_ignored_and_finish_is_idempotent() -> None:
    validator = StreamingValidator(CHAT, limits=ValidationLimits(max_lines=1))
    validator.feed(0, req("a"))
    assert not validator.stopped
    validator.feed(1, req("b"))
    assert validator.stopped
    validator.feed(2, BAD)
    report = validator.finish()
    assert report.requests == 2
    assert observed(report) == [("too_many_requests", None, 2)]
    assert validator.finish() is report


def generated_lines(count: int) -> Iterator[tuple[int, bytes]]:
    """Typical chat requests, produced one at a time and never kept."""
    for i in range(count):
        yield i, req(f"request-{i}", messages=[{"role": "user", "content": f"Question {i}?"}])


def test_streams_100k_lines_in_bounded_memory() -> None:
    count = 100_000
    tracemalloc.start()
    try:
        report = validate_lines(
            generated_lines(count), CHAT, limits=ValidationLimits(max_lines=count)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok
    assert report.requests == count
    assert report.model == "m"
    assert report.bytes == sum(len(line) + 1 for _, line in generated_lines(count))
    # The custom_id table for 100k ids is 2 MiB (3 MiB while it doubles); the lines
    # themselves (~7 MiB) must not be held.
    assert peak < 5 * 2**20, peak


# -- CustomIdSet ---------------------------------------------------------------------------


def test_custom_id_set_many_ids_and_growth() -> None:
    ids = CustomIdSet()
    start = ids.capacity
    count = 50_000
    capacities = set()
    for i in range(count):
        assert ids.add(f"request-{i}")
        assert 2 * len(ids) <= ids.capacity  # load factor never above 0.5
        capacities.add(ids.capacity)
    assert len(ids) == count
    assert ids.capacity > start
    assert all(c & (c - 1) == 0 for c in capacities)  # powers of two: it doubles
    assert sorted(capacities) == [start * 2**k for k in range(len(capacities))]
    assert 16 <= 8 * ids.capacity / count <= 32  # bytes per id
    for i in range(0, count, 7):
        assert not ids.add(f"request-{i}")
    assert len(ids) == count
    assert ids.add("request-50000")


def test_custom_id_set_duplicates() -> None:
    ids = CustomIdSet()
    assert ids.add("a")
    assert not ids.add("a")
    assert ids.add("A")
    assert ids.add("")
    assert not ids.add("")
    assert ids.add("é")
    assert ids.add("\ud800")  # a lone surrogate is hashed, not rejected
    assert len(ids) == 5


def table_digest(table: dict[str, int]) -> Callable[[str], int]:
    return table.__getitem__


def test_custom_id_set_zero_digest_is_stored_as_one() -> None:
    ids = CustomIdSet(digest=table_digest({"zero": 0, "one": 1, "two": 2}))
    assert ids.add("zero")
    assert not ids.add("zero")  # 0 is the empty marker, yet the id is remembered
    assert not ids.add("one")  # the price of the remap: 0 and 1 are the same digest
    assert ids.add("two")
    assert len(ids) == 2


def test_custom_id_set_probes_past_occupied_slots() -> None:
    capacity = CustomIdSet().capacity
    # All four digests land in slot 5; the last wraps around the end of the table.
    clash = {"a": 5, "b": 5 + capacity, "c": 5 + 2 * capacity, "d": capacity - 1}
    clash["e"] = 2 * capacity - 1
    ids = CustomIdSet(digest=table_digest(clash))
    for name in clash:
        assert ids.add(name)
    for name in clash:
        assert not ids.add(name)
    assert len(ids) == len(clash)


def test_custom_id_set_growth_keeps_colliding_slots() -> None:
    digests = {f"k{i}": 7 + i * 1024 for i in range(3000)}  # all share the low bits
    ids = CustomIdSet(digest=table_digest(digests))
    for name in digests:
        assert ids.add(name)
    for name in digests:
        assert not ids.add(name)
    assert len(ids) == 3000


def constant(value: int) -> Callable[[str], int]:
    return lambda _id: value


def test_custom_id_set_rejects_out_of_range_digests() -> None:
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="64-bit"):
            CustomIdSet(digest=constant(bad)).add("x")
    assert CustomIdSet(digest=constant(2**64 - 1)).add("x")


def test_keyed_digest() -> None:
    one = keyed_digest(b"k" * 16)
    assert one("request-1") == keyed_digest(b"k" * 16)("request-1")
    assert one("request-1") != keyed_digest(b"j" * 16)("request-1")
    assert one("request-1") != one("request-2")
    assert all(0 <= one(f"r{i}") < 2**64 for i in range(100))
    # Two sets use different random keys, so crafted collisions do not carry over.
    assert CustomIdSet()._digest("x") != CustomIdSet()._digest("x")
