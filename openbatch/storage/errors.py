"""Errors raised by every object store: `StorageError` and its `ObjectNotFound`."""

from __future__ import annotations


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
