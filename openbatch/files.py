"""Files of the Files API as stored: the bytes at `files/<tenant>/<id>` and, beside them, a
small metadata object `files/<tenant>/<id>.meta.json` (decision 0002).

A file exists once its metadata object does: the bytes are written first, the metadata last,
so a crash in between leaves bytes that no listing shows and the next sweep removes. Both
storage backends (local directory, S3) hold the same two objects; no store-specific metadata
API (S3 user metadata needs every field before the upload starts, and a multipart form may
send `purpose` after the file) is needed.

Output and error files of a batch are not uploaded: their records are derived from the
batch (`output_file_record`), so the runner that writes them needs no Files-API knowledge.
"""

from pydantic import BaseModel

from openbatch.layout import file_location, files_prefix
from openbatch.wire import FileObject, FilePurpose, FileStatus

META_SUFFIX = ".meta.json"
# OpenAI: "By default, files with purpose=batch expire after 30 days and all other files are
# persisted until they are manually deleted."
DEFAULT_BATCH_FILE_EXPIRY_SECONDS = 30 * 86_400


class FileRecord(BaseModel):
    """What the Files API knows of one file; the JSON of its metadata object."""

    id: str
    tenant: str
    filename: str
    purpose: FilePurpose
    bytes: int
    created_at: int
    expires_at: int | None = None

    def to_wire(self) -> FileObject:
        return FileObject(
            id=self.id,
            bytes=self.bytes,
            created_at=self.created_at,
            expires_at=self.expires_at,
            filename=self.filename,
            purpose=self.purpose,
            status=FileStatus.PROCESSED,
        )

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def data_location(root: str, tenant: str, file_id: str) -> str:
    return file_location(root, tenant, file_id)


def meta_location(root: str, tenant: str, file_id: str) -> str:
    return file_location(root, tenant, file_id) + META_SUFFIX


def file_id_of_meta(key: str) -> str | None:
    """`.../files/t/file-ab.meta.json` -> `file-ab`; None for a data object."""
    name = key.rsplit("/", 1)[-1]
    return name[: -len(META_SUFFIX)] if name.endswith(META_SUFFIX) else None


def tenant_files_prefix(root: str, tenant: str) -> str:
    return files_prefix(root, tenant)


def output_filename(batch_id: str, kind: str) -> str:
    """OpenAI names a batch's results `<batch id>_output.jsonl` and `<batch id>_error.jsonl`."""
    return f"{batch_id}_{kind}.jsonl"
