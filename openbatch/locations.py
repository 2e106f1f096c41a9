"""Where a batch's bytes live (DESIGN §4), decided from the resource and a storage root alone.

The root is an `s3://bucket/prefix` URI (the operator, the shim on S3) or a local directory
(`openbatch serve`). Deterministic, so a restarted backend computes the same work dir and
file ids again; and a backend reads progress and results only at locations it computed
here, never at one a runner or a user wrote into an object.
"""

import hashlib
from dataclasses import dataclass

from openbatch.batch_mapping import batch_id_of
from openbatch.layout import batch_work_dir, file_location
from openbatch.resource import BatchJob


@dataclass(frozen=True)
class BatchLocations:
    batch_id: str
    tenant: str
    input_uri: str
    work_uri: str
    output_file_id: str
    error_file_id: str
    output_uri: str
    error_uri: str


def _file_id(seed: str) -> str:
    return "file-" + hashlib.sha256(seed.encode()).hexdigest()[:24]


def tenant_of(job: BatchJob) -> str:
    """A batch's tenant is its namespace (DESIGN §4); `default` for a namespace-less object."""
    return job.metadata.namespace or "default"


def locations_of(job: BatchJob, root: str) -> BatchLocations:
    """Input, work dir and result files of a batch under `root`."""
    tenant = tenant_of(job)
    batch_id = batch_id_of(job)
    source = job.spec.input
    if source.s3 is not None:
        input_uri = f"s3://{source.s3.bucket}/{source.s3.key}"
    else:
        assert source.file_id is not None  # Input guarantees exactly one
        input_uri = file_location(root, tenant, source.file_id)
    # The uid makes ids unique even when a batch name is reused after a delete.
    seed = f"{tenant}/{batch_id}/{job.metadata.uid or ''}"
    output_id = _file_id(seed + "/output")
    error_id = _file_id(seed + "/error")
    return BatchLocations(
        batch_id=batch_id,
        tenant=tenant,
        input_uri=input_uri,
        work_uri=batch_work_dir(root, tenant, batch_id),
        output_file_id=output_id,
        error_file_id=error_id,
        output_uri=file_location(root, tenant, output_id),
        error_uri=file_location(root, tenant, error_id),
    )
