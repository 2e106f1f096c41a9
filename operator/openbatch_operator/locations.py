"""Where a batch's bytes live in object storage (DESIGN §4), decided from the resource alone.

Deterministic, so an operator restart computes the same work dir and file ids again.
"""

import hashlib
from dataclasses import dataclass

from openbatch.batch_mapping import batch_id_of
from openbatch.resource import BatchJob


@dataclass(frozen=True)
class BatchLocations:
    batch_id: str
    input_uri: str
    work_uri: str
    output_file_id: str
    error_file_id: str
    output_uri: str
    error_uri: str


def _file_id(seed: str) -> str:
    return "file-" + hashlib.sha256(seed.encode()).hexdigest()[:24]


def locations_of(job: BatchJob, bucket: str) -> BatchLocations:
    """Input, work dir and result files of a batch; tenant = namespace (DESIGN §4)."""
    tenant = job.metadata.namespace or "default"
    batch_id = batch_id_of(job)
    source = job.spec.input
    if source.s3 is not None:
        input_uri = f"s3://{source.s3.bucket}/{source.s3.key}"
    else:
        input_uri = f"s3://{bucket}/files/{tenant}/{source.file_id}"
    # The uid makes ids unique even when a batch name is reused after a delete.
    seed = f"{tenant}/{batch_id}/{job.metadata.uid or ''}"
    output_id = _file_id(seed + "/output")
    error_id = _file_id(seed + "/error")
    return BatchLocations(
        batch_id=batch_id,
        input_uri=input_uri,
        work_uri=f"s3://{bucket}/batches/{tenant}/{batch_id}",
        output_file_id=output_id,
        error_file_id=error_id,
        output_uri=f"s3://{bucket}/files/{tenant}/{output_id}",
        error_uri=f"s3://{bucket}/files/{tenant}/{error_id}",
    )
