"""Batch behaviours through the official client: pagination, cancel, expiry, validation
failures, idempotency, tenants and file lifetimes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import orjson
import pytest

from tests.fixtures.model_sim import SimHandle
from tests.fixtures.shim import ServeFactory
from tests.runner_support import chat_line, jsonl
from tests.shim.conftest import Api, ApiFactory, client_for, wait_status

CHAT: Literal["/v1/chat/completions"] = "/v1/chat/completions"


def upload(client: openai.OpenAI, lines: bytes, name: str = "in.jsonl") -> str:
    return client.files.create(file=(name, lines), purpose="batch").id


def test_auto_pagination_over_many_pages_is_stable(api: Api) -> None:
    """25 batches created within a second or two: pages of 4 give each exactly once, newest
    first, however many share one created_at second."""
    client = client_for(api)
    file_id = upload(client, jsonl([chat_line(1)]))
    created = [
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h").id
        for _ in range(25)
    ]
    seen = [b.id for b in client.batches.list(limit=4)]
    assert seen == list(reversed(created))
    page = client.batches.list(limit=4)
    assert page.has_more and len(page.data) == 4
    files = [f.id for f in client.files.list(purpose="batch", limit=1)]
    assert files == [file_id]


def test_validation_failures_as_openai_reports_them(api: Api) -> None:
    client = client_for(api)
    lines = (
        jsonl([chat_line(1)])
        + b"{not json\n"
        + orjson.dumps({"custom_id": "x", "url": CHAT, "body": {}}) + b"\n"
        + jsonl([chat_line(1)])
    )  # fmt: skip
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h"
    )
    failed = wait_status(client, batch.id)
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.errors is not None and failed.errors.data is not None
    found = {(e.code, e.line, e.param) for e in failed.errors.data}
    assert ("invalid_json_line", 2, None) in found
    assert ("missing_required_parameter", 3, "method") in found
    assert ("duplicate_custom_id", 4, "custom_id") in found
    assert failed.output_file_id is None and failed.error_file_id is None


def test_a_missing_input_file_gives_a_failed_batch(api: Api) -> None:
    client = client_for(api)
    batch = client.batches.create(
        input_file_id="file-doesnotexist", endpoint=CHAT, completion_window="24h"
    )
    assert batch.status == "validating"
    failed = wait_status(client, batch.id)
    assert failed.status == "failed" and failed.errors and failed.errors.data
    (error,) = failed.errors.data
    assert (error.code, error.param, error.line) == ("invalid_request", "file_id", None)
    assert "Cannot find file file-doesnotexist" in (error.message or "")


def test_cancel_keeps_partial_results(
    api_factory: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENBATCH_SHIM_RUNNER_MAX_IN_FLIGHT", "4")  # a short drain, as below
    client = client_for(api_factory(slots=2, service_time=0.2))
    file_id = upload(client, jsonl(chat_line(i) for i in range(200)))
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 60
    while True:
        current = client.batches.retrieve(batch.id)
        if current.request_counts and current.request_counts.completed >= 4:
            break
        assert time.monotonic() < deadline, current
        time.sleep(0.1)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    again = client.batches.cancel(batch.id)  # cancelling a cancelling batch returns it
    assert again.status in ("cancelling", "cancelled")
    done = wait_status(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts is not None
    assert 4 <= done.request_counts.completed < 200
    assert done.output_file_id and done.error_file_id
    errors = client.files.content(done.error_file_id).read().splitlines()
    codes = {orjson.loads(line)["error"]["code"] for line in errors}
    assert codes == {"batch_cancelled"}
    ok = client.files.content(done.output_file_id).read().splitlines()
    assert len(ok) + len(errors) == 200 and len(ok) == done.request_counts.completed
    assert client.batches.cancel(batch.id).status == "cancelled"  # and a cancelled one


def test_cancel_while_queued_is_cancelled_at_once(api_factory: ApiFactory) -> None:
    client = client_for(api_factory(slots=1, service_time=0.5, max_concurrent=1))
    file_id = upload(client, jsonl(chat_line(i) for i in range(50)))
    first = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    wait_status(client, first.id, {"in_progress"})
    queued = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    time.sleep(1.0)
    assert client.batches.retrieve(queued.id).status == "validating"  # waits for a slot
    # Locally the answer is already final; on Kubernetes the operator gets to it next.
    assert client.batches.cancel(queued.id).status in ("cancelling", "cancelled")
    done = wait_status(client, queued.id)
    assert done.status == "cancelled" and done.in_progress_at is None
    assert done.request_counts is not None and done.request_counts.completed == 0
    client.batches.cancel(first.id)


def test_expiry_keeps_partial_output(
    api_factory: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Few requests in flight: after expiry the runner lets them finish (the grace period),
    # and 64 queued at one 0.3 s slot would take 19 s to drain.
    monkeypatch.setenv("OPENBATCH_SHIM_RUNNER_MAX_IN_FLIGHT", "4")
    client = client_for(api_factory(slots=1, service_time=0.3, windows=["4s"]))
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(input_file_id="file-x", endpoint=CHAT, completion_window="5s")  # type: ignore[arg-type]
    file_id = upload(client, jsonl(chat_line(i) for i in range(100)))
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint=CHAT,
        completion_window="4s",  # type: ignore[arg-type]  # allowed by this server
    )
    assert batch.completion_window == "4s" and batch.expires_at == batch.created_at + 4
    done = wait_status(client, batch.id, timeout=120)
    assert done.status == "expired" and done.expired_at is not None
    assert done.request_counts is not None and 0 < done.request_counts.completed < 100
    assert done.output_file_id and done.error_file_id
    errors = client.files.content(done.error_file_id).read().splitlines()
    assert {orjson.loads(x)["error"]["code"] for x in errors} == {"batch_expired"}


def test_idempotent_create(api: Api) -> None:
    client = client_for(api)
    file_id = upload(client, jsonl([chat_line(1)]))
    params: dict[str, Any] = {
        "input_file_id": file_id,
        "endpoint": CHAT,
        "completion_window": "24h",
    }
    a = client.batches.create(
        **params, metadata={"a": "1", "b": "2"}, extra_headers={"Idempotency-Key": "k1"}
    )
    b = client.batches.create(
        **params, metadata={"b": "2", "a": "1"}, extra_headers={"Idempotency-Key": "k1"}
    )
    assert (a.id, a.created_at) == (b.id, b.created_at)
    c = client.batches.create(
        **params, extra_body={"idempotency_key": "k1"}, metadata={"a": "1", "b": "2"}
    )
    assert c.id == a.id
    with pytest.raises(openai.ConflictError, match="idempotency key"):
        client.batches.create(**params, extra_headers={"Idempotency-Key": "k1"})
    other = client.batches.create(**params, extra_headers={"Idempotency-Key": "k2"})
    assert other.id != a.id


def test_tenants_never_see_each_other(
    serve_factory: ServeFactory, model_sim: SimHandle, tmp_path: Path
) -> None:
    serve = serve_factory(
        tmp_path / "d",
        models={"sim-model": model_sim.base_url},
        api_keys={"sk-a": "team-a", "sk-b": "team-b"},
    )
    a, b = client_for(serve, "sk-a"), client_for(serve, "sk-b")
    file_id = upload(a, jsonl([chat_line(1)]))
    batch = a.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    done = wait_status(a, batch.id)
    assert done.output_file_id
    for call in (
        lambda: b.files.retrieve(file_id),
        lambda: b.files.content(file_id),
        lambda: b.files.delete(file_id),
        lambda: b.files.retrieve(done.output_file_id or ""),
        lambda: b.files.content(done.output_file_id or ""),
        lambda: b.batches.retrieve(batch.id),
        lambda: b.batches.cancel(batch.id),
        lambda: b.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.files.list().data == [] and b.batches.list().data == []
    assert {f.id for f in a.files.list()} == {file_id, done.output_file_id}


def test_file_delete_and_expiry(
    serve_factory: ServeFactory,
    model_sim: SimHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENBATCH_SHIM_SWEEP_INTERVAL", "0.5")
    data = tmp_path / "d"
    serve = serve_factory(data, models={"sim-model": model_sim.base_url})
    client = client_for(serve)
    kept = client.files.create(
        file=("a.jsonl", jsonl([chat_line(1)])),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert kept.expires_at == kept.created_at + 3600
    doomed = client.files.create(file=("b.jsonl", jsonl([chat_line(2)])), purpose="batch")
    deleted = client.files.delete(doomed.id)
    assert deleted.deleted and deleted.id == doomed.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(doomed.id)
    # An hour passes while the server is down: its expiry is moved into the past.
    serve.stop()
    meta = next((data / "storage" / "files" / "default").glob(f"{kept.id}.meta.json"))
    record = orjson.loads(meta.read_bytes())
    record["expires_at"] = int(time.time()) - 1
    meta.write_bytes(orjson.dumps(record))
    serve = serve_factory(data, models={"sim-model": model_sim.base_url})
    client = client_for(serve)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(kept.id)
    blob = data / "storage" / "files" / "default" / kept.id
    deadline = time.monotonic() + 30
    while blob.exists() or meta.exists():
        assert time.monotonic() < deadline, "the expired file was not deleted"
        time.sleep(0.1)


def test_models_lists_the_routing_table(api: Api) -> None:
    assert [m.id for m in client_for(api).models.list()] == ["sim-model"]
    assert httpx.get(api.root_url + "/readyz").json() == {"ready": True}
    metrics = httpx.get(api.root_url + "/metrics").text
    assert "openbatch_shim_requests_total" in metrics and "openbatch_shim_batches" in metrics
