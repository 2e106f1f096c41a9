"""Streaming JSONL line splitting shared by the validator, the runner and finalize.

Line numbers are physical (the 1-based `line` of OpenAI's errors is `index + 1`). Blank
lines are yielded too, so that every consumer numbers lines the same way; they carry no
request and are skipped by the validator and the runner alike.
"""

from collections.abc import Iterator
from typing import Protocol

DEFAULT_CHUNK = 1 << 20


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def iter_lines(reader: Readable, chunk_size: int = DEFAULT_CHUNK) -> Iterator[tuple[int, bytes]]:
    """Yield `(index, line)` for every physical line, without its `\\n` (or `\\r\\n`).

    Memory is bounded by the chunk size plus the longest line: never `readlines()`.
    A final line without a trailing newline is yielded; a trailing newline does not
    produce an extra empty line.
    """
    index = 0
    pending = b""
    while True:
        chunk = reader.read(chunk_size)
        if not chunk:
            break
        data = pending + chunk if pending else chunk
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            line = data[start:end]
            if line.endswith(b"\r"):
                line = line[:-1]
            yield index, line
            index += 1
            start = end + 1
        pending = data[start:]
    if pending:
        if pending.endswith(b"\r"):
            pending = pending[:-1]
        yield index, pending


def is_blank(line: bytes) -> bool:
    return not line.strip()
