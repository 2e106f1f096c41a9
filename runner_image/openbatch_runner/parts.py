"""Encoding of committed result parts: one header line, then OpenAI output/error lines.

The header names the input line indices the part holds, in order, and its counts, so a
restart learns what is done by reading headers only, and finalize can drop the second copy
of a line that two overlapping runner processes both committed.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from openbatch.layout import PartKind
from openbatch.lines import LineErrorCode
from openbatch.usage import ZERO_USAGE, UsageTuple, add_usage, usage_of

HEADER_KEY = "openbatch_part"
FORMAT_VERSION = 1
_UNRUN_CODES = frozenset({LineErrorCode.BATCH_CANCELLED, LineErrorCode.BATCH_EXPIRED})


@dataclass
class PartSummary:
    lines: list[int] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    unrun: int = 0
    usage: UsageTuple = ZERO_USAGE


def encode_part(summary: PartSummary, lines: list[bytes]) -> bytes:
    """Header line plus the result lines (each already ending in `\\n`)."""
    header = orjson.dumps(
        {
            HEADER_KEY: FORMAT_VERSION,
            "lines": summary.lines,
            "completed": summary.completed,
            "failed": summary.failed,
            "unrun": summary.unrun,
            "usage": list(summary.usage),
        }
    )
    return header + b"\n" + b"".join(lines)


class CorruptPart(ValueError):
    """A part whose header cannot be read: written by something other than the runner."""


def decode_header(first_line: bytes) -> PartSummary:
    try:
        data = orjson.loads(first_line)
    except orjson.JSONDecodeError as exc:
        raise CorruptPart(f"part header is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get(HEADER_KEY) != FORMAT_VERSION:
        raise CorruptPart("not an OpenBatch part (missing or unknown header version)")
    lines = data.get("lines")
    usage = data.get("usage")
    if not isinstance(lines, list) or not isinstance(usage, list) or len(usage) != 5:
        raise CorruptPart("part header lacks its line list or usage")
    u = tuple(int(x) for x in usage)
    return PartSummary(
        lines=[int(i) for i in lines],
        completed=int(data.get("completed", 0)),
        failed=int(data.get("failed", 0)),
        unrun=int(data.get("unrun", 0)),
        usage=(u[0], u[1], u[2], u[3], u[4]),
    )


def part_body(data: bytes) -> list[bytes]:
    """The result lines of a whole part (its header dropped), each with its newline."""
    body = data.split(b"\n", 1)[1] if b"\n" in data else b""
    return body.splitlines(keepends=True)


def kept_summary(kind: PartKind, lines: Iterable[bytes], keep: list[bool]) -> PartSummary:
    """Counts and usage of the kept lines of a part that overlaps another one.

    Overlapping runner processes can commit the same input line twice; whoever counts
    (a restart's scan, finalize) keeps the first copy only, so a part that is partly
    a repeat is classified line by line (rare: the header has only whole-part counts).
    """
    summary = PartSummary()
    for line, kept in zip(lines, keep, strict=True):
        if not kept:
            continue
        obj = orjson.loads(line)
        if kind is PartKind.OUT:
            summary.completed += 1
            summary.usage = add_usage(summary.usage, usage_of(obj["response"]["body"]))
        elif obj.get("response") is None and (obj.get("error") or {}).get("code") in _UNRUN_CODES:
            summary.unrun += 1
        else:
            summary.failed += 1
    return summary
