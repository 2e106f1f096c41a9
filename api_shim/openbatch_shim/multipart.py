"""Streaming `multipart/form-data`: a request body as a sequence of form events, never whole.

Starlette's own form parser spools each file to a temporary file before the route sees it;
an upload of 200 MB would then be written twice. Here the route gets the file's bytes as they
arrive and streams them on to storage (constant memory). Text fields come as whole values
(capped): they are small by nature.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header

from openbatch_shim.errors import BadRequest

MAX_FIELD_BYTES = 64 * 1024


@dataclass
class Field:
    name: str
    value: str


@dataclass
class FileStart:
    name: str
    filename: str


@dataclass
class FileData:
    data: bytes


@dataclass
class FileEnd:
    pass


FormEvent = Field | FileStart | FileData | FileEnd


def boundary_of(content_type: str | None) -> bytes:
    if not content_type:
        raise BadRequest("Expected a multipart/form-data body (no Content-Type was sent).")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        got = kind.decode(errors="replace")
        raise BadRequest(f"Expected a multipart/form-data body, got Content-Type {got!r}.")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("The multipart/form-data Content-Type has no boundary.")
    return boundary


class _Collector:
    """Parser callbacks that turn one `write` into a list of events."""

    def __init__(self) -> None:
        self.events: list[FormEvent] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._current: FileStart | Field | None = None
        self._value = bytearray()

    def on_part_begin(self) -> None:
        self._disposition = None
        self._current = None
        self._value.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        if self._disposition is None:
            raise BadRequest("A multipart part has no Content-Disposition header.")
        _, params = parse_options_header(self._disposition)
        name = params.get(b"name", b"").decode("utf-8", errors="replace")
        filename = params.get(b"filename")
        if filename is not None:
            start = FileStart(name=name, filename=filename.decode("utf-8", errors="replace"))
            self._current = start
            self.events.append(start)
        else:
            self._current = Field(name=name, value="")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if isinstance(self._current, FileStart):
            self.events.append(FileData(bytes(data[start:end])))
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise BadRequest(f"A form field is longer than {MAX_FIELD_BYTES} bytes.")

    def on_part_end(self) -> None:
        if isinstance(self._current, FileStart):
            self.events.append(FileEnd())
        elif isinstance(self._current, Field):
            self._current.value = self._value.decode("utf-8", errors="replace")
            self.events.append(self._current)
        self._current = None


def _joined(pieces: list[bytes]) -> FileData:
    """One event for consecutive file bytes; a single piece (the usual case) is not copied."""
    return FileData(pieces[0] if len(pieces) == 1 else b"".join(pieces))


async def form_events(
    content_type: str | None, body: AsyncIterator[bytes]
) -> AsyncIterator[FormEvent]:
    """Yield the form's events in order; consecutive file bytes are merged into larger chunks."""
    collector = _Collector()
    parser = MultipartParser(
        boundary_of(content_type),
        {
            "on_part_begin": collector.on_part_begin,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
        },
    )
    async for chunk in body:
        if not chunk:
            continue
        try:
            parser.write(chunk)
        except BadRequest:
            raise
        except Exception as exc:  # python-multipart raises its own errors on bad framing
            raise BadRequest(f"The multipart/form-data body is malformed: {exc}") from exc
        events, collector.events = collector.events, []
        pending: list[bytes] = []
        for event in events:
            if isinstance(event, FileData):
                pending.append(event.data)
                continue
            if pending:
                yield _joined(pending)
                pending = []
            yield event
        if pending:
            yield _joined(pending)
    parser.finalize()
    for event in collector.events:
        yield event
