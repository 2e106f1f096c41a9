"""Encoding of committed result parts: one header line, then OpenAI output/error lines.

The header names the input line indices the part holds, in order, and its counts, so a
restart learns what is done by reading headers only, and finalize can drop the second copy
of a line that two overlapping runner processes both committed.
"""

from dataclasses import dataclass, field

import orjson

from openbatch.usage import ZERO_USAGE, UsageTuple

HEADER_KEY = "openbatch_part"
FORMAT_VERSION = 1


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
