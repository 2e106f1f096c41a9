"""The OpenAPI document says what the API really answers.

FastAPI documents a 422 for every operation with parameters; the shim never sends one (it
answers validation errors with a 400 in OpenAI's envelope, contract §5). Here the 422s go
and the error statuses each operation can return are documented with the envelope's schema,
so tools that check responses against the document (schemathesis) see the truth.
"""

import re
from functools import cache
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from openbatch.wire import ErrorResponse

_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_DESCRIPTIONS = {
    "400": "The request is invalid (OpenAI's error envelope)",
    "401": "No API key, or an unknown one",
    "404": "No such object for this tenant",
    "409": "The object's state or the idempotency key conflicts with the request",
    "413": "The file is too large",
    "503": "Object storage is not available; try again",
}


def error_statuses(path: str, method: str) -> list[str]:
    """The error statuses one operation can answer with."""
    codes = ["400", "401", "503"]
    if "{" in path or (method == "post" and path == "/v1/batches"):
        codes.append("404")  # an unknown id, or an input file the tenant cannot see
    if method == "post" and path.startswith("/v1/batches"):
        codes.append("409")  # cancel of a finished batch; an idempotency key reused
    if method == "post" and path == "/v1/files":
        codes.append("413")
    return sorted(codes)


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a FastAPI OpenAPI document in place: no 422, the real error responses."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    envelope = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(envelope.pop("$defs", {}))
    components["ErrorResponse"] = envelope
    # Contract §1: `Authorization: Bearer <key>` (any or none on an anonymous server).
    schema["components"]["securitySchemes"] = {"ApiKeyAuth": {"type": "http", "scheme": "bearer"}}
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.pop("422", None)
            if not path.startswith("/v1/"):
                continue
            operation.setdefault("security", [{"ApiKeyAuth": []}])
            for code in error_statuses(path, method):
                responses.setdefault(
                    code,
                    {
                        "description": _DESCRIPTIONS[code],
                        "content": {"application/json": {"schema": ref}},
                    },
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


@cache
def _template(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}/]+\})", path)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The documented methods of a request path (for a 405's `Allow`); empty if undocumented."""
    for template, item in app.openapi().get("paths", {}).items():
        if _template(template).fullmatch(path):
            return sorted(m.upper() for m in item if m in _METHODS)
    return []


def install(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
