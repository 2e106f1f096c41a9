"""Buffers results and commits them as parts; reads committed parts back on restart.

A result is done only once the part holding it is stored (one atomic PUT). Parts are
committed every `commit_every` results or `commit_interval` seconds, whichever comes first,
which bounds what a crash can lose (DESIGN §5).
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from openbatch.layout import PartKind, PartName, parse_part_name, part_key, shard_prefix
from openbatch.storage import ObjectStore, StorageError
from openbatch.usage import ZERO_USAGE, UsageTuple, add_usage
from openbatch_runner.bitmap import Bitmap
from openbatch_runner.outcome import LineResult
from openbatch_runner.parts import (
    PartSummary,
    decode_header,
    encode_part,
    kept_summary,
    part_body,
)

HEADER_READ_CHUNK = 64 * 1024


@dataclass
class Tally:
    """Counts over committed results."""

    completed: int = 0
    failed: int = 0
    unrun: int = 0
    usage: UsageTuple = ZERO_USAGE
    parts: int = 0

    def add(self, summary: PartSummary) -> None:
        self.completed += summary.completed
        self.failed += summary.failed
        self.unrun += summary.unrun
        self.usage = add_usage(self.usage, summary.usage)


@dataclass
class Committed:
    """What earlier runs of this shard committed."""

    done: Bitmap = field(default_factory=Bitmap)
    tally: Tally = field(default_factory=Tally)
    next_seq: int = 0


def read_first_line(store: ObjectStore, key: str) -> bytes:
    with store.open_read(key) as reader:
        buf = b""
        while b"\n" not in buf:
            chunk = reader.read(HEADER_READ_CHUNK)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\n", 1)[0]


def scan_committed(store: ObjectStore, work: str, shard: int) -> Committed:
    """Rebuild the done set and counts from part headers (blocking; run in a thread).

    A line that overlapping runner processes both committed is counted once: the first
    copy in finalize's order (sequence, run id, err before out), so the counts never
    exceed the shard's lines and agree with what finalize will write.
    """
    state = Committed()
    parts: list[tuple[PartName, str]] = []
    for key in store.list_keys(shard_prefix(work, shard)):
        name = parse_part_name(key)
        if name is not None:
            parts.append((name, key))
    parts.sort(key=lambda p: (p[0].seq, p[0].run, p[0].kind != PartKind.ERR))
    for name, key in parts:
        header = decode_header(read_first_line(store, key))
        keep = [index not in state.done for index in header.lines]
        counted = header
        if not all(keep):
            counted = kept_summary(name.kind, part_body(store.read_bytes(key)), keep)
        for index in header.lines:
            state.done.add(index)
        state.tally.add(counted)
        state.tally.parts += 1
        state.next_seq = max(state.next_seq, name.seq + 1)
    return state


class _Buffer:
    __slots__ = ("err", "err_summary", "out", "out_summary")

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.out_summary = PartSummary()
        self.err_summary = PartSummary()

    def __len__(self) -> int:
        return len(self.out) + len(self.err)


class Committer:
    def __init__(
        self,
        store: ObjectStore,
        work: str,
        shard: int,
        run_id: str,
        committed: Committed,
        *,
        commit_every: int,
        commit_interval: float,
        on_commit: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self._work = work
        self._shard = shard
        self._run = run_id
        self.done = committed.done
        self.tally = committed.tally
        self._seq = committed.next_seq
        self._every = commit_every
        self._interval = commit_interval
        self._on_commit = on_commit
        self._buf = _Buffer()
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._committed = asyncio.Event()
        self._last_commit = time.monotonic()
        self.failure: StorageError | None = None  # set when storage gave up on a commit

    @property
    def pending(self) -> int:
        return len(self._buf)

    def add(self, index: int, result: LineResult) -> None:
        buf = self._buf
        if result.ok:
            buf.out.append(result.data)
            summary = buf.out_summary
            summary.completed += 1
        else:
            buf.err.append(result.data)
            summary = buf.err_summary
            if result.unrun:
                summary.unrun += 1
            else:
                summary.failed += 1
        summary.lines.append(index)
        if result.usage is not ZERO_USAGE:
            summary.usage = add_usage(summary.usage, result.usage)
        if len(buf) >= self._every:
            self._kick.set()

    async def commit(self) -> None:
        """Store everything buffered so far as one out part and one err part."""
        async with self._lock:
            buf, self._buf = self._buf, _Buffer()
            self._last_commit = time.monotonic()
            if not len(buf):
                return
            seq = self._seq
            self._seq += 1
            # The err part goes first: should we die between the two PUTs, the lines of the
            # missing out part are simply run again, and nothing is ever counted twice.
            for kind, lines, summary in (
                (PartKind.ERR, buf.err, buf.err_summary),
                (PartKind.OUT, buf.out, buf.out_summary),
            ):
                if not lines:
                    continue
                key = part_key(self._work, self._shard, kind, seq, self._run)
                await asyncio.to_thread(self._store.put_bytes, key, encode_part(summary, lines))
                # Never counted twice, whatever the dispatcher did: counts stay within total.
                keep = [index not in self.done for index in summary.lines]
                counted = summary if all(keep) else kept_summary(kind, lines, keep)
                for index in summary.lines:
                    self.done.add(index)
                self.tally.add(counted)
                self.tally.parts += 1
            await self._on_commit()
            self._committed.set()
            self._committed = asyncio.Event()

    async def wait_committed(self) -> None:
        await self._committed.wait()

    async def run(self) -> None:
        """Commit on size (kicked by `add`) or on the interval, until cancelled.

        If storage gives up (its own retries exhausted), the failure is recorded and every
        waiter is woken, so the dispatcher stops instead of waiting for room forever.
        """
        while True:
            timeout = max(0.0, self._interval - (time.monotonic() - self._last_commit))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout)
            self._kick.clear()
            try:
                await self.commit()
            except StorageError as exc:
                self.failure = exc
                self._committed.set()
                raise
