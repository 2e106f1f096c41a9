"""The Batches API's logic: create (with OpenAI's 400s and idempotency), read, list, cancel.

No FastAPI here: routes hand in parsed JSON and the tenant; errors are `ApiError`s. A batch
is a BatchJob in the backend; what clients see is always rendered from it
(`openbatch.batch_mapping.batch_from_resource`).
"""

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from typing import Any

import orjson

from openbatch.batch_mapping import batch_from_resource, batch_id_of, batchjob_from_create
from openbatch.endpoints import Endpoint
from openbatch.files import FileRecord, data_location, output_filename
from openbatch.ids import new_batch_id, resource_name
from openbatch.resource import (
    DEFAULT_OUTPUT_EXPIRES_AFTER_SECONDS,
    FILE_ID_PATTERN,
    IDEMPOTENCY_DIGEST_ANNOTATION,
    MAX_COMPLETION_WINDOW,
    MAX_EXPIRES_AFTER_SECONDS,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE_LENGTH,
    MIN_EXPIRES_AFTER_SECONDS,
    BatchJob,
    Concurrency,
    Phase,
)
from openbatch.storage import ObjectStore
from openbatch.validation import json_type
from openbatch.wire import Batch, CreateBatchRequest, ExpiresAfter, FilePurpose
from openbatch_shim.backends.base import BatchBackend
from openbatch_shim.errors import (
    BadRequest,
    Conflict,
    batch_not_found,
    invalid_value,
    missing_parameter,
)

SUPPORTED_ENDPOINTS = [e.value for e in Endpoint]
_WINDOW_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_IDEMPOTENCY_KEY = 256
_NOT_CANCELLABLE = {
    Phase.COMPLETED: "completed",
    Phase.FAILED: "failed",
    Phase.EXPIRED: "expired",
}


def spec_window(window: str) -> str | None:
    """A completion window as the BatchJob spells it: `24h` -> `24h`, `7d` -> `168h`, `90s`
    -> `90s`; None when it is not a whole number of s/m/h/d or longer than the CRD allows."""
    if len(window) < 2 or window[-1] not in _WINDOW_SECONDS or not window[:-1].isdigit():
        return None
    count = int(window[:-1])
    seconds = count * _WINDOW_SECONDS[window[-1]]
    if count < 1 or seconds > MAX_COMPLETION_WINDOW.total_seconds():
        return None
    return f"{count * 24}h" if window[-1] == "d" else window


def _type_error(param: str, expected: str, value: object) -> BadRequest:
    return BadRequest(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead. "
        "(code: invalid_type)",
        param=param,
        code="invalid_type",
    )


def parse_create(body: Any, allowed_windows: list[str]) -> CreateBatchRequest:
    """Validate a create body with OpenAI's messages (contract §4.4); unknown keys are ignored."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_type")
    for key in ("input_file_id", "endpoint", "completion_window"):
        if key not in body or body[key] is None:
            raise missing_parameter(key)
        if not isinstance(body[key], str):
            raise _type_error(key, "a string", body[key])
    if body["endpoint"] not in SUPPORTED_ENDPOINTS:
        raise invalid_value("endpoint", body["endpoint"], SUPPORTED_ENDPOINTS)
    if body["completion_window"] not in allowed_windows:
        raise invalid_value("completion_window", body["completion_window"], allowed_windows)
    if not re.fullmatch(FILE_ID_PATTERN, body["input_file_id"]):
        raise BadRequest(
            f"Invalid 'input_file_id': {body['input_file_id']!r} is not a file id (file ids "
            "look like 'file-abc123').",
            param="input_file_id",
            code="invalid_value",
        )
    metadata = _metadata(body.get("metadata"))
    expires = _output_expires_after(body.get("output_expires_after"))
    idempotency_key = body.get("idempotency_key")
    if idempotency_key is not None and not isinstance(idempotency_key, str):
        raise _type_error("idempotency_key", "a string", idempotency_key)
    return CreateBatchRequest(
        input_file_id=body["input_file_id"],
        endpoint=body["endpoint"],
        completion_window=body["completion_window"],
        metadata=metadata,
        output_expires_after=expires,
        idempotency_key=idempotency_key,
    )


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _type_error("metadata", "an object", value)
    if len(value) > MAX_METADATA_PAIRS:
        raise BadRequest(
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{MAX_METADATA_PAIRS} properties, but got an object with {len(value)} properties "
            "instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for k, v in value.items():
        if len(k) > MAX_METADATA_KEY_LENGTH:
            raise BadRequest(
                f"Invalid property name in 'metadata': '{k}' is too long. Expected a string with "
                f"maximum length {MAX_METADATA_KEY_LENGTH}, but got a string with length "
                f"{len(k)} instead.",
                param=f"metadata.{k}",
                code="invalid_value",
            )
        if not isinstance(v, str):
            raise _type_error(f"metadata.{k}", "a string", v)
        if len(v) > MAX_METADATA_VALUE_LENGTH:
            raise BadRequest(
                f"Invalid 'metadata.{k}': string too long. Expected a string with maximum "
                f"length {MAX_METADATA_VALUE_LENGTH}, but got a string with length {len(v)} "
                "instead.",
                param=f"metadata.{k}",
                code="string_above_max_length",
            )
    return dict(value)


def _output_expires_after(value: Any) -> ExpiresAfter | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _type_error("output_expires_after", "an object", value)
    if value.get("anchor") != "created_at":
        raise invalid_value("output_expires_after.anchor", value.get("anchor"), ["created_at"])
    seconds = value.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        if seconds is None:
            raise missing_parameter("output_expires_after.seconds")
        raise _type_error("output_expires_after.seconds", "an integer", seconds)
    if not MIN_EXPIRES_AFTER_SECONDS <= seconds <= MAX_EXPIRES_AFTER_SECONDS:
        raise BadRequest(
            f"Invalid 'output_expires_after.seconds': {seconds}. It must be between "
            f"{MIN_EXPIRES_AFTER_SECONDS} and {MAX_EXPIRES_AFTER_SECONDS} (1 hour to 30 days).",
            param="output_expires_after.seconds",
            code="invalid_value",
        )
    return ExpiresAfter(seconds=seconds)


def parameters_digest(request: CreateBatchRequest) -> str:
    """What "the same parameters" means for an idempotent create: key order is irrelevant."""
    params = request.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def idempotent_batch_id(namespace: str, key: str) -> str:
    """A batch id derived from the key: two racing creates with one key name one object."""
    return "batch_" + hashlib.sha256(f"{namespace}\0{key}".encode()).hexdigest()[:32]


# Renderings kept: a few list pages' worth per tenant of busy deployments.
RENDERED_CACHE = 8192


class BatchService:
    def __init__(
        self,
        backend: BatchBackend,
        *,
        root: str,
        store: ObjectStore,
        base: str,
        allowed_windows: list[str],
        max_in_flight: int | None = None,
    ) -> None:
        self._backend = backend
        self._root = root
        self._store = store
        self._base = base
        self._allowed = allowed_windows
        self._max_in_flight = max_in_flight
        self._sizes: dict[str, int] = {}  # output file key -> size (files never change)
        self._rendered: OrderedDict[int, tuple[BatchJob, Batch]] = OrderedDict()

    def _render(self, job: BatchJob) -> Batch:
        """The Batch a BatchJob shows. Backends never change a stored job in place (an
        update stores a new object), so a job's rendering holds while that very object is
        the stored one: a list page of unchanged batches builds no models (B14). The cache
        holds each job it keys, so no other object can take that id while it is cached."""
        key = id(job)
        hit = self._rendered.get(key)
        if hit is not None:
            self._rendered.move_to_end(key)
            return hit[1]
        batch = batch_from_resource(job)
        self._rendered[key] = (job, batch)
        if len(self._rendered) > RENDERED_CACHE:
            self._rendered.popitem(last=False)
        return batch

    async def create(
        self,
        namespace: str,
        body: Any,
        *,
        idempotency_header: str | None,
        input_record: FileRecord | None,
    ) -> Batch:
        request = parse_create(body, self._allowed)
        # The header wins over the body, but a bad key is refused wherever it was sent.
        given = [k for k in (idempotency_header, request.idempotency_key) if k is not None]
        for candidate in given:
            if not candidate or len(candidate) > MAX_IDEMPOTENCY_KEY:
                raise BadRequest(
                    f"Invalid idempotency key: it must be 1 to {MAX_IDEMPOTENCY_KEY} characters.",
                    param="idempotency_key",
                )
        key = given[0] if given else None
        if key is not None:
            request = request.model_copy(update={"idempotency_key": key})
        if input_record is not None and input_record.purpose is not FilePurpose.BATCH:
            raise BadRequest(
                f"The input file {request.input_file_id} has purpose "
                f"'{input_record.purpose.value}'; a batch needs a file uploaded with purpose "
                "'batch'.",
                param="input_file_id",
            )
        digest = parameters_digest(request) if key is not None else None
        batch_id = idempotent_batch_id(namespace, key) if key is not None else new_batch_id()
        window = spec_window(request.completion_window)
        if window is None:
            raise invalid_value("completion_window", request.completion_window, self._allowed)
        job = batchjob_from_create(
            request,
            batch_id=batch_id,
            namespace=namespace,
            spec_window=window,
            created_ns=time.time_ns(),
            idempotency_digest=digest,
            concurrency=Concurrency(max_in_flight=self._max_in_flight)
            if self._max_in_flight
            else None,
        )
        stored = await self._backend.create(job)
        if key is not None:
            existing = stored.metadata.annotations.get(IDEMPOTENCY_DIGEST_ANNOTATION)
            if existing != digest:
                raise Conflict(
                    f"Conflict: the idempotency key {key!r} was already used to create batch "
                    f"{batch_id_of(stored)} with different parameters; use a new key for a "
                    "new batch.",
                    param="idempotency_key",
                    code="idempotency_key_reused",
                )
        return batch_from_resource(stored)

    async def _job(self, namespace: str, batch_id: str) -> BatchJob:
        job = await self._backend.get(namespace, resource_name(batch_id))
        if job is None or batch_id_of(job) != batch_id:
            raise batch_not_found(batch_id)
        return job

    async def get(self, namespace: str, batch_id: str) -> Batch:
        return self._render(await self._job(namespace, batch_id))

    async def page(
        self, namespace: str, *, after: str | None, limit: int
    ) -> tuple[list[Batch], bool]:
        index = await self._backend.index(namespace)
        found = index.page(after, limit)
        if found is None:
            raise BadRequest(
                f"Invalid 'after': no batch with id '{after}' in this list.", param="after"
            )
        jobs, more = found
        return [self._render(j) for j in jobs], more

    async def cancel(self, namespace: str, batch_id: str) -> Batch:
        job = await self._job(namespace, batch_id)
        phase = job.status.phase
        if phase in _NOT_CANCELLABLE:
            raise Conflict(
                f"Cannot cancel a batch with status '{_NOT_CANCELLABLE[phase]}'.",
            )
        if phase is Phase.FINALIZING:
            # Every request has run; only the files are being written. OpenAI cancels only
            # in-progress work; a batch this far along completes.
            raise Conflict("Cannot cancel a batch with status 'finalizing'.")
        updated = await self._backend.request_cancel(namespace, job.metadata.name)
        if updated is None:
            raise batch_not_found(batch_id)
        return batch_from_resource(updated)

    async def output_files(self, namespace: str) -> list[FileRecord]:
        """Records of the output and error files the tenant's batches wrote (still present)."""
        index = await self._backend.index(namespace)
        records = []
        for job in index.ordered():
            status = job.status
            if not (status.output_file_id or status.error_file_id):
                continue
            batch_id = batch_id_of(job)
            # OpenAI anchors an output file's expiry at its own creation: when the batch
            # finished (finalizing is the moment the files were written).
            made = (
                status.completed_time
                or status.cancelled_time
                or status.expired_time
                or status.finalizing_time
                or job.metadata.creation_timestamp
            )
            created = int(made.timestamp()) if made is not None else 0
            ttl = job.spec.output_expires_after_seconds or DEFAULT_OUTPUT_EXPIRES_AFTER_SECONDS
            for file_id, kind in (
                (status.output_file_id, "output"),
                (status.error_file_id, "error"),
            ):
                if file_id is None:
                    continue
                size = await self._size(namespace, file_id)
                if size is None:
                    continue  # deleted or expired
                records.append(
                    FileRecord(
                        id=file_id,
                        tenant=namespace,
                        filename=output_filename(batch_id, kind),
                        purpose=FilePurpose.BATCH_OUTPUT,
                        bytes=size,
                        created_at=created,
                        expires_at=created + ttl,
                    )
                )
        return records

    async def _size(self, namespace: str, file_id: str) -> int | None:
        key = data_location(self._base, namespace, file_id)
        if key in self._sizes:
            return self._sizes[key]
        info = await asyncio.to_thread(self._store.stat, key)
        if info is None:
            return None
        self._sizes[key] = info.size
        return info.size

    def forget(self, namespace: str, file_id: str) -> None:
        """An output file was deleted (by the client or by expiry)."""
        self._sizes.pop(data_location(self._base, namespace, file_id), None)
