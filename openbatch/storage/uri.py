"""Storage URIs: `split_uri`, `open_uri` (a URI to a store and a key) and `join_key`."""

from __future__ import annotations

import re

from pydantic import ValidationError

from openbatch.settings import S3Settings
from openbatch.storage.base import PART_SIZE, ObjectStore
from openbatch.storage.errors import StorageError
from openbatch.storage.local import LocalStore
from openbatch.storage.s3 import S3Store

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
# Syntax only; S3Store applies the full naming rules (length 3-63 and so on).
_BUCKET_SYNTAX_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


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


def open_uri(
    uri: str, settings: S3Settings | None = None, part_size: int = PART_SIZE
) -> tuple[ObjectStore, str]:
    """Return `(store, key)` for a URI accepted by `split_uri`.

    `part_size` is the S3 store's multipart part size (see `PART_SIZE`, `MIN_PART_SIZE`).

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
                f"cannot access {uri}: {_settings_problems(exc)} (S3 needs "
                f"OPENBATCH_S3_ENDPOINT, OPENBATCH_S3_ACCESS_KEY and OPENBATCH_S3_SECRET_KEY, "
                f"or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            ) from None
    return S3Store(bucket, settings, part_size), key


def _settings_problems(exc: ValidationError) -> str:
    """One line naming each missing or invalid variable (pydantic's report is a page)."""
    problems: list[str] = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        # Fields with env aliases report the alias (already a variable name).
        name = field if field.isupper() else f"OPENBATCH_S3_{field.upper()}"
        if error["type"] == "missing":
            problems.append(f"{name} is not set")
        else:
            problems.append(f"{name} is invalid: {error['msg']}")
    return "; ".join(problems) or "S3 settings are invalid"


def join_key(prefix: str, name: str) -> str:
    """`prefix` + "/" + `name`, with exactly one slash between them; `name` if no prefix."""
    if not prefix:
        return name
    return f"{prefix.rstrip('/')}/{name.lstrip('/')}"
