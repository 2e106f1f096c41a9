"""Bridges between the event loop and the blocking object stores (minio, files).

`UploadSink` runs `store.put_stream` in a worker thread and feeds it from the loop through a
small bounded queue, so an upload holds a few MiB whatever its size and a slow store slows
the client down (back-pressure) instead of filling memory. `iter_object` is the reverse, for
downloads.
"""

import asyncio
import contextlib
import queue
from collections import deque
from collections.abc import AsyncGenerator
from concurrent.futures import Future
from typing import Final

from openbatch.storage import ObjectStore

CHUNK: Final = 1024 * 1024
_QUEUE_DEPTH = 4
_PUT_WAIT = 0.5  # seconds a full queue is waited on before the store's state is checked
_END: list[bytes] = []  # the empty batch: no more data


class _Aborted(Exception):
    """Raised inside the store's reader: the upload was given up; nothing is written."""


class _QueueReader:
    """The store's side of the queue: `read(n)` blocks until it can return `n` bytes (or the end).

    Items are batches of chunks, exactly as the loop received them; they wait in a deque
    and are joined once per read, so a part costs one copy however many chunks it is made
    of (bytes `+=` would copy the growing part at every chunk).
    """

    def __init__(self, q: "queue.Queue[list[bytes] | BaseException]") -> None:
        self._q = q
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        while not self._done and (size < 0 or self._held < size):
            item = self._q.get()
            if isinstance(item, BaseException):
                raise item
            if not item:  # the empty batch ends the stream
                self._done = True
                break
            self._chunks.extend(item)
            self._held += sum(len(chunk) for chunk in item)
        if size < 0 or size >= self._held:
            out = b"".join(self._chunks)
            self._chunks.clear()
        else:
            taken: list[bytes] = []
            need = size
            while need:
                chunk = self._chunks.popleft()
                if len(chunk) > need:
                    self._chunks.appendleft(chunk[need:])
                    chunk = chunk[:need]
                taken.append(chunk)
                need -= len(chunk)
            out = taken[0] if len(taken) == 1 else b"".join(taken)
        self._held -= len(out)
        return out


class UploadSink:
    """An atomic upload to `key` that the loop writes into chunk by chunk.

    Chunks are handed over as they came (no copy here) in batches of about `CHUNK` bytes;
    a batch goes straight into the queue when it has room, and only a full queue (the store
    is slower than the client) costs a worker thread that waits for room.
    """

    def __init__(self, store: ObjectStore, key: str) -> None:
        self._q: queue.Queue[list[bytes] | BaseException] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._batch: list[bytes] = []
        self._batched = 0
        self.count = 0
        loop = asyncio.get_running_loop()
        reader = _QueueReader(self._q)
        self._future: Future[int] = loop.run_in_executor(  # type: ignore[assignment]
            None, store.put_stream, key, reader
        )

    async def _put(self, item: list[bytes] | BaseException) -> bool:
        """Hand `item` to the store's reader; False when the store has stopped reading
        (it failed or finished): nothing would ever take the item, so it is dropped."""
        while True:
            try:
                self._q.put_nowait(item)
                return True
            except queue.Full:
                pass
            if self._future.done():
                return False
            # A full queue waits in a worker thread, never the loop, and not for ever: the
            # store may fail while the queue is full.
            try:
                await asyncio.to_thread(self._q.put, item, timeout=_PUT_WAIT)
                return True
            except queue.Full:
                continue

    async def write(self, data: bytes) -> None:
        """Raises what the store raised if it stopped reading (the upload failed)."""
        self.count += len(data)
        self._batch.append(data)
        self._batched += len(data)
        if self._batched >= CHUNK:
            batch, self._batch, self._batched = self._batch, [], 0
            if not await self._put(batch):
                await self._store_ended()

    async def _store_ended(self) -> None:
        await asyncio.wrap_future(self._future)  # raises the store's error
        raise RuntimeError("the store stopped reading before the upload ended")

    async def close(self) -> int:
        """Finish the upload; returns the bytes stored. Raises what the store raised."""
        if self._batch:
            batch, self._batch, self._batched = self._batch, [], 0
            await self._put(batch)
        await self._put(_END)
        return await asyncio.wrap_future(self._future)

    async def abort(self) -> None:
        """Give the upload up: the store writes nothing (its temporary object is removed)."""
        await self._put(_Aborted())
        try:
            await asyncio.wrap_future(self._future)
        except _Aborted:
            pass
        except Exception:  # noqa: S110  # the upload is abandoned anyway
            pass


async def iter_object(store: ObjectStore, key: str) -> AsyncGenerator[bytes, None]:
    """Stream an object's bytes from a worker thread, one chunk at a time.

    The next chunk is read while the current one is being sent (two chunks in memory), so
    the store's latency and the client's socket overlap instead of taking turns.
    """
    reader = await asyncio.to_thread(store.open_read, key)
    ahead: asyncio.Future[bytes] | None = None
    try:
        ahead = asyncio.ensure_future(asyncio.to_thread(reader.read, CHUNK))
        while True:
            chunk = await ahead
            ahead = None
            if not chunk:
                return
            ahead = asyncio.ensure_future(asyncio.to_thread(reader.read, CHUNK))
            yield chunk
    finally:
        if ahead is not None:
            # The read runs in a thread that cannot be stopped: let it end before closing.
            with contextlib.suppress(Exception):
                await asyncio.shield(ahead)
        await asyncio.to_thread(reader.close)
