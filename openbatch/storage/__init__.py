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

Layout: `errors` (StorageError, ObjectNotFound), `base` (ObjectStore, ObjectInfo,
ObjectReader, PART_SIZE), `uri` (split_uri, open_uri, join_key), `local` (LocalStore), `s3`
(S3Store, S3ObjectReader, retries and transient-error classification) and `source` (the
wrapper around a caller's reader used by `put_stream`). Import from `openbatch.storage`.

This package is part of the shared core: it must not import aiohttp, httpx, fastapi, kopf or
kubernetes (see the import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

from openbatch.storage.base import (
    MIN_PART_SIZE,
    PART_SIZE,
    ObjectInfo,
    ObjectReader,
    ObjectStore,
    PresigningStore,
)
from openbatch.storage.errors import ObjectNotFound, StorageError
from openbatch.storage.local import LocalStore
from openbatch.storage.s3 import S3ObjectReader, S3Store
from openbatch.storage.uri import join_key, open_uri, split_uri

__all__ = [
    "MIN_PART_SIZE",
    "PART_SIZE",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectReader",
    "ObjectStore",
    "PresigningStore",
    "S3ObjectReader",
    "S3Store",
    "StorageError",
    "join_key",
    "open_uri",
    "split_uri",
]
