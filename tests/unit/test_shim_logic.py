"""Pure pieces of the shim: the newest-first index, cursors, windows, create parsing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from openbatch.batch_mapping import batch_from_resource, batch_id_of, batchjob_from_create
from openbatch.resource import BatchJob, Phase
from openbatch.storage import LocalStore
from openbatch.wire import Batch, CreateBatchRequest
from openbatch_shim.backends.base import BatchBackend, BatchIndex
from openbatch_shim.batches_service import (
    BatchService,
    idempotent_batch_id,
    parameters_digest,
    parse_create,
    spec_window,
)
from openbatch_shim.errors import BadRequest
from openbatch_shim.pagination import page

CREATED = datetime(2026, 12, 1, tzinfo=UTC)


def job(batch_id: str, ns: int) -> BatchJob:
    request = CreateBatchRequest(
        input_file_id="file-a", endpoint="/v1/chat/completions", completion_window="24h"
    )
    made = batchjob_from_create(
        request, batch_id=batch_id, namespace="t", spec_window="24h", created_ns=ns
    )
    meta = made.metadata.model_copy(update={"creation_timestamp": CREATED})
    return BatchJob.model_validate({**made.model_dump(by_alias=True), "metadata": meta})


def test_index_is_newest_first_and_a_total_order_within_one_second() -> None:
    index = BatchIndex()
    ids = [f"batch_{i:032x}" for i in range(50)]
    for i, batch_id in enumerate(ids):
        index.put(job(batch_id, 1_000_000_000 + (i // 10)))  # ten per nanosecond tick
    ordered = [batch_id_of(j) for j in index.ordered()]
    assert len(ordered) == len(set(ordered)) == 50
    collected: list[str] = []
    after = None
    while True:
        found = index.page(after, 7)
        assert found is not None
        chunk, more = found
        collected += [batch_id_of(j) for j in chunk]
        if not more:
            break
        after = batch_id_of(chunk[-1])
    assert collected == ordered  # every batch once, in order
    assert ordered[0] in ids[40:] and ordered[-1] in ids[:10]
    index.put(job(ids[0], 1_000_000_000))  # an update keeps the order
    assert [batch_id_of(j) for j in index.ordered()] == ordered
    assert index.page("batch_unknown", 5) is None


def test_cursor_pagination_rejects_a_foreign_cursor() -> None:
    items = ["a", "b", "c"]
    assert page(items, str, after=None, limit=2) == (["a", "b"], True)
    assert page(items, str, after="b", limit=2) == (["c"], False)
    with pytest.raises(BadRequest, match="after"):
        page(items, str, after="zz", limit=2)


@pytest.mark.parametrize(
    ("window", "spec"),
    [("24h", "24h"), ("7d", "168h"), ("90s", "90s"), ("45m", "45m"), ("8d", None),
     ("0h", None), ("1w", None), ("h", None), ("", None)],
)  # fmt: skip
def test_completion_windows_in_the_crd_form(window: str, spec: str | None) -> None:
    assert spec_window(window) == spec


def test_the_window_echoes_what_the_client_sent() -> None:
    request = CreateBatchRequest(
        input_file_id="file-a", endpoint="/v1/chat/completions", completion_window="7d"
    )
    made = batchjob_from_create(
        request, batch_id="batch_x", namespace="t", spec_window="168h", created_ns=1
    )
    assert made.spec.completion_window == "168h"
    stored = made.model_copy(
        update={"metadata": made.metadata.model_copy(update={"creation_timestamp": CREATED})}
    )
    stored = BatchJob.model_validate(stored.model_dump(by_alias=True))
    rendered = batch_from_resource(stored)
    assert rendered.completion_window == "7d"
    assert rendered.expires_at == rendered.created_at + 7 * 86400


def test_same_parameters_in_any_key_order_have_one_digest() -> None:
    base: dict[str, Any] = {
        "input_file_id": "file-a",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    a = parse_create({**base, "metadata": {"x": "1", "y": "2"}}, ["24h"])
    b = parse_create({**base, "metadata": {"y": "2", "x": "1"}, "vendor": 5}, ["24h"])
    c = parse_create({**base, "metadata": {"x": "1"}}, ["24h"])
    assert parameters_digest(a) == parameters_digest(b) != parameters_digest(c)
    assert idempotent_batch_id("t", "k") == idempotent_batch_id("t", "k")
    assert idempotent_batch_id("t", "k") != idempotent_batch_id("u", "k")


class _IndexBackend:
    """Just enough of a backend for `BatchService.page`: one namespace's index."""

    def __init__(self) -> None:
        self.batches = BatchIndex()

    async def index(self, namespace: str) -> BatchIndex:
        return self.batches


def test_a_list_page_renders_each_stored_job_once_and_sees_every_update() -> None:
    backend = _IndexBackend()
    service = BatchService(
        cast(BatchBackend, backend),
        root="/unused",
        store=LocalStore(),
        base="http://unused/v1",
        allowed_windows=["24h"],
    )
    first = job("batch_a", 1)
    backend.batches.put(first)

    async def page_of() -> list[Batch]:
        data, _ = await service.page("t", after=None, limit=10)
        return data

    (once,) = asyncio.run(page_of())
    (again,) = asyncio.run(page_of())
    assert again is once  # the stored job did not change: its rendering is reused
    assert once == batch_from_resource(first)
    # An update stores a new object (never a change in place): it is rendered afresh.
    status = first.status.model_copy(update={"phase": Phase.IN_PROGRESS})
    backend.batches.put(first.model_copy(update={"status": status}))
    (updated,) = asyncio.run(page_of())
    assert updated.status == "in_progress" and once.status == "validating"


@pytest.mark.parametrize(
    "endpoint",
    ["s3.example.com", "https://s3.example.com/bucket", "ftp://s3", "https://u:p@s3.example.com"],
)
def test_a_download_redirect_endpoint_must_be_scheme_and_host(endpoint: str) -> None:
    from pydantic import ValidationError

    from openbatch_shim.settings import ShimSettings

    with pytest.raises(ValidationError, match="S3 endpoint"):
        ShimSettings(download_redirect_endpoint=endpoint)
    good = ShimSettings(download_redirect_endpoint="https://s3.example.com:9443/")
    assert good.download_redirect_endpoint == "https://s3.example.com:9443"


class _PresignFails(LocalStore):
    """A store on disk that claims to presign and fails the way S3 may."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def presigned_get(
        self,
        key: str,
        seconds: int,
        *,
        response_headers: dict[str, str] | None = None,
        endpoint: str | None = None,
    ) -> str:
        raise self.error


async def _a_batch_file(files: Any) -> str:
    from openbatch_shim.multipart import Field, FileData, FileEnd, FileStart

    async def form() -> Any:
        for event in (
            Field("purpose", "batch"),
            FileStart("file", "in.jsonl"),
            FileData(b'{"custom_id": "a"}\n'),
            FileEnd(),
        ):
            yield event

    return str((await files.upload("t", form())).id)


def test_a_presign_refused_for_good_falls_back_to_relaying_and_an_outage_is_an_outage(
    tmp_path: Any,
) -> None:
    from openbatch.storage import StorageError
    from openbatch_shim.files_service import FileService

    async def no_outputs(_tenant: str) -> list[Any]:
        return []

    async def url_of(error: Exception) -> str | None:
        files = FileService(_PresignFails(error), str(tmp_path), no_outputs)
        return await files.content_url("t", await _a_batch_file(files), 60)

    denied = StorageError("GetBucketLocation: AccessDenied", transient=False)
    assert asyncio.run(url_of(denied)) is None  # the route relays instead
    with pytest.raises(StorageError):
        asyncio.run(url_of(StorageError("connection refused", transient=True)))
