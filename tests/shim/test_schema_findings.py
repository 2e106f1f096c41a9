"""Defects schemathesis found in the shim, pinned with plain HTTP requests against a real
`openbatch serve` (stdlib urllib: the exact status and headers matter)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.model_sim import SimHandle
from tests.fixtures.shim import ServeFactory, ServeHandle

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def serve(serve_factory: ServeFactory, model_sim: SimHandle, tmp_path: Path) -> ServeHandle:
    return serve_factory(tmp_path / "data", models={"sim-model": model_sim.base_url})


def call(
    serve: ServeHandle,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310  # our own loopback server
        serve.root_url + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/files/file-%00"),
        ("GET", "/v1/files/file-%00/content"),
        ("DELETE", "/v1/files/file-%00"),
        ("GET", "/v1/files/..%5C.."),
    ],
)
def test_a_malformed_file_id_is_a_404_not_a_crash(
    serve: ServeHandle, method: str, path: str
) -> None:
    status, headers, body = call(serve, method, path)
    assert status == 404, body
    assert body["error"]["type"] == "invalid_request_error" and "x-request-id" in headers


def test_a_batch_from_a_malformed_file_id_is_refused_not_a_crash(serve: ServeHandle) -> None:
    status, _, body = call(
        serve,
        "POST",
        "/v1/batches",
        {
            "input_file_id": "file-\u0000x",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    assert status == 400, body
    assert body["error"]["param"] == "input_file_id"
    assert "Traceback" not in serve.log_text()


def test_allow_lists_every_method_of_the_path(serve: ServeHandle) -> None:
    status, headers, body = call(serve, "PUT", "/v1/files/file-abc")
    assert status == 405, body
    assert {k.lower(): v for k, v in headers.items()}["allow"] == "DELETE, GET"


def test_a_bad_idempotency_key_in_the_body_is_refused_even_with_a_header(
    serve: ServeHandle,
) -> None:
    status, _, body = call(
        serve,
        "POST",
        "/v1/batches",
        {
            "input_file_id": "file-abc",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "idempotency_key": "",
        },
        headers={"Idempotency-Key": "k1"},
    )
    assert status == 400, body
    assert body["error"]["param"] == "idempotency_key"


def test_the_document_shows_the_real_error_responses(serve: ServeHandle) -> None:
    status, _, doc = call(serve, "GET", "/openapi.json")
    assert status == 200
    operations = [op for item in doc["paths"].values() for op in item.values()]
    assert all("422" not in op["responses"] for op in operations)
    cancel = doc["paths"]["/v1/batches/{batch_id}/cancel"]["post"]["responses"]
    assert {"400", "401", "404", "409"} <= set(cancel)
    assert cancel["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert doc["components"]["securitySchemes"]["ApiKeyAuth"]["scheme"] == "bearer"
