"""Which input lines a shard owns, streamed from storage.

A shard owns the requests whose ordinal (blank lines excluded) is ≡ shard (mod shards),
so shards get equal shares whatever the line sizes, and the union of all shards is the
whole file with no line twice.
"""

import hashlib
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


DIGEST_ALGORITHM = "blake2b-256"


class DigestReader:
    """Passes reads through and hashes every byte, so one pass both validates and
    fingerprints the input (a resume compares the fingerprint, DESIGN §5)."""

    def __init__(self, reader: Readable) -> None:
        self._reader = reader
        self._hash = hashlib.blake2b(digest_size=32)
        self.at_end = False  # the whole input went through

    def read(self, size: int = -1, /) -> bytes:
        data = self._reader.read(size)
        if data:
            self._hash.update(data)
        else:
            self.at_end = True
        return data

    @property
    def digest(self) -> str:
        return f"{DIGEST_ALGORITHM}:{self._hash.hexdigest()}"


def content_digest(reader: Readable, chunk_size: int = 1 << 20) -> str:
    """The fingerprint of everything `reader` yields (a resume's check; blocking)."""
    digester = DigestReader(reader)
    while digester.read(chunk_size):
        pass
    return digester.digest
