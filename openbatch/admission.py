"""Global admission (DESIGN §8, §12): at most `maxConcurrentBatches` batches hold a slot; the
rest wait. A freed slot goes to the namespace holding the fewest slots (fair across
namespaces: one team's hundred queued batches never keep another team's one waiting), then
by priority (higher first), then age (older first), then name. A namespace may also be
capped (`maxRunningBatches` in the tenants file): it gets no slot beyond its cap.

No preemption: a slot is held until its batch ends. Fairness decides who gets each freed
slot, so a namespace that took every slot while alone gives them back one by one as the
others arrive; a cap bounds what any one namespace can take in the first place.

Pure: the kopf index of all BatchJobs comes in as plain entries.
"""

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

BatchKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class QueueEntry:
    key: BatchKey
    priority: int
    created: str  # RFC 3339 creationTimestamp: sorts chronologically as text
    admitted: bool
    terminal: bool

    @property
    def namespace(self) -> str:
        return self.key[0]


@dataclass(frozen=True)
class SlotsView:
    held: int  # slots held by other batches (admitted, not terminal)
    ahead: int  # waiting batches that get a slot before this one
    namespace_full: bool = False  # this batch's namespace holds its cap of slots


def _order(entry: QueueEntry) -> tuple[int, str, BatchKey]:
    return (-entry.priority, entry.created, entry.key)


def admission_order(
    entries: Iterable[QueueEntry], limits: Mapping[str, int] | None = None
) -> list[BatchKey]:
    """The order in which the waiting batches would get slots, were slots unlimited: fewest
    slots held by the namespace first, then priority, then age. Batches whose namespace
    reaches its limit are left out. O(n log n)."""
    limits = limits or {}
    entries = [e for e in entries if not e.terminal]
    held = Counter(e.namespace for e in entries if e.admitted)
    queues: dict[str, list[QueueEntry]] = defaultdict(list)
    for e in entries:
        if not e.admitted:
            queues[e.namespace].append(e)
    for queue in queues.values():
        queue.sort(key=_order, reverse=True)  # pop() from the end takes the first
    heap = [(held[ns], _order(q[-1]), ns) for ns, q in queues.items()]
    heapq.heapify(heap)
    out: list[BatchKey] = []
    while heap:
        _, _, ns = heapq.heappop(heap)
        limit = limits.get(ns)
        if limit is not None and held[ns] >= limit:
            continue  # this namespace gets nothing more until one of its batches ends
        queue = queues[ns]
        out.append(queue.pop().key)
        held[ns] += 1
        if queue:
            heapq.heappush(heap, (held[ns], _order(queue[-1]), ns))
    return out


def slots_view(
    entries: Iterable[QueueEntry], me: BatchKey, limits: Mapping[str, int] | None = None
) -> SlotsView:
    """Slots held by others, waiting batches that go before `me`, and whether `me`'s
    namespace is at its limit. A batch not in `entries` (not indexed yet) goes last."""
    entries = [e for e in entries if not e.terminal]
    held = sum(1 for e in entries if e.admitted and e.key != me)
    others = [e for e in entries if e.key != me]
    mine = next((e for e in entries if e.key == me), None)
    if mine is None:
        return SlotsView(held, sum(1 for e in others if not e.admitted))
    if mine.admitted:
        return SlotsView(held, 0)
    order = admission_order(entries, limits)
    if me not in order:
        return SlotsView(held, len(order), namespace_full=True)
    return SlotsView(held, order.index(me))


def queue_length(entries: Iterable[QueueEntry]) -> int:
    return sum(1 for e in entries if not e.admitted and not e.terminal)
