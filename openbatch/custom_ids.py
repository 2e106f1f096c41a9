"""Bounded-memory duplicate detection for the `custom_id`s of a batch input file.

A batch may hold up to millions of lines when the limits are raised, and the validator must
remember every `custom_id` it has seen to find duplicates (contract §4.1: "Must be unique
for each request in a batch"). A Python `set[str]` costs roughly 90 bytes per id plus the
id itself, so a long-id, many-line file would cost hundreds of megabytes. `CustomIdSet`
keeps only a 64-bit digest per id in one flat `array('Q')`: 16-32 bytes per id whatever
the ids' length.
"""

import hashlib
import os
import struct
from array import array
from collections.abc import Callable

_INITIAL_CAPACITY = 1024  # slots; a power of two so that `hash & mask` picks a slot
_KEY_BYTES = 16
_MAX_DIGEST = (1 << 64) - 1
_UNPACK_U64 = struct.Struct("<Q").unpack


def keyed_digest(key: bytes) -> Callable[[str], int]:
    """Return a function mapping an id to its 64-bit BLAKE2b digest keyed with `key`.

    The keyed state is built once and copied per id: keying costs a compression of its
    own, and copying the keyed state is about a third faster than keying every call.
    """
    keyed = hashlib.blake2b(digest_size=8, key=key)

    def digest(custom_id: str) -> int:
        state = keyed.copy()
        state.update(custom_id.encode("utf-8", "surrogatepass"))
        value: int = _UNPACK_U64(state.digest())[0]
        return value

    return digest


class CustomIdSet:
    """A set of `custom_id`s that stores 64-bit keyed digests instead of the strings.

    Why: the validator must remember every id of a file that can be hundreds of megabytes
    long; flat, predictable memory matters more than exactness past 1 in 10^10. Each id is
    reduced to a 64-bit BLAKE2b digest, keyed with a random per-instance key, and kept in an
    open-addressing hash table (linear probing) backed by `array('Q')`. Slot value 0 marks
    an empty slot, so a digest of 0 is stored as 1. The load factor never exceeds 0.5 (the
    table doubles when it would), so a table holds 2-4 slots of 8 bytes per id: about 16-32
    bytes per id, whatever the ids' length, with short probe sequences.

    The trade: two distinct ids whose digests are equal are reported as a duplicate. For n
    distinct ids that happens with probability about n²/2⁶⁵ (birthday bound): about 7e-11
    for 50,000 ids and 3e-8 for a million, i.e. astronomically unlikely. Keying the hash
    with a secret random key means an uploader cannot craft two ids that collide on purpose
    (an unkeyed 64-bit hash falls to a 2³² birthday search).

    `digest` replaces the hash function (tests use it to force collisions and the zero
    digest); it must return an integer in [0, 2⁶⁴).
    """

    __slots__ = ("_digest", "_len", "_mask", "_table")

    def __init__(self, digest: Callable[[str], int] | None = None) -> None:
        self._digest = digest if digest is not None else keyed_digest(os.urandom(_KEY_BYTES))
        self._table = array("Q", [0]) * _INITIAL_CAPACITY
        self._mask = _INITIAL_CAPACITY - 1
        self._len = 0

    def __len__(self) -> int:
        return self._len

    @property
    def capacity(self) -> int:
        """Number of slots in the table (memory is `8 * capacity` bytes)."""
        return len(self._table)

    def add(self, custom_id: str) -> bool:
        """Record `custom_id`; return True if it was new, False if it was seen before."""
        key = self._digest(custom_id)
        if not 0 < key <= _MAX_DIGEST:
            if key != 0:
                raise ValueError(f"digest {key} is not a 64-bit unsigned integer")
            key = 1  # 0 marks an empty slot
        table = self._table
        mask = self._mask
        slot = key & mask
        held = table[slot]
        while held:
            if held == key:
                return False
            slot = (slot + 1) & mask
            held = table[slot]
        table[slot] = key
        self._len += 1
        if 2 * self._len > len(table):
            self._grow()
        return True

    def _grow(self) -> None:
        """Double the table and reinsert every digest (amortised O(1) per `add`).

        `filter(None, ...)` skips the empty slots in C, so the Python loop runs once per
        stored digest rather than once per slot.
        """
        capacity = 2 * len(self._table)
        table = array("Q", [0]) * capacity  # no zeroed temporary
        mask = capacity - 1
        for key in filter(None, self._table):
            slot = key & mask
            while table[slot]:
                slot = (slot + 1) & mask
            table[slot] = key
        self._table = table
        self._mask = mask
