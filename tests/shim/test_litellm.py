"""LiteLLM's batch functions (provider `openai`, `api_base` at the shim) against a real
`openbatch serve`: one lifecycle and a cancel, offline."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from openbatch.lines import OutputLine
from tests.fixtures.model_sim import ModelSimFactory
from tests.fixtures.shim import ServeFactory, ServeHandle
from tests.runner_support import chat_line, jsonl

TERMINAL = {"completed", "failed", "expired", "cancelled"}
KEY = "sk-litellm"


@pytest.fixture
def litellm(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # Offline: the model cost map comes from the package, not from GitHub; any other
    # outbound request would go to a proxy that refuses it, loopback goes direct.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    import litellm

    monkeypatch.setattr(litellm, "telemetry", False, raising=False)
    return litellm


@pytest.fixture
def serve(
    serve_factory: ServeFactory, model_sim_factory: ModelSimFactory, tmp_path: Path
) -> ServeHandle:
    sim = model_sim_factory(slots=2, service_time=0.05)
    return serve_factory(
        tmp_path / "data", models={"sim-model": sim.base_url}, api_keys={KEY: "team"}
    )


def _opts(serve: ServeHandle) -> dict[str, Any]:
    return {"custom_llm_provider": "openai", "api_base": serve.base_url, "api_key": KEY}


def _poll(get: Callable[[], Any], until: Callable[[Any], bool], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if until(value):
            return value
        assert time.monotonic() < deadline, f"still {value}"
        time.sleep(0.2)


def _lines(content: Any) -> list[OutputLine]:
    data: bytes = content.content if hasattr(content, "content") else content.read()
    return [OutputLine.model_validate(orjson.loads(x)) for x in data.splitlines() if x.strip()]


def test_litellm_batch_lifecycle(litellm: ModuleType, serve: ServeHandle, tmp_path: Path) -> None:
    opts = _opts(serve)
    path = tmp_path / "litellm_in.jsonl"
    path.write_bytes(jsonl(chat_line(i) for i in range(12)))
    with path.open("rb") as f:
        uploaded = litellm.create_file(file=f, purpose="batch", **opts)
    assert uploaded.id.startswith("file-") and uploaded.purpose == "batch"
    assert uploaded.bytes == path.stat().st_size

    batch = litellm.create_batch(
        completion_window="24h",
        endpoint="/v1/chat/completions",
        input_file_id=uploaded.id,
        metadata={"via": "litellm"},
        **opts,
    )
    assert batch.status == "validating" and batch.input_file_id == uploaded.id

    done = _poll(
        lambda: litellm.retrieve_batch(batch_id=batch.id, **opts),
        lambda b: b.status in TERMINAL,
    )
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed) == (12, 12)
    assert done.metadata == {"via": "litellm"} and done.output_file_id

    listed = litellm.list_batches(limit=10, **opts)
    assert [b.id for b in listed.data] == [batch.id]
    assert listed.has_more is False

    lines = _lines(litellm.file_content(file_id=done.output_file_id, **opts))
    assert sorted(x.custom_id for x in lines) == sorted(f"req-{i}" for i in range(12))
    assert all(x.response is not None and x.response.status_code == 200 for x in lines)

    # The input file downloads too (purpose batch), byte for byte.
    raw = litellm.file_content(file_id=uploaded.id, **opts)
    assert raw.content == path.read_bytes()


def test_litellm_cancel(
    litellm: ModuleType,
    serve_factory: ServeFactory,
    model_sim_factory: ModelSimFactory,
    tmp_path: Path,
) -> None:
    # Slow enough to cancel midway; the runner's 64 in-flight requests drain in ~4 s.
    sim = model_sim_factory(slots=16, service_time=1.0)
    serve = serve_factory(
        tmp_path / "data", models={"sim-model": sim.base_url}, api_keys={KEY: "team"}
    )
    opts = _opts(serve)
    uploaded = litellm.create_file(
        file=("slow.jsonl", jsonl(chat_line(i) for i in range(600))), purpose="batch", **opts
    )
    batch = litellm.create_batch(
        completion_window="24h",
        endpoint="/v1/chat/completions",
        input_file_id=uploaded.id,
        **opts,
    )
    _poll(
        lambda: litellm.retrieve_batch(batch_id=batch.id, **opts),
        lambda b: b.status == "in_progress" and b.request_counts.completed > 0,
    )
    cancelling = litellm.cancel_batch(batch_id=batch.id, **opts)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at

    ended = _poll(
        lambda: litellm.retrieve_batch(batch_id=batch.id, **opts),
        lambda b: b.status in TERMINAL,
    )
    assert ended.status == "cancelled" and ended.cancelled_at
    counts = ended.request_counts
    assert 0 < counts.completed < 600
    # Partial results: what finished before the cancel is in the output file.
    assert ended.output_file_id
    lines = _lines(litellm.file_content(file_id=ended.output_file_id, **opts))
    assert 0 < len(lines) < 600
    # Cancelling again returns the cancelled batch.
    assert litellm.cancel_batch(batch_id=batch.id, **opts).status == "cancelled"
