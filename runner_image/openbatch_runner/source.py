"""Which input lines a shard owns, streamed from storage.

A shard owns the requests whose ordinal (blank lines excluded) is ≡ shard (mod shards),
so shards get equal shares whatever the line sizes, and the union of all shards is the
whole file with no line twice.
"""

from collections.abc import Iterator

from openbatch.jsonl import Readable, is_blank, iter_lines
from openbatch_runner.bitmap import Bitmap


def shard_lines(
    reader: Readable, shard: int, shards: int, skip: Bitmap | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield `(physical index, line)` of this shard's requests not in `skip`."""
    ordinal = 0
    for index, line in iter_lines(reader):
        if is_blank(line):
            continue
        mine = ordinal % shards == shard
        ordinal += 1
        if mine and (skip is None or index not in skip):
            yield index, line


def take(it: Iterator[tuple[int, bytes]], n: int) -> list[tuple[int, bytes]]:
    """Up to `n` items; called in a worker thread so slow storage never blocks the loop."""
    out: list[tuple[int, bytes]] = []
    for item in it:
        out.append(item)
        if len(out) >= n:
            break
    return out
