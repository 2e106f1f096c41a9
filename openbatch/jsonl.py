"""Streaming JSONL line splitting shared by the validator, the runner and finalize.

Line numbers are physical (the 1-based `line` of OpenAI's errors is `index + 1`). Blank
lines are yielded too, so that every consumer numbers lines the same way; they carry no
request and are skipped by the validator and the runner alike.

A UTF-8 byte order mark at the very start of the input is dropped (editors on Windows
write one); everywhere else it is data.
"""

from collections.abc import Iterator
from typing import Protocol

DEFAULT_CHUNK = 1 << 20
UTF8_BOM = b"\xef\xbb\xbf"
# How much of a line longer than the cap is kept, for messages: the rest is never held.
OVERSIZED_PREVIEW = 64


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class OversizedLine(bytes):
    """Stands in for a line longer than `max_line_bytes`: its first bytes only.

    `size` is the full length of the line (without its newline), counted while the rest
    was read and dropped, so a huge line costs no more memory than a chunk.
    """

    size: int

    def __new__(cls, head: bytes, size: int) -> "OversizedLine":
        line = super().__new__(cls, head)
        line.size = size
        return line


def line_size(line: bytes) -> int:
    """Length of a line as read: the full size even when only a preview was kept."""
    return line.size if isinstance(line, OversizedLine) else len(line)


class _Line:
    """The line being assembled: fragments are joined once, at its end (linear time)."""

    __slots__ = ("cap", "dropped", "pieces", "size")

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.pieces: list[bytes] = []
        self.size = 0
        self.dropped = False  # over the cap: only a preview is kept

    def add(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.dropped:
            # Keep the last byte, to know whether the line ends in "\r" (CRLF).
            self.pieces[-1] = data[-1:]
            return
        self.pieces.append(data)
        if self.cap is not None and self.size > self.cap + 1:  # + 1: a "\r" may follow
            joined = b"".join(self.pieces)
            self.pieces = [joined[:OVERSIZED_PREVIEW], joined[-1:]]
            self.dropped = True

    def take(self) -> bytes:
        pieces, size, dropped = self.pieces, self.size, self.dropped
        self.pieces, self.size, self.dropped = [], 0, False
        if dropped:
            head, last = pieces
            if last == b"\r":
                size -= 1
            return OversizedLine(head, size)
        if not pieces:
            return b""
        line = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if line.endswith(b"\r"):
            line = line[:-1]
        if self.cap is not None and len(line) > self.cap:
            return OversizedLine(line[:OVERSIZED_PREVIEW], len(line))
        return line


def _chunks(reader: Readable, chunk_size: int) -> Iterator[bytes]:
    """The reader's chunks, with a leading UTF-8 BOM removed."""
    head = b""
    while len(head) < len(UTF8_BOM):
        chunk = reader.read(chunk_size)
        if not chunk:
            break
        head += chunk
    if head.startswith(UTF8_BOM):
        head = head[len(UTF8_BOM) :]
    if head:
        yield head
    while chunk := reader.read(chunk_size):
        yield chunk


def iter_lines(
    reader: Readable, chunk_size: int = DEFAULT_CHUNK, max_line_bytes: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield `(index, line)` for every physical line, without its `\\n` (or `\\r\\n`).

    Time is linear in the input and memory is bounded by the chunk size plus the longest
    line: never `readlines()`. With `max_line_bytes`, a longer line is yielded as an
    `OversizedLine` (a short preview and its size), so memory stays bounded by the chunk
    size plus the cap whatever the input. A final line without a trailing newline is
    yielded; a trailing newline does not produce an extra empty line.
    """
    index = 0
    current = _Line(max_line_bytes)
    for chunk in _chunks(reader, chunk_size):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            current.add(chunk[start:end])
            yield index, current.take()
            index += 1
            start = end + 1
        current.add(chunk[start:])
    if current.size:
        yield index, current.take()


def is_blank(line: bytes) -> bool:
    return not isinstance(line, OversizedLine) and not line.strip()
