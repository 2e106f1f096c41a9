"""The one interface both batch backends implement, and the ordered index they share."""

import bisect
import threading
from typing import Protocol

from openbatch.batch_mapping import batch_id_of, created_order
from openbatch.resource import BatchJob


class BatchBackend(Protocol):
    """BatchJobs by namespace. Writes go to the backend's store of record; reads may be served
    from memory (a watch-fed cache on Kubernetes)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ready(self) -> bool: ...

    async def create(self, job: BatchJob) -> BatchJob:
        """Persist a new BatchJob; returns it as stored (creation time set). If one with the
        same name exists, returns that one unchanged (idempotent creates rely on it)."""
        ...

    async def get(self, namespace: str, name: str) -> BatchJob | None: ...

    async def index(self, namespace: str) -> "BatchIndex": ...

    async def request_cancel(self, namespace: str, name: str) -> BatchJob | None: ...

    def models(self) -> list[str]: ...


class BatchIndex:
    """One namespace's BatchJobs, newest first, with O(log n) insert and O(1) cursor lookup.

    Sorted by `created_order` descending: creation time in nanoseconds, then name, so the
    order is total and a page boundary is stable however many batches share a second.
    Thread-safe: the Kubernetes backend's watch thread writes while the loop reads pages.
    """

    def __init__(self) -> None:
        self._keys: list[tuple[int, str, str]] = []  # (-ns, inverted name, name), ascending
        self._jobs: dict[str, BatchJob] = {}  # name -> job
        self._position: dict[str, int] | None = None  # batch id -> index in _keys
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    @staticmethod
    def _key(job: BatchJob) -> tuple[int, str, str]:
        ns, name = created_order(job)
        return -ns, _inverted(name), name

    def put(self, job: BatchJob) -> None:
        with self._lock:
            self._put(job)

    def _put(self, job: BatchJob) -> None:
        name = job.metadata.name
        old = self._jobs.get(name)
        self._jobs[name] = job
        if old is not None:
            if self._key(old) == self._key(job):
                return
            self._keys.remove(self._key(old))
        bisect.insort(self._keys, self._key(job))
        self._position = None

    def remove(self, name: str) -> None:
        with self._lock:
            old = self._jobs.pop(name, None)
            if old is not None:
                self._keys.remove(self._key(old))
                self._position = None

    def get(self, name: str) -> BatchJob | None:
        with self._lock:
            return self._jobs.get(name)

    def _name_at(self, index: int) -> str:
        return self._keys[index][2]

    def ordered(self) -> list[BatchJob]:
        with self._lock:
            return [self._jobs[self._name_at(i)] for i in range(len(self._keys))]

    def page(self, after: str | None, limit: int) -> tuple[list[BatchJob], bool] | None:
        """Newest first after the batch with id `after`; None when `after` is not here."""
        with self._lock:
            return self._page(after, limit)

    def _page(self, after: str | None, limit: int) -> tuple[list[BatchJob], bool] | None:
        start = 0
        if after is not None:
            if self._position is None:
                self._position = {
                    batch_id_of(self._jobs[self._name_at(i)]): i for i in range(len(self._keys))
                }
            found = self._position.get(after)
            if found is None:
                return None
            start = found + 1
        end = min(start + limit, len(self._keys))
        jobs = [self._jobs[self._name_at(i)] for i in range(start, end)]
        return jobs, end < len(self._keys)


def _inverted(name: str) -> str:
    """A string whose order is the reverse of `name`'s (for names of one alphabet: DNS labels).

    Names are DNS-1123 (a-z, 0-9, '-'), all below U+007F, so mapping each character c to
    U+007F - c reverses the order of equal-length names; a terminator keeps prefixes right.
    """
    return "".join(chr(0x7F - ord(c)) for c in name) + "\x7f"
