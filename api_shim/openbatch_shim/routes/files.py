"""`/v1/files`: upload, list, retrieve, download, delete (contract §1)."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from openbatch.wire import FileDeleted, FileObject, ListFilesResponse
from openbatch_shim.app import Services, services_of, tenant_of
from openbatch_shim.files_service import attachment
from openbatch_shim.multipart import form_events
from openbatch_shim.pagination import check_limit, page

router = APIRouter(prefix="/v1/files", tags=["files"])
ServicesDep = Annotated[Services, Depends(services_of)]
TenantDep = Annotated[str, Depends(tenant_of)]

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {
                            "type": "string",
                            "enum": [
                                "assistants",
                                "batch",
                                "fine-tune",
                                "vision",
                                "user_data",
                                "evals",
                            ],
                        },
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer"},
                    },
                }
            }
        },
    }
}


@router.post("", response_model=FileObject, openapi_extra=_UPLOAD_BODY)
async def upload_file(request: Request, services: ServicesDep, tenant: TenantDep) -> FileObject:
    events = form_events(request.headers.get("content-type"), request.stream())
    record = await services.files.upload(tenant, events)
    services.metrics.upload_bytes.inc(record.bytes)
    return record.to_wire()


@router.get("", response_model=ListFilesResponse)
async def list_files(
    *,
    services: ServicesDep,
    tenant: TenantDep,
    purpose: str | None = None,
    limit: Annotated[int, Query()] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> ListFilesResponse:
    check_limit(limit, 10_000)
    records = await services.files.listing(tenant, purpose=purpose, descending=order == "desc")
    chunk, more = page(records, lambda r: r.id, after=after, limit=limit)
    data = [r.to_wire() for r in chunk]
    return ListFilesResponse(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=more,
    )


@router.get("/{file_id}", response_model=FileObject)
async def retrieve_file(file_id: str, services: ServicesDep, tenant: TenantDep) -> FileObject:
    return (await services.files.get(tenant, file_id)).to_wire()


@router.get("/{file_id}/content", response_class=StreamingResponse)
async def file_content(file_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    # application/octet-stream, as OpenAI really serves it (contract §1.4).
    settings = services.settings
    if settings.download_redirect_seconds:
        # Opt-in (decision 0005): the bytes come from S3 itself; clients that follow
        # redirects (openai, httpx, curl -L) see the same answer.
        url = await services.files.content_url(
            tenant, file_id, settings.download_redirect_seconds, settings.download_redirect_endpoint
        )
        if url is not None:
            return RedirectResponse(url, status_code=307)
    record, chunks = await services.files.content(tenant, file_id)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "content-length": str(record.bytes),
            "content-disposition": attachment(record.filename),
        },
    )


@router.delete("/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, services: ServicesDep, tenant: TenantDep) -> FileDeleted:
    await services.files.delete(tenant, file_id)
    services.batches.forget(tenant, file_id)
    return FileDeleted(id=file_id, deleted=True)
