"""Global admission (DESIGN §8): at most `maxConcurrentBatches` batches hold a slot; the
rest wait and start by priority (higher first), then age (older first), then name.

Pure: the kopf index of all BatchJobs comes in as plain entries.
"""

from collections.abc import Iterable
from dataclasses import dataclass

BatchKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class QueueEntry:
    key: BatchKey
    priority: int
    created: str  # RFC 3339 creationTimestamp: sorts chronologically as text
    admitted: bool
    terminal: bool


def _order(entry: QueueEntry) -> tuple[int, str, BatchKey]:
    return (-entry.priority, entry.created, entry.key)


def slots_view(entries: Iterable[QueueEntry], me: BatchKey) -> tuple[int, int]:
    """(slots held by other batches, waiting batches that go before `me`)."""
    entries = list(entries)
    mine = next((e for e in entries if e.key == me), None)
    held = sum(1 for e in entries if e.admitted and not e.terminal and e.key != me)
    if mine is None:
        return held, sum(1 for e in entries if not e.admitted and not e.terminal)
    ahead = sum(
        1
        for e in entries
        if not e.admitted and not e.terminal and e.key != me and _order(e) < _order(mine)
    )
    return held, ahead


def queue_length(entries: Iterable[QueueEntry]) -> int:
    return sum(1 for e in entries if not e.admitted and not e.terminal)
