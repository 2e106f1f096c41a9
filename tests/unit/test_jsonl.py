"""Line splitting: linear time, bounded memory with a per-line cap, a leading BOM dropped."""

import io
import threading
import tracemalloc

import pytest

from openbatch.jsonl import OVERSIZED_PREVIEW, OversizedLine, is_blank, iter_lines, line_size

MIB = 1024 * 1024


class _Generated:
    """A reader that makes its bytes on the fly: `size` bytes of one long line, then tail."""

    def __init__(self, size: int, tail: bytes = b"\n{}\n") -> None:
        self._left = size
        self._tail = tail

    def read(self, size: int = -1, /) -> bytes:
        if self._left > 0:
            n = min(size, self._left)
            self._left -= n
            return b"x" * n
        tail, self._tail = self._tail, b""
        return tail


class _SmallReads(io.BytesIO):
    """Returns at most `n` bytes per read, like a network stream."""

    def __init__(self, data: bytes, n: int) -> None:
        super().__init__(data)
        self._n = n

    def read(self, size: int | None = -1, /) -> bytes:
        return super().read(self._n if size is None or size < 0 else min(size, self._n))


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"\xef\xbb\xbfa\nb\n", [b"a", b"b"]),
        (b"\xef\xbb\xbf", []),
        (b"\xef\xbb\xbf\n", [b""]),
        (b"a\n\xef\xbb\xbfb\n", [b"a", b"\xef\xbb\xbfb"]),  # only the file's first bytes
        (b"\xef\xbb", [b"\xef\xbb"]),  # not a whole BOM: data
        (b"a\r\n\r\nb", [b"a", b"", b"b"]),
    ],
)
def test_a_leading_bom_is_dropped(data: bytes, lines: list[bytes]) -> None:
    for chunk in (1, 2, 3, 1 << 20):
        assert [line for _, line in iter_lines(_SmallReads(data, chunk), chunk)] == lines


def test_lines_over_the_cap_come_as_a_preview_and_their_size() -> None:
    data = b"short\n" + b"y" * 100 + b"\r\nok\n" + b"z" * 11 + b"\n" + b"w" * 10
    for chunk in (1, 3, 7, 1 << 20):
        got = list(iter_lines(_SmallReads(data, chunk), chunk, max_line_bytes=10))
        assert [(i, line_size(line)) for i, line in got] == [
            (0, 5),
            (1, 100),
            (2, 2),
            (3, 11),
            (4, 10),
        ]
        assert [type(line) is OversizedLine for _, line in got] == [False, True, False, True, False]
        preview = got[1][1]
        assert 0 < len(preview) <= OVERSIZED_PREVIEW and preview == b"y" * len(preview)
        assert got[4][1] == b"w" * 10
        assert not is_blank(got[1][1])


def test_a_line_exactly_at_the_cap_is_kept_whole() -> None:
    for data in (b"a" * 10 + b"\n", b"a" * 10 + b"\r\n", b"a" * 10):
        for chunk in (1, 4, 64):
            [(_, line)] = iter_lines(_SmallReads(data, chunk), chunk, max_line_bytes=10)
            assert line == b"a" * 10 and type(line) is bytes


def test_splitting_a_huge_line_is_linear() -> None:
    """A 64 MiB line in 64 KiB reads: the old `pending + chunk` copied ~32 GB (minutes);
    joining the pieces once takes well under a second. The deadline is generous."""
    result: list[int] = []

    def split() -> None:
        for _, line in iter_lines(_Generated(64 * MIB), 64 * 1024):
            result.append(len(line))

    worker = threading.Thread(target=split, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "splitting one 64 MiB line did not finish in 30 s"
    assert result == [64 * MIB, 2]


def test_a_capped_huge_line_is_never_held_in_memory() -> None:
    tracemalloc.start()
    try:
        lines = [
            (i, line_size(line))
            for i, line in iter_lines(_Generated(150 * MIB), max_line_bytes=8 * MIB)
        ]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == [(0, 150 * MIB), (1, 2)]
    # A chunk (1 MiB) and the pieces of at most one cap's worth (8 MiB), joined once.
    assert peak < 24 * MIB, f"peak {peak / MIB:.1f} MiB"
