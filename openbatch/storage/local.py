"""`LocalStore`: objects are files, written atomically through a temporary file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import socket
import stat as stat_mod
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from openbatch.jsonl import Readable
from openbatch.storage.base import _CHUNK, ObjectInfo, ObjectReader
from openbatch.storage.errors import ObjectNotFound, StorageError
from openbatch.storage.source import _Source, _SourceError

# Temporary files of LocalStore end with this; list_keys hides them (they are not objects yet).
_TMP_SUFFIX = ".openbatch-tmp"
# A temporary file whose writer cannot be identified is left alone this long.
STALE_TMP_SECONDS = 3600.0


def _host_tag() -> str:
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


_HOST = _host_tag()


def _writer_alive(tag: str) -> bool | None:
    """Whether the process named in a temporary file's tag still runs; None if unknown.

    The tag is `<host>-<pid>-<random>`: a pid means something only on its own host.
    """
    host, _, rest = tag.partition("-")
    pid_text = rest.partition("-")[0]
    if host != _HOST or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


# Failures that can pass without anyone changing the command: a full disk or quota (space is
# freed), out of file descriptors (sockets close), memory pressure, a network filesystem's
# hiccup. Everything else (permissions, a file where a directory should be) is permanent.
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.EAGAIN,
        errno.EINTR,
        errno.EIO,
        errno.ESTALE,
        errno.ETIMEDOUT,
    }
)
_DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
# Out of descriptors is usually momentary (sockets are closing): retry opening this long.
_DESCRIPTOR_WAIT = 5.0


def _store_error(action: str, key: str, exc: OSError) -> StorageError:
    """A `StorageError` for an OS failure, transient when waiting can make it pass."""
    hint = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = " (disk full: free space, then rerun to resume)"
    elif exc.errno in _DESCRIPTOR_ERRNOS:
        hint = " (out of file descriptors: raise `ulimit -n` or lower --concurrency)"
    return StorageError(
        f"cannot {action} {key}: {exc}{hint}", transient=exc.errno in _TRANSIENT_ERRNOS
    )


def _open_fd(path: Path | str, flags: int, mode: int = 0o666) -> int:
    """`os.open`, waiting out a momentary shortage of file descriptors."""
    deadline = time.monotonic() + _DESCRIPTOR_WAIT
    delay = 0.01
    while True:
        try:
            return os.open(path, flags, mode)
        except OSError as exc:
            if exc.errno not in _DESCRIPTOR_ERRNOS or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


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


class _LocalReader(ObjectReader):
    def __init__(self, path: str, offset: int) -> None:
        self._path = path
        try:
            fd = _open_fd(path, os.O_RDONLY)
            if stat_mod.S_ISDIR(os.fstat(fd).st_mode):
                os.close(fd)
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            self._file = os.fdopen(fd, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"object not found: {path}") from exc
        except OSError as exc:
            raise _store_error("open", path, exc) from exc
        if offset:
            self._file.seek(offset)

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._file.read(size)
        except OSError as exc:
            raise _store_error("read", self._path, exc) from exc

    def close(self) -> None:
        self._file.close()


class LocalStore:
    """Objects are files; keys are filesystem paths (absolute or relative to the cwd).

    Writes go to a temporary file in the target directory, are fsynced and renamed over the
    target, so a reader sees the old file or the complete new one, never a partial one.
    Temporary files are named `.<name>.<host>-<pid>-<random>.openbatch-tmp` and never
    listed; `remove_stale_temporaries` deletes those of writers that died (kill -9).
    """

    def describe(self, key: str) -> str:
        return key

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = Path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _store_error("stat", key, exc) from exc
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

    def check_writable(self, key: str) -> None:
        target = Path(key)
        if not key or key.endswith("/") or target.is_dir():
            raise StorageError(f"cannot write {key}: it is a directory, not a file")
        parent = target.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise StorageError(f"cannot write {key}: {parent} is not a directory")
        probe = parent / f".openbatch-probe.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.close(_open_fd(f"{probe}{_TMP_SUFFIX}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            Path(f"{probe}{_TMP_SUFFIX}").unlink()
        except OSError as exc:
            raise _store_error("write", key, exc) from exc

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(
            f"{here}{name}"
            for here, name in _walk(prefix)
            if not name.endswith(_TMP_SUFFIX) and f"{here}{name}".startswith(prefix)
        )

    def remove_stale_temporaries(self, prefix: str) -> int:
        """Delete temporary files under `prefix` whose writer is gone; return how many.

        A writer killed with SIGKILL (or a lost node) leaves its temporary file behind. It
        is stale when its tag names a dead process of this host, or, tag unknown (another
        host, an older version), when it has not changed for `STALE_TMP_SECONDS`.
        """
        removed = 0
        now = time.time()
        for here, name in _walk(prefix):
            if not name.endswith(_TMP_SUFFIX):
                continue
            target, _, tag = name[1 : -len(_TMP_SUFFIX)].rpartition(".")
            if not name.startswith(".") or not f"{here}{target}".startswith(prefix):
                continue
            path = Path(f"{here}{name}")
            alive = _writer_alive(tag)
            if alive is None:
                try:
                    alive = now - path.stat().st_mtime < STALE_TMP_SECONDS
                except FileNotFoundError:
                    continue
            if not alive:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def delete(self, key: str) -> None:
        try:
            Path(key).unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _store_error("delete", key, exc) from exc

    def _write_atomically(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        if not key or key.endswith("/"):
            raise ValueError(f"invalid file path {key!r}")
        target = Path(key)
        tag = f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp = target.with_name(f".{target.name}.{tag}{_TMP_SUFFIX}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # os.open with 0o666 honours the umask (mkstemp would force 0600).
            fd = _open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise _store_error("write", key, exc) from exc
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
                raise _store_error("write", key, exc) from exc
            raise
        _fsync_dir(target.parent)


def _walk(prefix: str) -> Iterator[tuple[str, str]]:
    """`(directory key with its "/", file name)` of every file that may match `prefix`.

    Keys come back spelled like the prefix: relative stays relative, no "./" added.
    """
    base = prefix if not prefix or prefix.endswith("/") else prefix.rpartition("/")[0] + "/"
    if base == "/" and not prefix.startswith("/"):
        base = ""
    top = Path(base or ".")
    if not top.is_dir():
        return
    for root, dirs, files in os.walk(top):
        rel = Path(root).relative_to(top).as_posix()
        here = base if rel == "." else f"{base}{rel}/"
        # Skip directories that cannot hold a match (prefix "a/b/out-", directory "a/b/x").
        dirs[:] = [
            d for d in dirs if f"{here}{d}/".startswith(prefix) or prefix.startswith(f"{here}{d}/")
        ]
        for name in files:
            yield here, name
