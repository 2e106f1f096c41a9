"""Object storage: one small interface over local files and S3-compatible stores.

Every component (API, operator, runner, CLI) reads batch inputs and writes results through
`ObjectStore`. Keys are plain strings: filesystem paths for `LocalStore`, object names for
`S3Store`; `open_uri` turns a user-facing URI into a store and a key.

Reliability contract of `S3Store`: the runner must outlive a store outage of a few seconds.
Every operation retries transient failures (connection refused or reset, timeouts, HTTP 5xx,
SlowDown) with exponential backoff and jitter for up to `S3Settings.retry_seconds`, then raises
`StorageError(transient=True)`. Permanent failures (missing bucket, access denied, bad
credentials) raise at once with `transient=False`; a missing object raises `ObjectNotFound`.
A streaming read reopens the object at its current offset after a broken connection.

This module is part of the shared core: it must not import aiohttp, httpx, fastapi, kopf or
kubernetes (see the import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import re
import secrets
import ssl
import stat as stat_mod
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, Self, TypeVar, cast

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from pydantic import ValidationError
from urllib3.response import BaseHTTPResponse

from openbatch.jsonl import Readable
from openbatch.settings import S3Settings

__all__ = [
    "PART_SIZE",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectReader",
    "ObjectStore",
    "S3ObjectReader",
    "S3Store",
    "StorageError",
    "join_key",
    "open_uri",
    "split_uri",
]

PART_SIZE = 8 * 1024 * 1024
"""Multipart part size of `S3Store.put_stream`: memory per upload, and 10,000 parts cap an
object at 80 GiB."""

_CHUNK = 1024 * 1024
# Temporary files of LocalStore end with this; list_keys hides them (they are not objects yet).
_TMP_SUFFIX = ".openbatch-tmp"

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 2.0

_T = TypeVar("_T")

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- errors & types


class StorageError(Exception):
    """A storage operation failed.

    `transient` is True when retrying later may succeed (the store was unreachable or
    overloaded for longer than `retry_seconds`); False for errors that retrying cannot fix
    (missing bucket or object, access denied, object changed while reading).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ObjectNotFound(StorageError):
    """The object does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


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

    def list_keys(self, prefix: str) -> list[str]:
        """Full keys of all objects under `prefix` (recursive), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error."""
        ...


# --------------------------------------------------------------------------- URIs

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
# Syntax only; S3Store applies the full naming rules (length 3-63 and so on).
_BUCKET_SYNTAX_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
_BUCKET_RULES_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def split_uri(uri: str) -> tuple[str | None, str]:
    """Split a storage URI into `(bucket, key)`.

    `s3://bucket/a/b` -> `("bucket", "a/b")`; `s3://bucket/` and `s3://bucket` -> key "";
    `file:///tmp/x` and plain paths (`/tmp/x`, `data/x.jsonl`) -> `(None, path)`.
    Raises ValueError, naming the URI, for an empty string, a missing or malformed bucket
    and schemes other than `s3` and `file`.
    """
    if not uri:
        raise ValueError("storage URI is empty; expected s3://bucket/key or a local path")
    match = _SCHEME_RE.match(uri)
    if match is None:
        return None, uri
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "file":
        if not rest.startswith("/"):
            raise ValueError(f"file URI {uri!r} must be absolute: file:///path")
        return None, rest
    if scheme != "s3":
        raise ValueError(
            f"unsupported storage URI scheme {scheme!r} in {uri!r}; "
            "expected s3://bucket/key or a local path"
        )
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/key")
    if not _BUCKET_SYNTAX_RE.match(bucket):
        raise ValueError(
            f"S3 URI {uri!r} has an invalid bucket name {bucket!r}: use lowercase letters, "
            "digits, dots and hyphens"
        )
    return bucket, key


def open_uri(uri: str, settings: S3Settings | None = None) -> tuple[ObjectStore, str]:
    """Return `(store, key)` for a URI accepted by `split_uri`.

    S3 URIs use `settings`, or `S3Settings()` from the environment (OPENBATCH_S3_*) when
    None; missing or invalid settings raise `StorageError(transient=False)`.
    """
    bucket, key = split_uri(uri)
    if bucket is None:
        return LocalStore(), key
    if settings is None:
        try:
            settings = S3Settings()
        except ValidationError as exc:
            raise StorageError(
                f"cannot access {uri}: S3 settings are missing or invalid (set "
                f"OPENBATCH_S3_ENDPOINT, OPENBATCH_S3_ACCESS_KEY and OPENBATCH_S3_SECRET_KEY, "
                f"or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): {exc}"
            ) from exc
    return S3Store(bucket, settings), key


def join_key(prefix: str, name: str) -> str:
    """`prefix` + "/" + `name`, with exactly one slash between them; `name` if no prefix."""
    if not prefix:
        return name
    return f"{prefix.rstrip('/')}/{name.lstrip('/')}"


# --------------------------------------------------------------------------- helpers


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
        buf = bytearray(self._pending[:want])
        self._pending = self._pending[want:]
        while len(buf) < want:
            try:
                chunk = self._reader.read(want - len(buf))
            except Exception as exc:
                self.failure = exc
                raise _SourceError(exc) from exc
            if not isinstance(chunk, bytes | bytearray | memoryview):
                exc = TypeError(f"reader.read() returned {type(chunk).__name__}, not bytes")
                self.failure = exc
                raise _SourceError(exc) from exc
            if not chunk:
                break
            room = want - len(buf)
            if len(chunk) > room:  # a reader that ignores `n`: keep the excess for next time
                self._pending = bytes(chunk[room:])
                chunk = chunk[:room]
            buf += chunk
        self.count += len(buf)
        return bytes(buf)


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


def _backoff(attempt: int) -> float:
    """Exponential backoff with jitter, so clients recovering together do not stampede."""
    ceiling = min(_BACKOFF_MAX, _BACKOFF_FIRST * (2.0**attempt))
    return ceiling * random.uniform(0.5, 1.0)


def _norm_etag(etag: str | None) -> str | None:
    if not etag:
        return None
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"') or None


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse fsync on directories.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- local files


class _LocalReader(ObjectReader):
    def __init__(self, path: str, offset: int) -> None:
        self._path = path
        try:
            self._file = Path(path).open("rb")  # noqa: SIM115  # closed by close()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"object not found: {path}") from exc
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc}") from exc
        if offset:
            self._file.seek(offset)

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._file.read(size)
        except OSError as exc:
            raise StorageError(f"cannot read {self._path}: {exc}") from exc

    def close(self) -> None:
        self._file.close()


class LocalStore:
    """Objects are files; keys are filesystem paths (absolute or relative to the cwd).

    Writes go to a temporary file in the target directory, are fsynced and renamed over the
    target, so a reader sees the old file or the complete new one, never a partial one.
    Temporary files are named `.<name>.<random>.openbatch-tmp` and never listed.
    """

    def describe(self, key: str) -> str:
        return key

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = Path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {key}: {exc}") from exc
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(size=st.st_size, etag=f"{st.st_mtime_ns}-{st.st_size}")

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def open_read(self, key: str, offset: int = 0) -> ObjectReader:
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        return _LocalReader(key, offset)

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as reader:
            return reader.read()

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomically(key, lambda f: f.write(data))

    def put_stream(self, key: str, reader: Readable) -> int:
        """Copy `reader` to `key` in 1 MiB chunks via a temporary file; return bytes written.

        Exceptions raised by `reader` propagate unchanged and leave no file behind.
        """
        source = _Source(reader)

        def copy(f: BinaryIO) -> None:
            while chunk := source.read(_CHUNK):
                f.write(chunk)

        self._write_atomically(key, copy)
        return source.count

    def list_keys(self, prefix: str) -> list[str]:
        # Keys come back spelled like the prefix: relative stays relative, no "./" added.
        base = prefix if not prefix or prefix.endswith("/") else prefix.rpartition("/")[0] + "/"
        if base == "/" and not prefix.startswith("/"):
            base = ""
        top = Path(base or ".")
        if not top.is_dir():
            return []
        keys: list[str] = []
        for root, dirs, files in os.walk(top):
            rel = Path(root).relative_to(top).as_posix()
            here = base if rel == "." else f"{base}{rel}/"
            # Skip directories that cannot hold a match (prefix "a/b/out-", directory "a/b/x").
            dirs[:] = [
                d
                for d in dirs
                if f"{here}{d}/".startswith(prefix) or prefix.startswith(f"{here}{d}/")
            ]
            keys.extend(
                f"{here}{name}"
                for name in files
                if not name.endswith(_TMP_SUFFIX) and f"{here}{name}".startswith(prefix)
            )
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            Path(key).unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot delete {key}: {exc}") from exc

    def _write_atomically(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        if not key or key.endswith("/"):
            raise ValueError(f"invalid file path {key!r}")
        target = Path(key)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # os.open with 0o666 honours the umask (mkstemp would force 0600).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise StorageError(f"cannot write {key}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(target)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, _SourceError):
                raise exc.original from None
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write {key}: {exc}") from exc
            raise
        _fsync_dir(target.parent)


# --------------------------------------------------------------------------- S3

# Error codes that mean "try again" even when the HTTP status is below 500.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "XMinioServerNotInitialized",
    }
)
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AccountProblem",
        "AllAccessDisabled",
        "InvalidSecurity",
    }
)


def _is_cert_failure(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    return "CERTIFICATE_VERIFY_FAILED" in str(exc) or "hostname mismatch" in str(exc).lower()


def _http_status(exc: BaseException) -> int:
    if isinstance(exc, S3Error):
        return exc.response.status if exc.response is not None else 0
    if isinstance(exc, ServerError):
        return exc.status_code
    if isinstance(exc, InvalidResponseError):
        status = getattr(exc, "_code", 0)  # minio keeps the HTTP status private here
        return status if isinstance(status, int) else 0
    return 0


def _is_transient(exc: BaseException) -> bool:
    """Whether retrying may help. Only called for network and S3 protocol exceptions."""
    if isinstance(exc, MinioException):
        # InvalidResponseError covers a proxy answering 502/503 with HTML during an outage.
        status = _http_status(exc)
        code = exc.code if isinstance(exc, S3Error) else None
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, urllib3.exceptions.LocationValueError | urllib3.exceptions.DecodeError):
        return False
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        # Refused, reset, timed out, truncated, DNS blip; certificate problems are permanent.
        return not _is_cert_failure(exc)
    return False


_STORE_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError)


class S3Store:
    """Objects in one bucket of an S3-compatible store, through the `minio` client.

    The client gets its own connection pool with short timeouts and no retries: minio's
    default pool retries silently for minutes, while this class retries with a deadline
    (`settings.retry_seconds`) and reports what failed. Safe to share between threads.
    """

    def __init__(self, bucket: str, settings: S3Settings) -> None:
        if not _BUCKET_RULES_RE.match(bucket) or ".." in bucket:
            raise ValueError(
                f"invalid S3 bucket name {bucket!r}: 3-63 lowercase letters, digits, dots and "
                "hyphens, starting and ending with a letter or digit"
            )
        self.bucket = bucket
        self.settings = settings
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout),
            retries=False,
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        self._client = Minio(
            settings.netloc,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )
        # Set once the bucket is known to exist; see _missing_key.
        self._bucket_checked = False

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, endpoint={self.settings.endpoint!r})"

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # ---- retry core

    def _where(self, key: str | None) -> str:
        target = f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
        return f"{target} at {self.settings.endpoint}"

    def _permanent(self, op: str, key: str | None, exc: BaseException) -> StorageError:
        where = self._where(key)
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchKey" and key is not None:
                return ObjectNotFound(f"object not found: {where}")
            if exc.code == "NoSuchBucket":
                return StorageError(f"{op} {where} failed: bucket {self.bucket!r} does not exist")
            if exc.code in _AUTH_CODES:
                return StorageError(
                    f"{op} {where} failed: access denied ({exc.code}: {exc.message}); check "
                    "the access key and secret key (OPENBATCH_S3_ACCESS_KEY / "
                    "OPENBATCH_S3_SECRET_KEY) and the bucket policy"
                )
            return StorageError(f"{op} {where} failed: {exc.code}: {exc.message}")
        if _is_cert_failure(exc):
            return StorageError(
                f"{op} {where} failed: TLS certificate not trusted ({exc}); set SSL_CERT_FILE "
                "to the CA bundle of the endpoint"
            )
        return StorageError(f"{op} {where} failed: {exc}")

    def _pause(
        self, op: str, key: str | None, attempt: int, deadline: float, exc: BaseException
    ) -> None:
        delay = min(_backoff(attempt), max(0.0, deadline - time.monotonic()))
        _log.warning(
            "%s %s: transient failure (attempt %d), retrying in %.2fs: %s",
            op,
            self._where(key),
            attempt + 1,
            delay,
            exc,
        )
        time.sleep(delay)

    def _retrying(self, op: str, key: str | None, fn: Callable[[], _T]) -> _T:
        """Run `fn`, retrying transient store errors until `retry_seconds` have passed."""
        start = time.monotonic()
        deadline = start + self.settings.retry_seconds
        attempt = 0
        while True:
            try:
                return fn()
            except _STORE_ERRORS as exc:
                if not _is_transient(exc):
                    raise self._permanent(op, key, exc) from exc
                now = time.monotonic()
                if now >= deadline:
                    raise StorageError(
                        f"{op} {self._where(key)} failed: store unreachable or failing for "
                        f"{now - start:.1f}s ({attempt + 1} attempts, retry_seconds="
                        f"{self.settings.retry_seconds:g}): {exc}",
                        transient=True,
                    ) from exc
                self._pause(op, key, attempt, deadline, exc)
                attempt += 1

    def _require_key(self, key: str) -> None:
        if not key:
            raise ValueError(f"empty object key in bucket {self.bucket!r}")

    def _missing_key(self) -> None:
        """A HEAD that found no object cannot tell a missing bucket from a missing key
        (404 without a body): check the bucket once, so a typo is not reported as
        'object absent' forever."""
        if self._bucket_checked:
            return
        try:
            exists = self._client.bucket_exists(self.bucket)
        except S3Error as exc:
            if exc.code in _AUTH_CODES:
                # Object-only permissions may forbid HeadBucket; the object is just missing.
                self._bucket_checked = True
                return
            raise
        if not exists:
            # Not a store error: _retrying lets it through unchanged.
            raise StorageError(
                f"stat {self._where(None)} failed: bucket {self.bucket!r} does not exist"
            )
        self._bucket_checked = True

    # ---- operations

    def stat(self, key: str) -> ObjectInfo | None:
        self._require_key(key)

        def head() -> ObjectInfo | None:
            try:
                obj = self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code != "NoSuchKey":
                    raise
                self._missing_key()
                return None
            return ObjectInfo(size=int(obj.size or 0), etag=_norm_etag(obj.etag))

        return self._retrying("stat", key, head)

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def open_read(self, key: str, offset: int = 0) -> ObjectReader:
        """Stream the object from `offset`, resuming after broken connections.

        The reader reopens the object at its current offset after a transient failure, for
        up to `retry_seconds` without progress, and raises `StorageError(transient=False)`
        when the object was replaced in between (its ETag changed).
        """
        self._require_key(key)
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        return S3ObjectReader(self, key, offset)

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as reader:
            return reader.read()

    def put_bytes(self, key: str, data: bytes) -> None:
        self._require_key(key)
        self._retrying(
            "put",
            key,
            lambda: self._client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                part_size=PART_SIZE,
                num_parallel_uploads=1,
            ),
        )

    def put_stream(self, key: str, reader: Readable) -> int:
        """Upload what `reader` yields, in `PART_SIZE` parts; return the byte count.

        Memory stays at about one part. The object appears only when the upload completes
        (a single PUT, or CompleteMultipartUpload), so readers never see a partial object.

        Retry rule: a transient failure after the first byte was consumed can only be retried
        from the beginning. It is retried (within `retry_seconds`) when the reader can be
        rewound, through `seek(0)` (file objects, `io.BytesIO`) or a `reset()` method
        (re-creatable generators); otherwise `StorageError(transient=True)` is raised and the
        caller must re-create the data and call again. Exceptions raised by `reader` itself
        propagate unchanged and are never retried.
        """
        self._require_key(key)
        start = time.monotonic()
        deadline = start + self.settings.retry_seconds
        attempt = 0
        while True:
            source = _Source(reader)
            try:
                # One part in flight: memory is one part and a failure surfaces at the failing
                # part, not after minio's parallel workers drained the whole reader.
                self._client.put_object(
                    self.bucket,
                    key,
                    cast(BinaryIO, source),  # minio only calls read()
                    length=-1,
                    part_size=PART_SIZE,
                    num_parallel_uploads=1,
                )
                return source.count
            except Exception as exc:
                if source.failure is not None:
                    raise source.failure from None
                if not isinstance(exc, _STORE_ERRORS):
                    raise
                if not _is_transient(exc):
                    raise self._permanent("put", key, exc) from exc
                now = time.monotonic()
                if now >= deadline:
                    raise StorageError(
                        f"put {self._where(key)} failed: store unreachable or failing for "
                        f"{now - start:.1f}s ({attempt + 1} attempts): {exc}",
                        transient=True,
                    ) from exc
                if source.count and not _rewind(reader):
                    raise StorageError(
                        f"put {self._where(key)} failed after {source.count} bytes were "
                        f"consumed and the reader cannot be rewound (no seek(0) or reset()); "
                        f"re-create the data and retry: {exc}",
                        transient=True,
                    ) from exc
                self._pause("put", key, attempt, deadline, exc)
                attempt += 1

    def list_keys(self, prefix: str) -> list[str]:
        def listing() -> list[str]:
            return sorted(
                str(obj.object_name)
                for obj in self._client.list_objects(
                    self.bucket, prefix=prefix or None, recursive=True
                )
                if not obj.is_dir
            )

        return self._retrying("list", prefix, listing)

    def delete(self, key: str) -> None:
        self._require_key(key)

        def remove() -> None:
            try:
                self._client.remove_object(self.bucket, key)
            except S3Error as exc:
                if exc.code != "NoSuchKey":
                    raise

        self._retrying("delete", key, remove)


class S3ObjectReader(ObjectReader):
    """Streams one object; on a broken connection reopens it at the current offset.

    `reconnects` counts those reopenings (for logs and tests).
    """

    def __init__(self, store: S3Store, key: str, offset: int) -> None:
        self.reconnects = 0
        self._store = store
        self._key = key
        self._offset = offset
        self._etag: str | None = None
        self._first = True
        self._response: BaseHTTPResponse | None = None
        self._end: int | None = None  # offset where the current response should end
        self._eof = False
        self._closed = False
        self._open()

    @property
    def offset(self) -> int:
        """Bytes of the object consumed so far, counted from its start."""
        return self._offset

    def _get(self) -> BaseHTTPResponse | None:
        """One GET from the current offset; None when the offset is at or past the end."""
        client = self._store._client
        bucket = self._store.bucket
        try:
            return client.get_object(bucket, self._key, offset=self._offset)
        except S3Error as exc:
            if exc.code != "InvalidRange":
                raise
            # Asked for bytes at or past the end: an empty read, unless the object changed.
            obj = client.stat_object(bucket, self._key)
            self._check_etag(_norm_etag(obj.etag))
            if (obj.size or 0) > self._offset:
                raise
            return None

    def _check_etag(self, etag: str | None) -> None:
        if self._first:
            self._etag = etag
        elif etag is not None and self._etag is not None and etag != self._etag:
            raise StorageError(
                f"read {self._store._where(self._key)} failed: object changed while reading "
                f"(ETag {self._etag} -> {etag} at offset {self._offset})"
            )

    def _open(self) -> None:
        response = self._store._retrying("read", self._key, self._get)
        if response is None:
            self._eof = True
        else:
            try:
                self._check_etag(_norm_etag(response.headers.get("ETag")))
            except StorageError:
                self._discard(response)
                raise
            length = response.headers.get("Content-Length")
            self._end = self._offset + int(length) if length and length.isdigit() else None
            self._response = response
        self._first = False

    @staticmethod
    def _discard(response: BaseHTTPResponse) -> None:
        # close() drops the connection (it may hold unread bytes); release_conn() frees the slot.
        with contextlib.suppress(Exception):
            response.close()
        with contextlib.suppress(Exception):
            response.release_conn()

    def _drop(self) -> None:
        if self._response is not None:
            self._discard(self._response)
            self._response = None

    def read(self, size: int = -1, /) -> bytes:
        if self._closed:
            raise ValueError("read from a closed object reader")
        if size < 0:
            parts = []
            while chunk := self.read(_CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        if size == 0:
            return b""
        failing_since: float | None = None
        last: BaseException | None = None
        while not self._eof:
            if failing_since is not None:
                now = time.monotonic()
                if now - failing_since > self._store.settings.retry_seconds:
                    raise StorageError(
                        f"read {self._store._where(self._key)} failed at offset "
                        f"{self._offset}: connection keeps breaking for "
                        f"{now - failing_since:.1f}s: {last}",
                        transient=True,
                    ) from last
            if self._response is None:
                self.reconnects += 1
                self._open()  # retries on its own; raises when the store stays away
                continue
            try:
                data = self._response.read(size, decode_content=False)
            except _STORE_ERRORS as exc:
                if not _is_transient(exc):
                    self._drop()
                    raise self._store._permanent("read", self._key, exc) from exc
                self._drop()
                _log.warning(
                    "read %s: connection broke at offset %d, reopening: %s",
                    self._store._where(self._key),
                    self._offset,
                    exc,
                )
                failing_since = failing_since or time.monotonic()
                last = exc
                continue
            if data:
                self._offset += len(data)
                return data
            if self._end is not None and self._offset < self._end:
                # Connection closed early without an error: resume where it stopped.
                self._drop()
                failing_since = failing_since or time.monotonic()
                last = urllib3.exceptions.ProtocolError(
                    f"response ended at offset {self._offset}, expected {self._end}"
                )
                continue
            self._eof = True
            self._drop()
        return b""

    def close(self) -> None:
        self._closed = True
        self._drop()
