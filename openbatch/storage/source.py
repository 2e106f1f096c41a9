"""Wrapping a caller's `Readable` for `put_stream`: byte counting, filled reads, rewinding."""

from __future__ import annotations

from openbatch.jsonl import Readable
from openbatch.storage.base import _CHUNK


class _SourceError(Exception):
    """Marks an exception raised by a caller's reader, so it is not taken for a store error."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class _Source:
    """Wraps a caller's `Readable`: counts bytes, fills each read, tags the reader's errors.

    minio's part reader concatenates whatever each `read` returns; filling the request in one
    buffer here keeps that linear even when the caller's reader returns small chunks.
    """

    def __init__(self, reader: Readable) -> None:
        self._reader = reader
        self._pending = b""
        self.count = 0
        self.failure: BaseException | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        want = _CHUNK if size is None or size < 0 else size
        if not self._pending:
            # The common case, a reader that fills the request: hand its bytes on uncopied.
            first = self._read_once(want)
            if len(first) == want or not first:
                self.count += len(first)
                return bytes(first) if not isinstance(first, bytes) else first
            self._pending = bytes(first)
        buf = bytearray(self._pending[:want])
        self._pending = self._pending[want:]
        while len(buf) < want:
            chunk = self._read_once(want - len(buf))
            if not chunk:
                break
            room = want - len(buf)
            if len(chunk) > room:  # a reader that ignores `n`: keep the excess for next time
                self._pending = bytes(chunk[room:])
                chunk = chunk[:room]
            buf += chunk
        self.count += len(buf)
        return bytes(buf)

    def _read_once(self, size: int) -> bytes | bytearray | memoryview:
        try:
            chunk = self._reader.read(size)
        except Exception as exc:
            self.failure = exc
            raise _SourceError(exc) from exc
        if not isinstance(chunk, bytes | bytearray | memoryview):
            exc = TypeError(f"reader.read() returned {type(chunk).__name__}, not bytes")
            self.failure = exc
            raise _SourceError(exc) from exc
        return chunk


def _rewind(reader: Readable) -> bool:
    """Put `reader` back at its start if it can be (`seek(0)` or `reset()`)."""
    seekable = getattr(reader, "seekable", None)
    seek = getattr(reader, "seek", None)
    if callable(seek) and (not callable(seekable) or seekable()):
        try:
            seek(0)
        except (OSError, ValueError):
            return False
        return True
    reset = getattr(reader, "reset", None)
    if callable(reset):
        reset()
        return True
    return False
