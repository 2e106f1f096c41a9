"""`/v1/batches`: create, retrieve, list, cancel (contract §2)."""

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request

from openbatch.resource import (
    FILE_ID_PATTERN,
    MAX_EXPIRES_AFTER_SECONDS,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE_LENGTH,
    MIN_EXPIRES_AFTER_SECONDS,
)
from openbatch.wire import Batch, ListBatchesResponse
from openbatch_shim.app import Services, services_of, tenant_of
from openbatch_shim.batches_service import SUPPORTED_ENDPOINTS
from openbatch_shim.errors import BadRequest, file_not_found
from openbatch_shim.pagination import check_limit

router = APIRouter(prefix="/v1/batches", tags=["batches"])
ServicesDep = Annotated[Services, Depends(services_of)]
TenantDep = Annotated[str, Depends(tenant_of)]

_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input_file_id", "endpoint", "completion_window"],
                    "properties": {
                        "input_file_id": {"type": "string", "pattern": FILE_ID_PATTERN},
                        "endpoint": {"type": "string", "enum": SUPPORTED_ENDPOINTS},
                        "completion_window": {"type": "string", "enum": ["24h"]},
                        "metadata": {
                            "type": ["object", "null"],
                            "maxProperties": MAX_METADATA_PAIRS,
                            "propertyNames": {"maxLength": MAX_METADATA_KEY_LENGTH},
                            "additionalProperties": {
                                "type": "string",
                                "maxLength": MAX_METADATA_VALUE_LENGTH,
                            },
                        },
                        "output_expires_after": {
                            "type": "object",
                            "required": ["anchor", "seconds"],
                            "properties": {
                                "anchor": {"type": "string", "enum": ["created_at"]},
                                "seconds": {
                                    "type": "integer",
                                    "minimum": MIN_EXPIRES_AFTER_SECONDS,
                                    "maximum": MAX_EXPIRES_AFTER_SECONDS,
                                },
                            },
                        },
                        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 256},
                    },
                }
            }
        },
    }
}


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("The request body is empty; expected a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None


@router.post("", response_model=Batch, openapi_extra=_CREATE_BODY)
async def create_batch(
    request: Request,
    services: ServicesDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Batch:
    body = await _json_body(request)
    input_id = body.get("input_file_id") if isinstance(body, dict) else None
    record = None
    if isinstance(input_id, str):
        record = await services.files.input_location(tenant, input_id)
        if record is None and await services.files.exists_elsewhere(tenant, input_id):
            # Another tenant's file: exactly what a client gets for any file it cannot see.
            raise file_not_found(input_id)
    return await services.batches.create(
        tenant, body, idempotency_header=idempotency_key, input_record=record
    )


@router.get("", response_model=ListBatchesResponse)
async def list_batches(
    services: ServicesDep,
    tenant: TenantDep,
    after: str | None = None,
    limit: Annotated[int, Query()] = 20,
) -> ListBatchesResponse:
    check_limit(limit, 100)
    data, more = await services.batches.page(tenant, after=after, limit=limit)
    return ListBatchesResponse(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=more,
    )


@router.get("/{batch_id}", response_model=Batch)
async def retrieve_batch(batch_id: str, services: ServicesDep, tenant: TenantDep) -> Batch:
    return await services.batches.get(tenant, batch_id)


@router.post("/{batch_id}/cancel", response_model=Batch)
async def cancel_batch(batch_id: str, services: ServicesDep, tenant: TenantDep) -> Batch:
    return await services.batches.cancel(tenant, batch_id)
