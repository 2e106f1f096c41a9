"""Health, readiness, metrics and the model list."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from openbatch.wire import Model, ModelList
from openbatch_shim.app import Services, services_of

router = APIRouter(tags=["system"])
ServicesDep = Annotated[Services, Depends(services_of)]


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(services: ServicesDep) -> JSONResponse:
    ready = services.backend.ready()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelList, tags=["models"])
async def list_models(services: ServicesDep) -> ModelList:
    """The models batches can use: the routing table's names."""
    return ModelList(data=[Model(id=name) for name in services.backend.models()])
