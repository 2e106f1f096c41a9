"""What a work dir records about the run that made it, checked before anyone uses it.

Each shard's progress record names the shard count of the run (`shards`). A work dir made
with one count and resumed or finalized with another would silently drop or reassign lines
(shard k of n owns the requests whose ordinal is ≡ k mod n), so both `run` and `finalize`
refuse a different count.
"""

from openbatch.layout import progress_key, shard_prefix
from openbatch.progress import ProgressRecord
from openbatch.storage import ObjectStore

_PROGRESS_NAME = "progress.json"


class ShardCountMismatch(Exception):
    """The work dir was made with a different number of shards: retrying cannot help."""


class WorkDirMissing(Exception):
    """No shard ever wrote to the work dir (a typo, or the wrong storage)."""


def recorded_shards(store: ObjectStore, work: str) -> list[int]:
    """Shard indices that have a progress record, sorted (one listing; blocking)."""
    prefix = shard_prefix(work, 0).removesuffix("0/")  # ".../shard-"
    found: set[int] = set()
    for key in store.list_keys(prefix):
        head, _, name = key.rpartition("/")
        number = head.rpartition("/")[2].removeprefix("shard-")
        if name == _PROGRESS_NAME and number.isdigit():
            found.add(int(number))
    return sorted(found)


def read_record(store: ObjectStore, work: str, shard: int) -> ProgressRecord | None:
    key = progress_key(work, shard)
    if not store.exists(key):
        return None
    return ProgressRecord.model_validate_json(store.read_bytes(key))


def mismatch_message(work_dir: str, recorded: int, asked: int, how: str) -> str:
    return (
        f"the work dir {work_dir} was made by a run with {recorded} shard(s), but {how} "
        f"asks for {asked}: use the same shard count ({recorded}), or a new --work-dir"
    )


def check_shard_count(
    store: ObjectStore,
    work: str,
    work_dir: str,
    shards: int,
    own: ProgressRecord | None,
    *,
    how: str,
) -> None:
    """Raise `ShardCountMismatch` unless every record in the work dir says `shards`.

    `own` is the caller's shard record, if it has one: it is authoritative (all records of
    one run agree), so the common resume costs nothing more. Otherwise one listing finds
    the other shards' records and one of them is read.
    """
    if own is not None:
        if own.shards != shards:
            raise ShardCountMismatch(mismatch_message(work_dir, own.shards, shards, how))
        return
    present = recorded_shards(store, work)
    if not present:
        return
    # A record of a shard this count does not have is read first: it proves the mismatch.
    beyond = [k for k in present if k >= shards]
    record = read_record(store, work, beyond[0] if beyond else present[0])
    if record is not None and record.shards != shards:
        raise ShardCountMismatch(mismatch_message(work_dir, record.shards, shards, how))
    if beyond:  # a hand-made record that names a shard its own count does not have
        raise ShardCountMismatch(mismatch_message(work_dir, beyond[-1] + 1, shards, how))
