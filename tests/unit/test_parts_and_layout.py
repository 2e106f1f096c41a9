import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from openbatch.jsonl import iter_lines
from openbatch.layout import PartKind, PartName, parse_part_name, part_key, progress_key
from openbatch.lines import OutputLine
from openbatch.progress import ProgressRecord, RunState
from openbatch.storage import LocalStore
from openbatch.usage import ZERO_USAGE, UsageTuple, add_usage, to_batch_usage, usage_of
from openbatch_runner.bitmap import Bitmap
from openbatch_runner.committer import scan_committed
from openbatch_runner.finalize import finalize
from openbatch_runner.outcome import result_line, unrun_line
from openbatch_runner.parts import CorruptPart, PartSummary, decode_header, encode_part
from openbatch_runner.reply import Reply
from openbatch_runner.retry import AttemptKind
from openbatch_runner.source import shard_lines


def test_part_key_round_trip() -> None:
    key = part_key("s3w/batches/b1", 2, PartKind.ERR, 12, "ab12cd34")
    assert key == "s3w/batches/b1/shard-2/err-00000012-ab12cd34.jsonl"
    assert parse_part_name(key) == PartName(12, "ab12cd34", PartKind.ERR)


@pytest.mark.parametrize(
    "key", ["x/progress.json", "x/out-12.jsonl", "x/foo-00000001-ab.jsonl", "x/out-1a-ab.jsonl"]
)
def test_non_parts_are_ignored(key: str) -> None:
    assert parse_part_name(key) is None


def test_part_encoding_round_trip() -> None:
    summary = PartSummary(lines=[5, 1, 9], completed=2, failed=1, usage=(1, 2, 3, 4, 5))
    data = encode_part(summary, [b"a\n", b"b\n", b"c\n"])
    header, rest = data.split(b"\n", 1)
    assert rest == b"a\nb\nc\n"
    assert decode_header(header) == summary


@pytest.mark.parametrize("header", [b"not json", b"[1]", b'{"openbatch_part": 2}', b'{"x": 1}'])
def test_corrupt_headers_are_refused(header: bytes) -> None:
    with pytest.raises(CorruptPart):
        decode_header(header)


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"", []),
        (b"a", [b"a"]),
        (b"a\n", [b"a"]),
        (b"a\nb", [b"a", b"b"]),
        (b"a\r\nb\r\n", [b"a", b"b"]),
        (b"a\n\nb\n", [b"a", b"", b"b"]),
    ],
)
def test_iter_lines(data: bytes, lines: list[bytes]) -> None:
    for chunk in (1, 2, 1 << 20):
        assert [line for _, line in iter_lines(io.BytesIO(data), chunk)] == lines


def test_shards_partition_requests_and_skip_blank_and_done() -> None:
    data = b"".join((b"\n" if i % 7 == 3 else orjson.dumps({"i": i}) + b"\n") for i in range(100))
    seen: list[int] = []
    for shard in range(3):
        seen += [i for i, _ in shard_lines(io.BytesIO(data), shard, 3)]
    requests = [i for i in range(100) if i % 7 != 3]
    assert sorted(seen) == requests
    done = Bitmap()
    done.add(0)
    done.add(99)
    assert 0 not in [i for i, _ in shard_lines(io.BytesIO(data), 0, 1, skip=done)]


def test_bitmap_grows() -> None:
    b = Bitmap()
    for i in (0, 7, 8, 100_000):
        b.add(i)
    assert all(i in b for i in (0, 7, 8, 100_000))
    assert 1 not in b and 99_999 not in b and 10**9 not in b
    assert b.count() == 4


def test_result_lines_follow_the_contract() -> None:
    ok = result_line(
        "c1",
        Reply(AttemptKind.OK, 200, {"usage": {"prompt_tokens": 2, "completion_tokens": 1}}, "r1"),
        1,
    )
    line = OutputLine.model_validate_json(ok.data)
    assert ok.ok and line.response is not None and line.error is None
    assert line.response.request_id == "r1" and line.id.startswith("batch_req_")
    assert ok.usage == (2, 0, 1, 0, 3)

    http = result_line("c2", Reply(AttemptKind.HTTP_ERROR, 400, {"error": {"message": "x"}}), 1)
    line = OutputLine.model_validate_json(http.data)
    assert not http.ok and line.error is None and line.response is not None
    assert line.response.status_code == 400 and line.response.request_id.startswith("req_")

    lost = result_line("c3", Reply(AttemptKind.TIMEOUT, detail="no answer"), 5)
    line = OutputLine.model_validate_json(lost.data)
    assert line.response is None and line.error is not None
    assert line.error.code == "request_timeout" and "5 attempts" in line.error.message

    unrun = unrun_line("c4", "batch_expired")
    line = OutputLine.model_validate_json(unrun.data)
    assert unrun.unrun and line.error is not None and line.error.code == "batch_expired"
    assert "completion window expired" in line.error.message


def _out(custom_id: str, tokens: int) -> bytes:
    usage = {"prompt_tokens": tokens, "completion_tokens": 1, "total_tokens": tokens + 1}
    response = {"status_code": 200, "request_id": "r", "body": {"usage": usage}}
    line = {"id": "b", "custom_id": custom_id, "response": response, "error": None}
    return orjson.dumps(line) + b"\n"


def _err(custom_id: str, unrun: bool) -> bytes:
    line: dict[str, Any] = {"id": "b", "custom_id": custom_id, "response": None, "error": None}
    if unrun:
        line["error"] = {"code": "batch_cancelled", "message": "x"}
    else:
        line["response"] = {"status_code": 500, "request_id": "r", "body": {}}
    return orjson.dumps(line) + b"\n"


def _summed_usage(lines: list[bytes]) -> UsageTuple:
    total = ZERO_USAGE
    for line in lines:
        response = orjson.loads(line)["response"]
        total = add_usage(total, usage_of(response["body"] if response else None))
    return total


def test_a_line_committed_twice_is_counted_once_by_scan_and_finalize(tmp_path: Path) -> None:
    """Overlapping runners: run `aa` committed lines 0-2; run `bb`, unaware, committed 2
    and 3, then 1 again (failed), 4 (failed) and 5 (unrun). First copies win."""
    store, work = LocalStore(), str(tmp_path / "w")
    parts = [
        ("aa", PartKind.OUT, 0, [0, 1, 2], [_out("c0", 10), _out("c1", 20), _out("c2", 30)]),
        ("bb", PartKind.OUT, 0, [2, 3], [_out("c2", 300), _out("c3", 40)]),
        (
            "bb",
            PartKind.ERR,
            1,
            [1, 4, 5],
            [_err("c1", False), _err("c4", False), _err("c5", True)],
        ),
    ]
    for run, kind, seq, lines, data in parts:
        summary = PartSummary(
            lines=lines,
            completed=len(lines) if kind is PartKind.OUT else 0,
            failed=2 if kind is PartKind.ERR else 0,
            unrun=1 if kind is PartKind.ERR else 0,
            usage=_summed_usage(data),  # whole-part usage: wrong for a part with a repeat
        )
        store.put_bytes(part_key(work, 0, kind, seq, run), encode_part(summary, data))
    committed = scan_committed(store, work, 0)
    tally = committed.tally
    assert (tally.completed, tally.failed, tally.unrun) == (4, 1, 1)
    assert committed.done.count() == 6 and committed.next_seq == 2
    assert to_batch_usage(tally.usage).input_tokens == 10 + 20 + 30 + 40  # not bb's copy of 2

    record = ProgressRecord(state=RunState.COMPLETED, total=6)
    store.put_bytes(progress_key(work, 0), record.model_dump_json().encode())
    result = finalize(work, 1, str(tmp_path / "o.jsonl"), str(tmp_path / "e.jsonl"))
    assert (result.completed, result.failed, result.unrun) == (4, 1, 1)
    assert to_batch_usage(tally.usage) == result.usage
    assert (result.output_lines, result.error_lines) == (4, 2)
