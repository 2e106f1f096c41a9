"""Object layout (DESIGN §4): a storage root, and a batch's work dir inside it.

Under a root (`s3://bucket/prefix` or a local directory; one per tenant with tenancy):
```
<root>/files/<tenant>/<file_id>           uploaded and generated files (metadata with the object)
<root>/batches/<tenant>/<batch_id>/       a batch's work dir (below)
```
A batch's work dir:

```
<work>/validation.json                 validation result (OpenAI errors object)
<work>/cancel                          cancel marker, written by the operator or a user
<work>/result.json                     what finalize produced
<work>/shard-<k>/out-<seq>-<run>.jsonl committed result parts of shard k
<work>/shard-<k>/err-<seq>-<run>.jsonl
<work>/shard-<k>/progress.json         counts, usage, state
```
`<run>` is a random id per runner process: two processes that briefly overlap on one shard
(a Job's replacement pod starts while the old one is still terminating) never overwrite
each other's parts; finalize keeps the first copy of a line it meets.
"""

from dataclasses import dataclass
from enum import StrEnum


class PartKind(StrEnum):
    OUT = "out"
    ERR = "err"


def _join(work: str, name: str) -> str:
    return f"{work.rstrip('/')}/{name}" if work else name


FILES_DIR = "files"
BATCHES_DIR = "batches"


def root_join(root: str, *parts: str) -> str:
    """`root` + "/" + parts, one slash between each: a URI when `root` is one, else a path."""
    out = root.rstrip("/")
    for part in parts:
        if part.strip("/"):
            out = _join(out, part.strip("/"))
    return out


def files_prefix(root: str, tenant: str) -> str:
    """Where a tenant's files live (ends with "/", for listing)."""
    return root_join(root, FILES_DIR, tenant) + "/"


def file_location(root: str, tenant: str, file_id: str) -> str:
    return root_join(root, FILES_DIR, tenant, file_id)


def batch_work_dir(root: str, tenant: str, batch_id: str) -> str:
    return root_join(root, BATCHES_DIR, tenant, batch_id)


def shard_prefix(work: str, shard: int) -> str:
    return _join(work, f"shard-{shard}/")


def part_key(work: str, shard: int, kind: PartKind, seq: int, run: str) -> str:
    return _join(work, f"shard-{shard}/{kind.value}-{seq:08d}-{run}.jsonl")


@dataclass(frozen=True, order=True)
class PartName:
    seq: int
    run: str
    kind: PartKind


def parse_part_name(key: str) -> PartName | None:
    """`.../err-00000012-ab12cd34.jsonl` -> PartName(12, "ab12cd34", ERR); else None."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".jsonl"):
        return None
    fields = name[: -len(".jsonl")].split("-")
    if len(fields) != 3:
        return None
    kind, seq, run = fields
    if kind not in (PartKind.OUT.value, PartKind.ERR.value) or not seq.isdigit() or not run:
        return None
    return PartName(int(seq), run, PartKind(kind))


def progress_key(work: str, shard: int) -> str:
    return _join(work, f"shard-{shard}/progress.json")


def cancel_key(work: str) -> str:
    return _join(work, "cancel")


def validation_key(work: str) -> str:
    return _join(work, "validation.json")


def result_key(work: str) -> str:
    return _join(work, "result.json")
