"""The app factory: `create_app(settings)` wires settings, a backend and the services into
FastAPI, and maps every error to OpenAI's envelope in one place."""

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openbatch.storage import MIN_PART_SIZE, StorageError, open_uri
from openbatch_shim import openapi_doc
from openbatch_shim.backends.base import BatchBackend
from openbatch_shim.batches_service import BatchService
from openbatch_shim.errors import (
    ApiError,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from openbatch_shim.files_service import FileService
from openbatch_shim.metrics import ShimMetrics
from openbatch_shim.settings import ANONYMOUS_TENANT, ANY_MODEL_NAME, BackendKind, ShimSettings

_log = logging.getLogger("openbatch.shim")
_PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/redoc")


@dataclass
class Services:
    settings: ShimSettings
    backend: BatchBackend
    files: FileService
    batches: BatchService
    metrics: ShimMetrics
    keys: dict[str, str]  # bearer key -> tenant
    anonymous_tenant: str


def build_services(settings: ShimSettings, backend: BatchBackend | None = None) -> Services:
    root = settings.resolved_storage_root()
    # Uploads through the API are at most 200 MiB: S3's smallest parts (~48 GiB cap) keep the
    # memory an upload holds (about three parts) lowest.
    store, base = open_uri(root, part_size=MIN_PART_SIZE)
    if backend is None:
        backend = make_backend(settings, root)
    batches = BatchService(
        backend,
        root=root,
        store=store,
        base=base,
        allowed_windows=list(settings.allowed_completion_windows),
        max_in_flight=settings.runner_max_in_flight,
    )
    files = FileService(store, base, batches.output_files)
    anonymous = (
        settings.namespace if settings.backend is BackendKind.KUBERNETES else ANONYMOUS_TENANT
    )
    return Services(
        settings=settings,
        backend=backend,
        files=files,
        batches=batches,
        metrics=ShimMetrics(backend),
        keys=settings.resolved_api_keys(),
        anonymous_tenant=anonymous,
    )


def make_backend(settings: ShimSettings, root: str) -> BatchBackend:
    from openbatch.launch import ModelTarget
    from openbatch.routing import parse_routing_table

    if settings.backend is BackendKind.KUBERNETES:
        from openbatch_shim.backends.kube import KubeBackend

        models: list[str] = []
        if settings.models_file is not None:
            models = sorted(parse_routing_table(settings.models_file.read_bytes()).models)
        backend: BatchBackend = KubeBackend(models=models)
        return backend
    from openbatch_shim.backends.local import LocalBackend

    if settings.any_model_url is not None:
        target = ModelTarget(base_urls=(settings.any_model_url,))
        names = [ANY_MODEL_NAME]
    elif settings.models_file is not None:
        target = ModelTarget(routing_file=str(settings.models_file))
        names = sorted(parse_routing_table(settings.models_file.read_bytes()).models)
    else:
        raise ValueError("the local backend needs a routing table (models_file) or any_model_url")
    return LocalBackend(
        data_dir=settings.data_dir,
        root=root,
        target=target,
        model_names=names,
        max_concurrent=settings.max_concurrent_batches,
        poll_interval=settings.poll_interval,
    )


def tenant_of(request: Request) -> str:
    tenant: str = request.state.tenant
    return tenant


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _authenticate(services: Services, request: Request) -> str:
    """The tenant of the request's bearer key; 401 when keys are configured and it is wrong."""
    if not services.keys:
        return services.anonymous_tenant
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
    token = token.strip()
    for key, tenant in services.keys.items():
        if secrets.compare_digest(key.encode(), token.encode()):
            return tenant
    raise Unauthorized("Incorrect API key provided.")


def _error_response(error: ApiError, request_id: str) -> JSONResponse:
    headers = {"x-request-id": request_id, **error.headers}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def create_app(settings: ShimSettings, services: Services | None = None) -> FastAPI:
    from openbatch_shim.routes import batches, files, system

    services = services or build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.backend.start()
        sweeper = asyncio.create_task(_sweep_forever(services))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await services.backend.stop()

    app = FastAPI(
        title="OpenBatch",
        version="0.1.0",
        summary="OpenAI's Files and Batches API for self-hosted model servers",
        lifespan=lifespan,
    )
    app.state.services = services
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(system.router)

    app.add_middleware(RequestContext, services=services)

    _install_error_handlers(app)
    openapi_doc.install(app)
    return app


class RequestContext:
    """Pure ASGI middleware (no body buffering, unlike `@app.middleware`): a request id on
    every response, the bearer key checked before routing, and the request metrics."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(16)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        path: str = scope["path"]
        try:
            if path.startswith("/v1") and not path.startswith(_PUBLIC_PATHS):
                try:
                    state["tenant"] = _authenticate(self.services, Request(scope))
                except ApiError as exc:
                    await _error_response(exc, request_id)(scope, receive, send_with_id)
                    return
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            self.services.metrics.observe_request(
                getattr(route, "path", "unmatched"),
                scope["method"],
                status,
                time.perf_counter() - started,
            )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc, request.state.request_id)

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> JSONResponse:
        _log.warning("storage error on %s %s: %s", request.method, request.url.path, exc)
        return _error_response(
            ServiceUnavailable(f"Object storage is not available; try again. ({exc})"),
            request.state.request_id,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Never FastAPI's 422: OpenAI answers parameter problems with a 400.
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(p) for p in first.get("loc", ()) if p not in ("query", "body", "path")]
        param = ".".join(location) or None
        message = first.get("msg", "invalid request")
        return _error_response(
            BadRequest(
                f"Invalid value for '{param}': {message}. (code: invalid_value)"
                if param
                else f"Invalid request: {message}.",
                param=param,
                code="invalid_value",
            ),
            request.state.request_id,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        error: ApiError
        if exc.status_code == 404:
            error = NotFound(f"Invalid URL ({where})")
        elif exc.status_code == 405:
            # Every method of the path, not just those of the first route that matched it.
            allowed = openapi_doc.allowed_methods(request.app, request.url.path)
            headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
            error = MethodNotAllowed(
                f"Invalid URL ({where}): this method is not allowed here.",
                headers={"allow": ", ".join(allowed)} if allowed else headers,
            )
        else:
            error = ApiError(str(exc.detail))
            error.status = exc.status_code
        return _error_response(error, request.state.request_id)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(
            InternalError("The server had an error while processing your request."),
            request.state.request_id,
        )


async def _sweep_forever(services: Services) -> None:
    """Expired files really disappear: uploads and batch outputs past their `expires_at`."""
    while True:
        await asyncio.sleep(services.settings.sweep_interval)
        try:
            await sweep_once(services)
        except Exception:
            _log.exception("expiry sweep failed; will retry")


async def sweep_once(services: Services) -> int:
    outputs = {}
    for tenant in set(services.keys.values()) | {services.anonymous_tenant}:
        outputs[tenant] = await services.batches.output_files(tenant)
    removed = await services.files.sweep_expired(outputs)
    for tenant, records in outputs.items():
        for record in records:
            if record.expired(time.time()):
                services.batches.forget(tenant, record.id)
    return removed
