"""Opt-in download redirect (decision 0005): with files on S3 and
`OPENBATCH_SHIM_DOWNLOAD_REDIRECT_SECONDS` set, `GET /v1/files/{id}/content` answers 307 to a
presigned URL of the store, after the same checks as a relayed download."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest

from tests.fixtures.model_sim import SimHandle
from tests.fixtures.s3 import SeaweedServer
from tests.fixtures.shim import ServeFactory, ServeHandle
from tests.runner_support import chat_line, jsonl, parse_lines
from tests.shim.conftest import wait_status

KEYS = {"key-of-team-a-0123456789": "team-a", "key-of-team-b-0123456789": "team-b"}
KEY_A, KEY_B = list(KEYS)
BYTES = b"".join(
    b'{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions"}\n' % i for i in range(5000)
)


StartServe = Callable[[dict[str, str]], ServeHandle]


@pytest.fixture
def start(
    serve_factory: ServeFactory,
    model_sim: SimHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> StartServe:
    """`openbatch serve` with two tenants and `env` set."""

    def serve(env: dict[str, str]) -> ServeHandle:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        models = {"sim-model": model_sim.base_url}
        return serve_factory(tmp_path / "data", models=models, api_keys=KEYS)

    return serve


def _s3_env(seaweed: SeaweedServer, bucket: str, seconds: int) -> dict[str, str]:
    return {
        **seaweed.env(),
        "OPENBATCH_SHIM_STORAGE_ROOT": f"s3://{bucket}/shim",
        "OPENBATCH_SHIM_DOWNLOAD_REDIRECT_SECONDS": str(seconds),
    }


def _upload(serve: ServeHandle, key: str = KEY_A, purpose: str = "batch") -> str:
    client = openai.OpenAI(base_url=serve.base_url, api_key=key, max_retries=0)
    return client.files.create(file=("in put.jsonl", BYTES), purpose=purpose).id  # type: ignore[arg-type]


def _get(serve: ServeHandle, file_id: str, key: str = KEY_A) -> httpx.Response:
    return httpx.get(
        f"{serve.base_url}/files/{file_id}/content",
        headers={"Authorization": f"Bearer {key}"},
        follow_redirects=False,
    )


def test_a_download_is_redirected_to_the_store_and_every_client_follows(
    start: StartServe, seaweed: SeaweedServer, s3_bucket: str
) -> None:
    serve = start(_s3_env(seaweed, s3_bucket, 120))
    file_id = _upload(serve)

    answer = _get(serve, file_id)
    assert answer.status_code == 307, answer.text
    assert "x-request-id" in answer.headers
    location = answer.headers["location"]
    assert location.startswith(seaweed.endpoint + "/" + s3_bucket + "/shim/"), location
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["120"]

    # The URL itself needs no credentials and serves the bytes as the relay would.
    direct = httpx.get(location)
    assert direct.status_code == 200, direct.text
    assert direct.content == BYTES
    assert direct.headers["content-type"] == "application/octet-stream"
    assert direct.headers["content-disposition"] == "attachment; filename*=UTF-8''in%20put.jsonl"

    # The official client (sync and streaming) and curl -L follow it unchanged.
    client = openai.OpenAI(base_url=serve.base_url, api_key=KEY_A, max_retries=0)
    assert client.files.content(file_id).read() == BYTES
    with client.files.with_streaming_response.content(file_id) as response:
        assert b"".join(response.iter_bytes()) == BYTES
    curl = subprocess.run(
        [
            *["curl", "-sS", "-L", "--fail", "-H", f"Authorization: Bearer {KEY_A}"],
            f"{serve.base_url}/files/{file_id}/content",
        ],
        capture_output=True,
        check=False,
    )
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout == BYTES

    # A batch's output file, written by the runner, is redirected the same way.
    lines = jsonl([chat_line(i) for i in range(20)])
    batch_input = client.files.create(file=("b.jsonl", lines), purpose="batch")
    batch = client.batches.create(
        input_file_id=batch_input.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_status(client, batch.id)
    assert done.status == "completed" and done.output_file_id is not None, done
    assert _get(serve, done.output_file_id).status_code == 307
    output = client.files.content(done.output_file_id).read()
    assert sorted(r.custom_id for r in parse_lines(output)) == sorted(f"req-{i}" for i in range(20))


def test_no_url_is_issued_for_what_the_tenant_may_not_download(
    start: StartServe, seaweed: SeaweedServer, s3_bucket: str
) -> None:
    serve = start(_s3_env(seaweed, s3_bucket, 120))
    file_id = _upload(serve)
    other = _get(serve, file_id, key=KEY_B)
    assert other.status_code == 404, other.text
    assert other.json()["error"]["message"] == f"No such File object: {file_id}"
    assert _get(serve, "file-doesnotexist0000000000").status_code == 404
    assert _get(serve, file_id, key="not-a-key").status_code == 401
    tuning = _upload(serve, purpose="user_data")
    refused = _get(serve, tuning)
    assert refused.status_code == 400, refused.text
    assert "location" not in refused.headers


def test_a_presigned_url_expires_and_may_name_a_public_endpoint(
    start: StartServe, seaweed: SeaweedServer, s3_bucket: str
) -> None:
    # Clients reach the store by another name than the shim does: "localhost" stands in
    # for an ingress; the URL is signed for that name and works there.
    public = seaweed.endpoint.replace("127.0.0.1", "localhost")
    env = {**_s3_env(seaweed, s3_bucket, 5), "OPENBATCH_SHIM_DOWNLOAD_REDIRECT_ENDPOINT": public}
    serve = start(env)
    file_id = _upload(serve)
    signed = time.monotonic()
    location = _get(serve, file_id).headers["location"]
    assert location.startswith(public + "/"), location
    assert httpx.get(location).content == BYTES
    # Valid 5 s from its signing second (X-Amz-Date is whole seconds): gone 6 s after.
    time.sleep(max(0.0, signed + 6.5 - time.monotonic()))
    expired = httpx.get(location)
    assert expired.status_code == 403, expired.text  # S3's AccessDenied: the link has expired


def test_files_on_local_disk_are_relayed_even_with_the_setting(start: StartServe) -> None:
    env = {"OPENBATCH_SHIM_DOWNLOAD_REDIRECT_SECONDS": "120"}
    serve = start(env)
    file_id = _upload(serve)
    answer = _get(serve, file_id)
    assert answer.status_code == 200
    assert answer.content == BYTES


def test_a_link_never_outlives_its_file(
    start: StartServe, seaweed: SeaweedServer, s3_bucket: str
) -> None:
    serve = start(_s3_env(seaweed, s3_bucket, 7200))
    posted = httpx.post(
        f"{serve.base_url}/files",
        headers={"Authorization": f"Bearer {KEY_A}"},
        data={"purpose": "batch", "expires_after[anchor]": "created_at"}
        | {"expires_after[seconds]": "3600"},
        files={"file": ("in.jsonl", BYTES)},
    )
    assert posted.status_code == 200, posted.text
    location = _get(serve, posted.json()["id"]).headers["location"]
    lifetime = int(parse_qs(urlsplit(location).query)["X-Amz-Expires"][0])
    assert 3500 < lifetime <= 3600  # the file's own hour, not the 2 h asked for
