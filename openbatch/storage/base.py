"""What every object store offers: the `ObjectStore` protocol, `ObjectInfo`, `ObjectReader`,
and the part and chunk sizes shared by the stores."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from openbatch.jsonl import Readable

PART_SIZE = 8 * 1024 * 1024
"""Default multipart part size of `S3Store.put_stream`: memory per upload (about three parts:
minio copies each part twice), and 10,000 parts cap an object at 80 GiB."""

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3's smallest part (but the last): the least memory per upload; caps an object at ~48 GiB."""

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """Size and version tag of an object.

    `etag` is the S3 ETag without quotes, or `f"{mtime_ns}-{size}"` for a local file; it
    changes when the object is rewritten.
    """

    size: int
    etag: str | None


class ObjectReader(ABC):
    """A binary, forward-only, file-like reader returned by `ObjectStore.open_read`."""

    @abstractmethod
    def read(self, size: int = -1, /) -> bytes:
        """Return up to `size` bytes (all remaining when negative); b"" at the end."""

    @abstractmethod
    def close(self) -> None:
        """Release the underlying file or connection; idempotent."""

    def readable(self) -> bool:
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ObjectStore(Protocol):
    """What every component needs from object storage."""

    def describe(self, key: str) -> str:
        """Human-readable location of `key`: `s3://bucket/key` or the local path."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and ETag of the object, or None when it does not exist."""
        ...

    def exists(self, key: str) -> bool: ...

    def open_read(self, key: str, offset: int = 0) -> ObjectReader:
        """Stream the object from byte `offset`; raises `ObjectNotFound`."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """The whole object (small objects only); raises `ObjectNotFound`."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write the object atomically: readers see the old object or all of `data`."""
        ...

    def put_stream(self, key: str, reader: Readable) -> int:
        """Write what `reader.read(n)` yields until b"", atomically; return the byte count."""
        ...

    def check_writable(self, key: str) -> None:
        """Raise `StorageError` now if writing `key` later is bound to fail; write nothing.

        Local paths: the key is not a directory, its nearest existing parent is a directory
        that accepts a new file. S3: the bucket exists (object permissions are only known
        when writing).
        """
        ...

    def list_keys(self, prefix: str) -> list[str]:
        """Full keys of all objects under `prefix` (recursive), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error."""
        ...


@runtime_checkable
class PresigningStore(Protocol):
    """A store that can hand out a time-limited URL for reading one object (S3)."""

    def presigned_get(
        self,
        key: str,
        seconds: int,
        *,
        response_headers: dict[str, str] | None = None,
        endpoint: str | None = None,
    ) -> str:
        """A URL that GETs `key` with no credentials for `seconds`; `endpoint`
        (`scheme://host[:port]`) replaces the store's own where clients reach it elsewhere."""
        ...
