"""Join committed parts of every shard into the output and error files (DESIGN §5).

Idempotent: the same parts always give the same files, so running it again changes
nothing. Files are written only when they would be non-empty (contract §5.2). Joining
streams part by part (small parts cannot be composed server-side: S3 needs ≥ 5 MiB).
"""

from collections.abc import Iterator
from dataclasses import dataclass

from openbatch.layout import (
    PartKind,
    PartName,
    parse_part_name,
    result_key,
    shard_prefix,
)
from openbatch.progress import FinalResult, ProgressRecord, RunState
from openbatch.storage import LocalStore, ObjectStore, open_uri
from openbatch.usage import ZERO_USAGE, UsageTuple, add_usage, to_batch_usage
from openbatch_runner.bitmap import Bitmap
from openbatch_runner.committer import read_first_line
from openbatch_runner.parts import decode_header, kept_summary, part_body
from openbatch_runner.workdir import (
    ShardCountMismatch,
    WorkDirMissing,
    mismatch_message,
    read_record,
    recorded_shards,
)


class ShardsNotFinished(RuntimeError):
    """Finalize was asked to join shards of which some are still running."""


@dataclass
class _Part:
    key: str
    name: PartName
    shard: int
    keep: list[bool] | None  # None: keep every line


@dataclass
class _Counts:
    completed: int = 0
    failed: int = 0
    unrun: int = 0
    usage: UsageTuple = ZERO_USAGE
    out_lines: int = 0
    err_lines: int = 0


def _plan(store: ObjectStore, work: str, shards: int) -> tuple[list[_Part], _Counts]:
    """Order every part and decide which lines to keep: the first copy of each line wins."""
    parts: list[_Part] = []
    for shard in range(shards):
        for key in store.list_keys(shard_prefix(work, shard)):
            name = parse_part_name(key)
            if name is not None:
                parts.append(_Part(key, name, shard, None))
    parts.sort(key=lambda p: (p.shard, p.name.seq, p.name.run, p.name.kind != PartKind.ERR))
    seen = Bitmap()
    counts = _Counts()
    for part in parts:
        summary = decode_header(read_first_line(store, part.key))
        keep = [index not in seen for index in summary.lines]
        for index in summary.lines:
            seen.add(index)
        kept = sum(keep)
        if part.name.kind is PartKind.OUT:
            counts.out_lines += kept
        else:
            counts.err_lines += kept
        if kept != len(keep):
            part.keep = keep
            summary = kept_summary(part.name.kind, part_body(store.read_bytes(part.key)), keep)
        counts.completed += summary.completed
        counts.failed += summary.failed
        counts.unrun += summary.unrun
        counts.usage = add_usage(counts.usage, summary.usage)
    return parts, counts


def _part_lines(store: ObjectStore, part: _Part) -> Iterator[bytes]:
    lines = part_body(store.read_bytes(part.key))
    if part.keep is None:
        yield from lines
        return
    for line, keep in zip(lines, part.keep, strict=True):
        if keep:
            yield line


class _JoinReader:
    """A `Readable` over the kept lines of many parts; `reset()` lets storage retry."""

    def __init__(self, store: ObjectStore, parts: list[_Part]) -> None:
        self._store = store
        self._parts = parts
        self.reset()

    def reset(self) -> None:
        self._iter = self._chunks()
        self._buf = b""

    def seek(self, offset: int) -> int:
        if offset != 0:
            raise OSError("a join reader can only restart from the beginning")
        self.reset()
        return 0

    def _chunks(self) -> Iterator[bytes]:
        for part in self._parts:
            if part.keep is None:
                data = self._store.read_bytes(part.key)
                yield data.split(b"\n", 1)[1] if b"\n" in data else b""
            else:
                yield b"".join(_part_lines(self._store, part))

    def read(self, size: int = -1, /) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = next(self._iter, None)
            if chunk is None:
                break
            self._buf += chunk
        if size < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out


def _combined_state(records: list[ProgressRecord]) -> RunState:
    states = {r.state for r in records}
    for state in (RunState.FAILED, RunState.CANCELLED, RunState.EXPIRED):
        if state in states:
            return state
    return RunState.COMPLETED


def _shard_records(
    store: ObjectStore, work: str, work_dir: str, shards: int
) -> list[ProgressRecord]:
    """Every shard's record, once each is terminal and all agree on the shard count."""
    present = recorded_shards(store, work)
    if not present:
        raise WorkDirMissing(
            f"the work dir {work_dir} does not exist (no shard's progress record is there)"
        )
    how = f"finalize --shards {shards}"
    found: dict[int, ProgressRecord] = {}
    for shard in present:
        record = read_record(store, work, shard)
        if record is None:
            continue
        if record.shards != shards:
            raise ShardCountMismatch(mismatch_message(work_dir, record.shards, shards, how))
        found[shard] = record
    beyond = [k for k in found if k >= shards]
    if beyond:
        raise ShardCountMismatch(mismatch_message(work_dir, max(beyond) + 1, shards, how))
    for shard in range(shards):
        record = found.get(shard)
        if record is None:
            raise ShardsNotFinished(f"shard {shard} of {shards} has not started")
        if not record.state.terminal:
            raise ShardsNotFinished(f"shard {shard} of {shards} is {record.state.value}")
    return [found[shard] for shard in range(shards)]


def finalize(work_dir: str, shards: int, output: str, errors: str) -> FinalResult:
    """Join all shards' parts into `output` and `errors` and record `result.json`."""
    store, work = open_uri(work_dir)
    records = _shard_records(store, work, work_dir, shards)
    state = _combined_state(records)
    model = next((r.model for r in records if r.model), None)
    total = sum(r.total for r in records)
    if state is RunState.FAILED:
        result = FinalResult(state=state, total=total, completed=0, failed=0, unrun=0, model=model)
        store.put_bytes(result_key(work), result.model_dump_json().encode())
        return result

    parts, counts = _plan(store, work, shards)
    out_uri = err_uri = None
    for kind, uri, n_lines in (
        (PartKind.OUT, output, counts.out_lines),
        (PartKind.ERR, errors, counts.err_lines),
    ):
        if n_lines == 0:
            continue
        target_store, target_key = open_uri(uri)
        if isinstance(target_store, LocalStore):  # a finalize killed while writing this file
            target_store.remove_stale_temporaries(target_key)
        selected = [p for p in parts if p.name.kind is kind]
        target_store.put_stream(target_key, _JoinReader(store, selected))
        if kind is PartKind.OUT:
            out_uri = uri
        else:
            err_uri = uri
    result = FinalResult(
        state=state,
        total=total,
        completed=counts.completed,
        failed=counts.failed,
        unrun=counts.unrun,
        usage=to_batch_usage(counts.usage),
        model=model,
        output_uri=out_uri,
        error_uri=err_uri,
        output_lines=counts.out_lines,
        error_lines=counts.err_lines,
    )
    store.put_bytes(result_key(work), result.model_dump_json().encode())
    return result
