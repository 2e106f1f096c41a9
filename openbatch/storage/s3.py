"""`S3Store` and `S3ObjectReader`: one bucket of an S3-compatible store through `minio`,
with retries, backoff and the transient-error classification behind them (see the
reliability contract in the `openbatch.storage` docstring)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import re
import ssl
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import timedelta
from typing import TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import DictType
from urllib3.response import BaseHTTPResponse

from openbatch.jsonl import Readable
from openbatch.settings import S3Settings, check_s3_endpoint
from openbatch.storage.base import _CHUNK, MIN_PART_SIZE, PART_SIZE, ObjectInfo, ObjectReader
from openbatch.storage.errors import ObjectNotFound, StorageError
from openbatch.storage.source import _rewind, _Source

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 2.0

_T = TypeVar("_T")

_log = logging.getLogger(__name__)

# Full bucket naming rules; split_uri checks the syntax only.
_BUCKET_RULES_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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

    # Parts of one upload sent at once: the next part is read from the caller while these
    # travel, and the store's per-part round trip no longer stalls the caller (B13).
    PARALLEL_PARTS = 2
    MAX_PARTS = 10_000  # S3's limit of parts in one multipart upload

    def __init__(self, bucket: str, settings: S3Settings, part_size: int = PART_SIZE) -> None:
        if not _BUCKET_RULES_RE.match(bucket) or ".." in bucket:
            raise ValueError(
                f"invalid S3 bucket name {bucket!r}: 3-63 lowercase letters, digits, dots and "
                "hyphens, starting and ending with a letter or digit"
            )
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size} is below S3's minimum {MIN_PART_SIZE}")
        self.bucket = bucket
        self.part_size = part_size
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
        self._public_clients: dict[str, Minio] = {}  # presigning under other host names

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

    def presigned_get(
        self,
        key: str,
        seconds: int,
        *,
        response_headers: dict[str, str] | None = None,
        endpoint: str | None = None,
    ) -> str:
        """A SigV4 query-signed GET URL for `key`, valid for `seconds` (1 s to 7 days).

        Signing is local; only a store without a configured region is asked for the
        bucket's region, once. `response_headers` are S3's `response-content-type` and
        `response-content-disposition` overrides. With `endpoint`, the URL names that host
        (where clients reach the store, e.g. an ingress) and is signed for it.
        """
        self._require_key(key)
        if not 1 <= seconds <= 7 * 24 * 3600:
            raise ValueError(f"presigned URLs last 1 s to 7 days, not {seconds} s")
        headers: DictType | None = dict(response_headers) if response_headers else None

        def sign() -> str:
            client = self._client if endpoint is None else self._public_client(endpoint)
            return client.presigned_get_object(
                self.bucket, key, expires=timedelta(seconds=seconds), response_headers=headers
            )

        return self._retrying("presign", key, sign)

    def _public_client(self, endpoint: str) -> Minio:
        """A client that only signs, one per endpoint for the store's life. Its region is the
        configured one, else the bucket's as our own client learns it (GetBucketLocation,
        once): the public name may not answer us."""
        client = self._public_clients.get(endpoint)
        if client is None:
            parts = urlsplit(check_s3_endpoint(endpoint))
            client = Minio(
                parts.netloc,
                access_key=self.settings.access_key,
                secret_key=self.settings.secret_key,
                secure=parts.scheme == "https",
                region=self.settings.region or self._client._get_region(self.bucket),
            )
            self._public_clients[endpoint] = client  # a racing thread builds the same one
        return client

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
                part_size=self.part_size,
                num_parallel_uploads=1,
            ),
        )

    def put_stream(self, key: str, reader: Readable) -> int:
        """Upload what `reader` yields, in `self.part_size` parts; return the byte count.

        Memory stays at about `PARALLEL_PARTS + 1` parts. The object appears only when the
        upload completes (a single PUT, or CompleteMultipartUpload), so readers never see a
        partial object; a failed part ends the upload at once (it is aborted).

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
                self._upload(key, source)
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

    def _upload(self, key: str, source: _Source) -> None:
        """One object from `source`: a single PUT when it fits in one part, else a multipart
        upload with up to `PARALLEL_PARTS` parts in flight.

        Not minio's `put_object`: for a stream of unknown length it copies every part twice
        (it reads one byte more to find the end), and its parallel workers report a failed
        part only after the whole stream was read. minio's part calls are its own building
        blocks for exactly this; they are pinned with minio (<8) and tested on SeaweedFS.
        """
        client = self._client
        headers: DictType = {"Content-Type": "application/octet-stream"}
        data = source.read(self.part_size)
        if len(data) < self.part_size:
            client._put_object(self.bucket, key, data, headers)
            return
        upload_id = client._create_multipart_upload(self.bucket, key, headers)
        try:
            parts = self._upload_parts(key, upload_id, data, source)
            client._complete_multipart_upload(self.bucket, key, upload_id, parts)
        except BaseException:
            try:
                client._abort_multipart_upload(self.bucket, key, upload_id)
            except Exception as exc:  # the upload's own failure is what the caller needs
                _log.warning(
                    "could not abort the multipart upload of %s (%s): its parts stay until a "
                    "lifecycle rule (AbortIncompleteMultipartUpload) removes them",
                    self._where(key),
                    exc,
                )
            raise

    def _upload_parts(self, key: str, upload_id: str, first: bytes, source: _Source) -> list[Part]:
        """Send `first` and the rest of `source` as parts, `PARALLEL_PARTS` at a time; a
        failed part raises as soon as it finishes.

        The next part is sent when *any* part in flight is done, not the oldest: the store's
        answer times vary part to part, and waiting in order would idle a slot behind a
        slow part.
        """
        parts: list[Part] = []
        sending: dict[Future[str], int] = {}

        def settle() -> None:
            done, _ = wait(sending, return_when=FIRST_COMPLETED)
            for upload in done:
                parts.append(Part(sending.pop(upload), upload.result()))

        with ThreadPoolExecutor(self.PARALLEL_PARTS, thread_name_prefix="s3-part") as pool:
            try:
                number, data = 1, first
                while data:
                    if number > self.MAX_PARTS:
                        raise StorageError(
                            f"put {self._where(key)}: more than {self.MAX_PARTS} parts of "
                            f"{self.part_size} bytes, S3's limit for one object",
                            transient=False,
                        )
                    if len(sending) >= self.PARALLEL_PARTS:
                        settle()
                    upload = pool.submit(
                        self._client._upload_part,
                        self.bucket,
                        key,
                        data,
                        None,
                        upload_id,
                        number,
                    )
                    sending[upload] = number
                    number += 1
                    data = source.read(self.part_size)
                while sending:
                    settle()
            finally:
                for upload in sending:
                    upload.cancel()
        parts.sort(key=lambda part: part.part_number)
        return parts

    def check_writable(self, key: str) -> None:
        self._require_key(key)
        if self._bucket_checked:
            return

        def head_bucket() -> bool:
            try:
                return self._client.bucket_exists(self.bucket)
            except S3Error as exc:
                if exc.code in _AUTH_CODES:
                    return True  # object-only permissions may forbid HeadBucket
                raise

        if not self._retrying("check", key, head_bucket):
            raise StorageError(
                f"cannot write {self._where(key)}: bucket {self.bucket!r} does not exist"
            )
        self._bucket_checked = True

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
