"""Every error the API answers, as OpenAI answers it: status, envelope, message, headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.runner_support import chat_line, jsonl
from tests.shim.conftest import Api, ApiFactory, client_for, wait_status

ENVELOPE_KEYS = {"message", "type", "param", "code"}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ENVELOPE_KEYS, body
    assert response.headers.get("x-request-id", "").startswith("req_")
    error: dict[str, Any] = body["error"]
    return error


@pytest.fixture
def http(api: Api) -> httpx.Client:
    return httpx.Client(base_url=api.base_url, headers={"Authorization": "Bearer k"})


@pytest.fixture
def file_id(api: Api) -> str:
    client = client_for(api)
    return client.files.create(file=("in.jsonl", jsonl([chat_line(1)])), purpose="batch").id


def create(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/batches", json=body)


# (body, param, code, message fragment): every one a 400. One test walks the table on one
# server per backend (a server per case cost ~5 s each on the Kubernetes backend).
CREATE_400S: list[tuple[dict[str, Any], str, str, str]] = [
    ({"endpoint": "/v1/chat/completions", "completion_window": "24h"},
     "input_file_id", "missing_required_parameter", "Missing required parameter"),
    ({"endpoint": "/v1/foo"}, "endpoint", "invalid_value",
     "Supported values are: '/v1/chat/completions'"),
    ({"completion_window": "48h"}, "completion_window", "invalid_value", "'24h'"),
    ({"completion_window": ""}, "completion_window", "invalid_value", "'24h'"),
    ({"metadata": {"tags": ["a"]}}, "metadata.tags", "invalid_type",
     "expected a string, but got an array instead"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata",
     "object_above_max_properties", "at most 16 properties"),
    ({"metadata": {"k" * 65: "v"}}, "metadata." + "k" * 65, "invalid_value",
     "maximum length 64"),
    ({"metadata": {"k": "v" * 600}}, "metadata.k", "string_above_max_length",
     "maximum length 512, but got a string with length 600"),
    ({"output_expires_after": {"anchor": "created_at", "seconds": 10}},
     "output_expires_after.seconds", "invalid_value", "between 3600 and 2592000"),
    ({"input_file_id": "not-a-file"}, "input_file_id", "invalid_value", "file id"),
]  # fmt: skip


def test_create_400s(http: httpx.Client, file_id: str) -> None:
    for body, param, code, fragment in CREATE_400S:
        full = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        full.update(body)
        if "input_file_id" not in body and param == "input_file_id":
            del full["input_file_id"]
        response = create(http, **full)
        assert response.status_code == 400, (body, response.text)
        error = error_of(response)
        got = (error["param"], error["code"], error["type"])
        assert got == (param, code, "invalid_request_error"), (body, error)
        assert fragment in error["message"], (body, error)


def test_bad_json_and_wrong_body_types_are_400_never_422(http: httpx.Client) -> None:
    for raw in (b"", b"{", b"[1,2]", b'"x"'):
        response = http.post("/batches", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400, (raw, response.text)
        error_of(response)
    response = http.get("/batches", params={"limit": "many"})
    assert response.status_code == 400 and error_of(response)["param"] == "limit"
    for limit in ("0", "101"):
        response = http.get("/batches", params={"limit": limit})
        assert response.status_code == 400 and error_of(response)["param"] == "limit"


def test_not_found_cases(http: httpx.Client) -> None:
    response = http.get("/batches/batch_nope")
    assert response.status_code == 404 and "No batch found" in error_of(response)["message"]
    response = http.post("/batches/batch_nope/cancel")
    assert response.status_code == 404
    for method, path in (("GET", "/files/file-nope"), ("GET", "/files/file-nope/content"),
                         ("DELETE", "/files/file-nope")):  # fmt: skip
        response = http.request(method, path)
        assert response.status_code == 404, (method, path)
        error = error_of(response)
        assert error["message"] == "No such File object: file-nope" and error["param"] == "id"


def test_unknown_routes_and_methods_answer_in_the_envelope(http: httpx.Client) -> None:
    response = http.get("/foo")
    assert response.status_code == 404
    assert error_of(response)["message"] == "Invalid URL (GET /v1/foo)"
    response = http.put("/files")
    assert (
        response.status_code == 405
        and "Invalid URL (PUT /v1/files)" in error_of(response)["message"]
    )


def test_cancel_semantics(api: Api, file_id: str) -> None:
    client = client_for(api)
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_status(client, batch.id)
    assert done.status == "completed"
    with httpx.Client(base_url=api.base_url) as http:
        response = http.post(
            f"/batches/{batch.id}/cancel", headers={"content-type": "application/json"}
        )
    assert response.status_code == 409 and response.headers["x-should-retry"] == "false"
    assert error_of(response)["message"] == "Cannot cancel a batch with status 'completed'."
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_upload_errors(http: httpx.Client, tmp_path: Path) -> None:
    def upload(data: bytes, purpose: str | None = "batch", name: str = "x.jsonl") -> httpx.Response:
        fields = {"purpose": purpose} if purpose is not None else {}
        return http.post("/files", data=fields, files={"file": (name, data)})

    response = upload(b"not json at all\n")
    assert response.status_code == 400
    assert error_of(response)["message"] == "Invalid file format for Batch API. Must be .jsonl"
    assert upload(b"").status_code == 400
    response = upload(b'{"x": 1}\n', purpose="nonsense")
    assert response.status_code == 400 and error_of(response)["param"] == "purpose"
    response = upload(b'{"x": 1}\n', purpose=None)
    assert response.status_code == 400 and error_of(response)["param"] == "purpose"
    # Missing keys and broken lines are accepted now and reported by validation later.
    assert upload(b'{"custom_id": "a"}\n{broken\n').status_code == 200
    response = http.post("/files", content=b"plain", headers={"content-type": "text/plain"})
    assert response.status_code == 400
    response = http.post(
        "/files",
        data={
            "purpose": "batch",
            "expires_after[anchor]": "created_at",
            "expires_after[seconds]": "60",
        },
        files={"file": ("x.jsonl", b'{"a": 1}\n')},
    )
    assert response.status_code == 400 and error_of(response)["param"] == "expires_after.seconds"
    response = upload(b'{"a": 1}\n', purpose="user_data")
    assert response.status_code == 200
    denied = http.get(f"/files/{response.json()['id']}/content")
    assert denied.status_code == 400
    assert error_of(denied)["message"] == "Not allowed to download files of purpose: user_data"


def test_a_batch_file_over_200_mib_is_refused(http: httpx.Client, api: Api) -> None:
    chunk = b'{"custom_id": "x", "pad": "' + b"a" * (1 << 20) + b'"}\n'
    count = 201

    def body() -> Any:
        for _ in range(count):
            yield chunk

    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def stream() -> Any:
        yield head
        yield from body()
        yield tail

    response = http.post(
        "/files",
        content=stream(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        timeout=120,
    )
    assert response.status_code == 400, response.text[:300]
    assert error_of(response)["message"].startswith("File is too large.")
    assert client_for(api).files.list().data == []  # nothing was kept


def test_auth(api_factory: ApiFactory) -> None:
    serve = api_factory(api_keys={"sk-a": "team-a"})
    with httpx.Client(base_url=serve.base_url) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic sk-a"}):
            for path in ("/batches", "/files/file-x", "/nonexistent"):
                response = http.get(path, headers=headers)
                assert response.status_code == 401, (headers, path)
                error = error_of(response)
                assert error["code"] == "invalid_api_key"
        assert http.get("/batches", headers={"Authorization": "Bearer sk-a"}).status_code == 200
        assert httpx.get(serve.root_url + "/healthz").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client_for(serve, "wrong").batches.list()
