"""The Files API's logic: upload, list, retrieve, download, delete and expiry. No FastAPI.

Bytes and metadata live in object storage (openbatch.files); the same code serves both
backends. Records of the files a batch wrote come from the batch service (`OutputFiles`).
"""

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from openbatch.files import (
    DEFAULT_BATCH_FILE_EXPIRY_SECONDS,
    META_SUFFIX,
    FileRecord,
    data_location,
    file_id_of_meta,
    meta_location,
    tenant_files_prefix,
)
from openbatch.ids import new_file_id
from openbatch.layout import FILES_DIR, root_join
from openbatch.resource import (
    FILE_ID_PATTERN,
    MAX_EXPIRES_AFTER_SECONDS,
    MIN_EXPIRES_AFTER_SECONDS,
)
from openbatch.storage import ObjectNotFound, ObjectStore, PresigningStore, StorageError
from openbatch.validation import DEFAULT_MAX_BYTES
from openbatch.wire import FilePurpose
from openbatch_shim.errors import BadRequest, PayloadTooLarge, file_not_found, invalid_value
from openbatch_shim.multipart import Field, FileData, FileEnd, FileStart, FormEvent
from openbatch_shim.streaming import UploadSink, iter_object

UPLOAD_PURPOSES = (
    FilePurpose.ASSISTANTS,
    FilePurpose.BATCH,
    FilePurpose.FINE_TUNE,
    FilePurpose.VISION,
    FilePurpose.USER_DATA,
    FilePurpose.EVALS,
)
DOWNLOADABLE = frozenset({FilePurpose.BATCH, FilePurpose.BATCH_OUTPUT})
MAX_FILE_BYTES = 512 * 1000 * 1000  # OpenAI: "Each file up to 512 MB"
MAX_BATCH_FILE_BYTES = DEFAULT_MAX_BYTES  # 200 MiB, contract §1.1
FILE_TOO_LARGE = "File is too large."
NOT_JSONL = "Invalid file format for Batch API. Must be .jsonl"
_BOM = b"\xef\xbb\xbf"

OutputFiles = Callable[[str], Awaitable[list[FileRecord]]]
_log = logging.getLogger("openbatch.shim")
_FILE_ID = re.compile(FILE_ID_PATTERN)


def attachment(filename: str) -> str:
    """The Content-Disposition of a download (RFC 6266; any filename survives quoting)."""
    return f"attachment; filename*=UTF-8''{quote(filename)}"


def well_formed(file_id: str) -> bool:
    """Only a real file id ever becomes part of a storage key (no NUL bytes, no dots)."""
    return _FILE_ID.fullmatch(file_id) is not None


@dataclass
class _Form:
    purpose: str | None = None
    anchor: str | None = None
    seconds: str | None = None
    filename: str | None = None
    size: int = 0
    first_byte: int | None = None  # first non-blank byte of the file, for the JSONL check


class FileService:
    def __init__(self, store: ObjectStore, base: str, outputs: OutputFiles) -> None:
        """`base` is the storage root as a key of `store` ("" for a bucket's top)."""
        self._store = store
        self._root = base
        self._outputs = outputs
        self._cache: dict[str, FileRecord] = {}  # meta key -> record (records never change)

    # ------------------------------------------------------------------ upload
    async def upload(self, tenant: str, events: AsyncIterator[FormEvent]) -> FileRecord:
        file_id = new_file_id()
        data_key = data_location(self._root, tenant, file_id)
        form = _Form()
        sink: UploadSink | None = None
        try:
            async for event in events:
                if isinstance(event, Field):
                    self._field(form, event)
                elif isinstance(event, FileStart):
                    if sink is not None or form.filename is not None:
                        raise BadRequest("Send exactly one 'file' part.", param="file")
                    if event.name != "file":
                        raise BadRequest(
                            f"Unexpected file part {event.name!r}; the file goes in 'file'.",
                            param="file",
                        )
                    self._check_purpose(form)  # early, when the purpose came first
                    form.filename = event.filename or "upload"
                    sink = UploadSink(self._store, data_key)
                elif isinstance(event, FileData):
                    if sink is None:
                        raise BadRequest("File data outside a file part.", param="file")
                    self._track(form, event.data)
                    await sink.write(event.data)
                elif isinstance(event, FileEnd) and sink is not None:
                    await sink.close()
            if form.filename is None or sink is None:
                raise BadRequest("Missing required parameter: 'file'.", param="file")
            purpose = self._check_purpose(form, required=True)
            expires_after = self._expires_after(form)
            self._check_content(form, purpose)
        except BaseException:
            if sink is not None:
                await sink.abort()
            await asyncio.to_thread(self._store.delete, data_key)
            raise
        now = int(time.time())
        if expires_after is None and purpose is FilePurpose.BATCH:
            expires_after = DEFAULT_BATCH_FILE_EXPIRY_SECONDS
        record = FileRecord(
            id=file_id,
            tenant=tenant,
            filename=form.filename,
            purpose=purpose,
            bytes=form.size,
            created_at=now,
            expires_at=now + expires_after if expires_after is not None else None,
        )
        # The metadata object is the commit point: the file exists once it does.
        meta_key = meta_location(self._root, tenant, file_id)
        await asyncio.to_thread(self._store.put_bytes, meta_key, record.model_dump_json().encode())
        self._cache[meta_key] = record
        return record

    @staticmethod
    def _field(form: _Form, field: Field) -> None:
        if field.name == "purpose":
            form.purpose = field.value
        elif field.name == "expires_after[anchor]":
            form.anchor = field.value
        elif field.name == "expires_after[seconds]":
            form.seconds = field.value
        # Other fields (vendor extras sent with extra_body) are ignored, as OpenAI does.

    @staticmethod
    def _check_purpose(form: _Form, *, required: bool = False) -> FilePurpose:
        if form.purpose is None:
            if required:
                raise BadRequest(
                    "Missing required parameter: 'purpose'. (code: missing_required_parameter)",
                    param="purpose",
                    code="missing_required_parameter",
                )
            return FilePurpose.BATCH  # not known yet: checked again at the end
        allowed = [p.value for p in UPLOAD_PURPOSES]
        if form.purpose not in allowed:
            raise invalid_value("purpose", form.purpose, allowed)
        return FilePurpose(form.purpose)

    @staticmethod
    def _expires_after(form: _Form) -> int | None:
        if form.anchor is None and form.seconds is None:
            return None
        if form.anchor != "created_at":
            raise invalid_value("expires_after.anchor", form.anchor, ["created_at"])
        try:
            seconds = int(form.seconds or "")
        except ValueError:
            raise BadRequest(
                f"Invalid 'expires_after.seconds': {form.seconds!r} is not an integer.",
                param="expires_after.seconds",
                code="invalid_type",
            ) from None
        if not MIN_EXPIRES_AFTER_SECONDS <= seconds <= MAX_EXPIRES_AFTER_SECONDS:
            raise BadRequest(
                f"Invalid 'expires_after.seconds': {seconds}. It must be between "
                f"{MIN_EXPIRES_AFTER_SECONDS} and {MAX_EXPIRES_AFTER_SECONDS} (1 hour to 30 days).",
                param="expires_after.seconds",
                code="invalid_value",
            )
        return seconds

    @staticmethod
    def _track(form: _Form, data: bytes) -> None:
        if form.first_byte is None:
            start = form.size
            for offset, byte in enumerate(data):
                position = start + offset
                if position < len(_BOM) and byte == _BOM[position]:
                    continue
                if byte not in b" \t\r\n":
                    form.first_byte = byte
                    break
        form.size += len(data)
        limit = MAX_BATCH_FILE_BYTES if form.purpose == FilePurpose.BATCH else MAX_FILE_BYTES
        if form.size > limit:
            raise BadRequest(
                f"{FILE_TOO_LARGE} Files of purpose '{form.purpose}' may be at most {limit} bytes.",
                param="file",
            )

    @staticmethod
    def _check_content(form: _Form, purpose: FilePurpose) -> None:
        if purpose is not FilePurpose.BATCH:
            if form.size > MAX_FILE_BYTES:
                raise PayloadTooLarge(FILE_TOO_LARGE, param="file")
            return
        if form.size > MAX_BATCH_FILE_BYTES:
            raise BadRequest(
                f"{FILE_TOO_LARGE} Batch input files may be at most {MAX_BATCH_FILE_BYTES} "
                "bytes (200 MiB).",
                param="file",
            )
        # Broken lines are accepted here and reported by validation, as OpenAI does; a file
        # that is empty or does not even start like JSON lines is refused now.
        if form.first_byte != ord("{"):
            raise BadRequest(NOT_JSONL, param="file")

    # ------------------------------------------------------------------ read
    async def _read_record(self, key: str) -> FileRecord | None:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            data = await asyncio.to_thread(self._store.read_bytes, key)
        except ObjectNotFound:
            return None
        record = FileRecord.model_validate_json(data)
        self._cache[key] = record
        return record

    async def uploaded(self, tenant: str) -> list[FileRecord]:
        keys = await asyncio.to_thread(
            self._store.list_keys, tenant_files_prefix(self._root, tenant)
        )
        now = time.time()
        records = []
        for key in keys:
            if file_id_of_meta(key) is None:
                continue
            record = await self._read_record(key)
            if record is not None and record.tenant == tenant and not record.expired(now):
                records.append(record)
        return records

    async def get(self, tenant: str, file_id: str) -> FileRecord:
        if not well_formed(file_id):
            raise file_not_found(file_id)
        record = await self._read_record(meta_location(self._root, tenant, file_id))
        if record is not None and record.tenant == tenant and not record.expired(time.time()):
            return record
        for output in await self._outputs(tenant):
            if output.id == file_id:
                return output
        raise file_not_found(file_id)

    async def listing(
        self, tenant: str, *, purpose: str | None, descending: bool
    ) -> list[FileRecord]:
        records = await self.uploaded(tenant) + await self._outputs(tenant)
        if purpose is not None:
            records = [r for r in records if r.purpose.value == purpose]
        records.sort(key=lambda r: (r.created_at, r.id), reverse=descending)
        return records

    async def content(self, tenant: str, file_id: str) -> tuple[FileRecord, AsyncIterator[bytes]]:
        record, key = await self._downloadable(tenant, file_id)
        return record, iter_object(self._store, key)

    async def _downloadable(self, tenant: str, file_id: str) -> tuple[FileRecord, str]:
        record = await self.get(tenant, file_id)
        if record.purpose not in DOWNLOADABLE:
            raise BadRequest(f"Not allowed to download files of purpose: {record.purpose.value}")
        key = data_location(self._root, tenant, file_id)
        if await asyncio.to_thread(self._store.stat, key) is None:
            raise file_not_found(file_id)
        return record, key

    async def content_url(
        self, tenant: str, file_id: str, seconds: int, endpoint: str | None = None
    ) -> str | None:
        """A presigned URL of the file's bytes, valid `seconds`, when the store can sign
        one (S3); None otherwise. The same checks as `content` come first: no URL is ever
        issued for a file the tenant cannot see or download."""
        if not isinstance(self._store, PresigningStore):
            return None
        record, key = await self._downloadable(tenant, file_id)
        if record.expires_at is not None:  # the link must not outlive the file
            seconds = min(seconds, int(record.expires_at - time.time()))
            if seconds < 1:
                raise file_not_found(file_id)
        headers = {
            "response-content-type": "application/octet-stream",
            "response-content-disposition": attachment(record.filename),
        }
        try:
            return await asyncio.to_thread(
                self._store.presigned_get,
                key,
                seconds,
                response_headers=headers,
                endpoint=endpoint,
            )
        except StorageError as exc:
            if exc.transient:
                raise  # the store is down: a relay would fail as well
            # E.g. a key without s3:GetBucketLocation: relaying still works.
            _log.warning("cannot presign %s, relaying the download instead: %s", key, exc)
            return None

    # ------------------------------------------------------------------ delete, expiry
    async def delete(self, tenant: str, file_id: str) -> None:
        await self.get(tenant, file_id)  # 404 for what the tenant cannot see
        meta_key = meta_location(self._root, tenant, file_id)
        await asyncio.to_thread(self._store.delete, meta_key)  # gone from the API first
        self._cache.pop(meta_key, None)
        await asyncio.to_thread(self._store.delete, data_location(self._root, tenant, file_id))

    async def sweep_expired(self, outputs_of: Mapping[str, list[FileRecord]]) -> int:
        """Delete every expired file (uploads of all tenants, and the given outputs)."""
        now = time.time()
        removed = 0
        prefix = root_join(self._root, FILES_DIR) + "/"
        try:
            keys = await asyncio.to_thread(self._store.list_keys, prefix)
        except StorageError:
            return 0
        for key in keys:
            if file_id_of_meta(key) is None:
                continue
            record = await self._read_record(key)
            if record is not None and record.expired(now):
                await self.delete_record(record)
                removed += 1
        for records in outputs_of.values():
            for record in records:
                if record.expired(now):
                    await asyncio.to_thread(
                        self._store.delete, data_location(self._root, record.tenant, record.id)
                    )
                    removed += 1
        return removed

    async def delete_record(self, record: FileRecord) -> None:
        meta_key = meta_location(self._root, record.tenant, record.id)
        await asyncio.to_thread(self._store.delete, meta_key)
        self._cache.pop(meta_key, None)
        await asyncio.to_thread(
            self._store.delete, data_location(self._root, record.tenant, record.id)
        )

    async def exists_elsewhere(self, tenant: str, file_id: str) -> bool:
        """Whether another tenant has a file with this id (ids are global, 131 random bits)."""
        if not well_formed(file_id):
            return False
        prefix = root_join(self._root, FILES_DIR) + "/"
        suffix = f"/{file_id}{META_SUFFIX}"
        keys = await asyncio.to_thread(self._store.list_keys, prefix)
        mine = meta_location(self._root, tenant, file_id)
        return any(k.endswith(suffix) and k != mine for k in keys)

    async def input_location(self, tenant: str, file_id: str) -> FileRecord | None:
        """The record of an input file the tenant may use, or None (missing, expired, other)."""
        if not well_formed(file_id):
            return None
        record = await self._read_record(meta_location(self._root, tenant, file_id))
        if record is None or record.tenant != tenant or record.expired(time.time()):
            return None
        return record
