"""The shim's streaming bridges: exact reads, few copies, nothing lost or reordered."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from pathlib import Path
from typing import cast

import pytest

from openbatch.storage import MIN_PART_SIZE, LocalStore, ObjectStore, S3Store
from openbatch.storage.source import _Source
from openbatch_shim.memory import return_large_buffers_to_os
from openbatch_shim.streaming import _END, UploadSink, _QueueReader, iter_object


def _reader_of(chunks: list[bytes], per_batch: int = 1) -> _QueueReader:
    q: queue.Queue[list[bytes] | BaseException] = queue.Queue()
    for i in range(0, len(chunks), per_batch):
        q.put(chunks[i : i + per_batch])
    q.put(_END)
    return _QueueReader(q)


@pytest.mark.parametrize(
    ("chunks", "sizes"),
    [
        ([b"abc", b"defg", b"h"], [2, 2, 2, 2, 2]),  # reads split chunks
        ([b"abc", b"defg", b"h"], [8, 1]),  # one read joins them all
        ([b"abc", b"defg", b"h"], [100]),  # more than there is: the end
        ([b"abcdefgh"], [3, 3, 3]),
        ([b"a"] * 8, [5, 5]),
    ],
)
@pytest.mark.parametrize("per_batch", [1, 2, 8])
def test_queue_reader_returns_exact_sizes_in_order(
    chunks: list[bytes], sizes: list[int], per_batch: int
) -> None:
    reader = _reader_of(chunks, per_batch)
    whole = b"".join(chunks)
    got = [reader.read(n) for n in sizes]
    offset = 0
    for n, part in zip(sizes, got, strict=True):
        assert part == whole[offset : offset + n]
        offset += len(part)
    assert reader.read(10) == b""


def test_queue_reader_hands_a_whole_chunk_on_uncopied() -> None:
    chunk = b"x" * 1000
    reader = _reader_of([chunk])
    assert reader.read(1000) is chunk


def test_queue_reader_raises_what_the_writer_put() -> None:
    q: queue.Queue[list[bytes] | BaseException] = queue.Queue()
    q.put([b"abc"])
    q.put(RuntimeError("client went away"))
    with pytest.raises(RuntimeError, match="client went away"):
        _QueueReader(q).read(10)


class _Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    def read(self, size: int = -1, /) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_source_passes_a_full_read_through_without_a_copy() -> None:
    part = b"p" * 4096
    source = _Source(_Chunks([part]))
    assert source.read(4096) is part
    assert source.count == 4096


def test_source_fills_short_reads_and_keeps_excess() -> None:
    source = _Source(_Chunks([b"ab", b"cdef", b"ghijkl"]))
    assert source.read(5) == b"abcde"
    assert source.read(5) == b"fghij"
    assert source.read(5) == b"kl"
    assert source.read(5) == b""
    assert source.count == 12


def test_s3_part_size_below_the_minimum_is_refused() -> None:
    from openbatch.settings import S3Settings

    settings = S3Settings(endpoint="http://127.0.0.1:9", access_key="a", secret_key="b")  # noqa: S106
    with pytest.raises(ValueError, match="minimum"):
        S3Store("bucket", settings, part_size=MIN_PART_SIZE - 1)
    assert S3Store("bucket", settings, part_size=MIN_PART_SIZE).part_size == MIN_PART_SIZE


def test_upload_sink_and_download_round_trip(tmp_path: Path) -> None:
    store = LocalStore()
    key = str(tmp_path / "obj")
    data = bytes(range(256)) * 20_000  # ~5 MB, several chunks

    async def go() -> bytes:
        sink = UploadSink(store, key)
        for i in range(0, len(data), 70_001):  # odd sizes: chunks never line up
            await sink.write(data[i : i + 70_001])
        assert await sink.close() == len(data)
        return b"".join([chunk async for chunk in iter_object(store, key)])

    assert asyncio.run(go()) == data


def test_a_download_given_up_early_closes_its_reader(tmp_path: Path) -> None:
    store = LocalStore()
    key = str(tmp_path / "obj")
    store.put_bytes(key, b"z" * (3 << 20))

    async def go() -> bytes:
        stream = iter_object(store, key)
        first = await anext(stream)
        await stream.aclose()  # the client disconnected: the read ahead must not leak
        return first

    assert len(asyncio.run(go())) > 0


def test_allocator_tuning_applies_on_glibc_linux() -> None:
    import platform
    import sys

    applied = return_large_buffers_to_os()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied
    else:
        assert not applied


class _PieceStore:
    """A store whose `put_stream` reads `piece`-sized reads and keeps what it got."""

    def __init__(self, piece: int) -> None:
        self.piece = piece
        self.seen: list[bytes] = []

    def put_stream(self, key: str, reader: _QueueReader) -> int:
        while data := reader.read(self.piece):
            self.seen.append(data)
        return sum(len(d) for d in self.seen)


def test_upload_sink_hands_the_clients_chunks_on_uncopied() -> None:
    piece = 512 * 1024
    chunks = [bytes([i]) * piece for i in range(5)]
    store = _PieceStore(piece)

    async def go() -> int:
        sink = UploadSink(cast(ObjectStore, store), "key")
        for chunk in chunks:
            await sink.write(chunk)
        return await sink.close()

    assert asyncio.run(go()) == 5 * piece
    # The very objects the client's request delivered reach the store: no copy between.
    assert all(got is sent for got, sent in zip(store.seen, chunks, strict=True))


class _FailingStore:
    """A store that reads one piece of the upload, then fails (an S3 error mid-upload)."""

    def put_stream(self, key: str, reader: _QueueReader) -> int:
        reader.read(1)
        raise OSError("the store went away")


def test_a_store_failing_mid_upload_fails_the_upload_instead_of_hanging_it() -> None:
    chunk = b"x" * (1024 * 1024)

    async def go() -> None:
        sink = UploadSink(cast(ObjectStore, _FailingStore()), "key")
        # Far more than the queue holds: without a reader, a blind put would wait for ever.
        for _ in range(64):
            await sink.write(chunk)

    with pytest.raises(OSError, match="the store went away"):
        # The bound only turns a hang into a failure; a working sink raises within a second.
        asyncio.run(asyncio.wait_for(go(), timeout=60))


def test_abort_after_the_store_failed_returns() -> None:
    async def go() -> None:
        sink = UploadSink(cast(ObjectStore, _FailingStore()), "key")
        for _ in range(8):
            with contextlib.suppress(OSError):
                await sink.write(b"y" * (1024 * 1024))
        await sink.abort()

    asyncio.run(asyncio.wait_for(go(), timeout=60))
