"""The real llama.cpp server (xllamacpp) does what the runner needs, over plain HTTP.

These tests pin down llama.cpp's actual behaviour (response shapes, usage fields,
errors, headers, quirks) so the runner and its fakes are checked against the truth.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.tiny_gguf import write_tiny_llama
from tests.fixtures.llama import LlamaHandle, start_llama_server

# Generous: on 2 shared cores llama.cpp's tail latency reaches seconds.
_TIMEOUT_S = 30.0


def _request(
    url: str, body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """POST JSON (or GET when there is no body); return status, headers, parsed JSON."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    # Only http://127.0.0.1 URLs of the servers under test reach here.
    req = urllib.request.Request(  # noqa: S310
        url, data=data, headers={"Content-Type": "application/json"}
    )
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:  # noqa: S310
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.load(resp)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, json.load(err)


def _chat(content: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}


def test_tiny_gguf_is_small_and_quick(tmp_path: Path) -> None:
    start = time.monotonic()
    path = write_tiny_llama(tmp_path / "m.gguf", seed=1)
    assert time.monotonic() - start < 1.0
    assert 100_000 < path.stat().st_size < 2_000_000


def test_chat_completion_runs_to_max_tokens(llama_server: LlamaHandle) -> None:
    status, headers, body = _request(
        llama_server.base_url + "/chat/completions", _chat(max_tokens=8)
    )
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    # The tiny model never samples EOS, so every reply is cut by max_tokens.
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "cached_tokens" in usage["prompt_tokens_details"]
    # llama.cpp also reports its own timings, outside the OpenAI schema.
    assert body["timings"]["predicted_n"] == 8


def test_long_replies_also_run_to_max_tokens(llama_server: LlamaHandle) -> None:
    for seed in range(5):
        _, _, body = _request(
            llama_server.base_url + "/chat/completions", _chat(max_tokens=64, seed=seed)
        )
        assert body["usage"]["completion_tokens"] == 64
        assert body["choices"][0]["finish_reason"] == "length"


def test_model_field_is_ignored_and_alias_reported(llama_server: LlamaHandle) -> None:
    # llama.cpp serves its one model whatever "model" says and answers with its alias.
    body = _chat(max_tokens=1) | {"model": "no-such-model"}
    status, _, reply = _request(llama_server.base_url + "/chat/completions", body)
    assert status == 200
    assert reply["model"] == "tiny"
    _, _, models = _request(llama_server.base_url + "/models")
    assert [m["id"] for m in models["data"]] == ["tiny"]
    # The context is split evenly across the slots: 2048 / 4.
    assert models["data"][0]["meta"]["n_ctx"] == 512


def test_any_text_tokenizes(llama_server: LlamaHandle) -> None:
    # Byte-fallback tokens cover what the small vocabulary does not.
    content = "Grüße, 世界! 🙂 \x00 tab\tnew\nline"
    status, _, body = _request(
        llama_server.base_url + "/chat/completions", _chat(content, max_tokens=4)
    )
    assert status == 200
    assert body["usage"]["prompt_tokens"] > len(content.encode()) // 2


def test_request_id_header_is_not_echoed(llama_server: LlamaHandle) -> None:
    # llama.cpp sends no request-id header (and ignores one sent to it): the runner
    # must correlate requests itself. It does name itself in "Server".
    status, headers, _ = _request(
        llama_server.base_url + "/chat/completions",
        _chat(max_tokens=1),
        headers={"X-Request-Id": "req-123", "Authorization": "Bearer unused"},
    )
    assert status == 200
    assert "x-request-id" not in headers
    assert headers["server"] == "llama.cpp"


def test_completions(llama_server: LlamaHandle) -> None:
    status, _, body = _request(
        llama_server.base_url + "/completions",
        {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8},
    )
    assert status == 200
    assert body["object"] == "text_completion"
    # Quirk: /v1/completions ids also start with "chatcmpl-".
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert isinstance(choice["text"], str)
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 8


def test_multiple_choices_report_usage_of_one(llama_server: LlamaHandle) -> None:
    # Quirk: with n > 1 (or a list of prompts) llama.cpp returns every choice but its
    # usage counts a single one; OpenAI would sum them.
    _, _, chat = _request(llama_server.base_url + "/chat/completions", _chat(max_tokens=8, n=3))
    assert len(chat["choices"]) == 3
    assert chat["usage"]["completion_tokens"] == 8
    _, _, text = _request(
        llama_server.base_url + "/completions", {"prompt": ["a", "b"], "max_tokens": 8}
    )
    assert len(text["choices"]) == 2
    assert text["usage"]["completion_tokens"] == 8


def test_responses_endpoint(llama_server: LlamaHandle) -> None:
    status, _, body = _request(
        llama_server.base_url + "/responses",
        {"model": "tiny", "input": "Hello", "instructions": "Be brief.", "max_output_tokens": 8},
    )
    assert status == 200
    assert body["object"] == "response"
    assert body["id"].startswith("resp_")
    assert body["status"] == "completed"
    (message,) = body["output"]
    assert message["type"] == "message"
    assert message["content"][0]["type"] == "output_text"
    assert isinstance(message["content"][0]["text"], str)
    usage = body["usage"]
    assert usage["output_tokens"] == 8
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_embeddings(llama_embed_server: LlamaHandle) -> None:
    status, _, body = _request(
        llama_embed_server.base_url + "/embeddings",
        {"model": "any-name", "input": ["hello world", "the cat sat"]},
    )
    assert status == 200
    assert body["object"] == "list"
    # Unlike the generation endpoints, embeddings echo the requested model name.
    assert body["model"] == "any-name"
    assert [d["index"] for d in body["data"]] == [0, 1]
    for item in body["data"]:
        assert item["object"] == "embedding"
        assert len(item["embedding"]) == 64  # the model's hidden size
        # llama.cpp L2-normalises pooled embeddings by default.
        assert math.isclose(math.fsum(v * v for v in item["embedding"]), 1.0, rel_tol=1e-4)
    assert body["usage"]["prompt_tokens"] > 0
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]


def test_embeddings_need_an_embedding_instance(llama_server: LlamaHandle) -> None:
    status, _, body = _request(llama_server.base_url + "/embeddings", {"input": "hi"})
    assert status == 501
    assert body["error"]["type"] == "not_supported_error"


def test_embedding_input_larger_than_batch_is_a_500(llama_embed_server: LlamaHandle) -> None:
    # Quirk: an input longer than the physical batch (512) is a server_error 500, not a
    # 400, although retrying can never succeed.
    status, _, body = _request(llama_embed_server.base_url + "/embeddings", {"input": "x" * 600})
    assert status == 500
    assert body["error"]["type"] == "server_error"


def test_prompt_over_slot_context_is_a_400(llama_server: LlamaHandle) -> None:
    status, headers, body = _request(
        llama_server.base_url + "/chat/completions", _chat("x" * 600, max_tokens=8)
    )
    assert status == 400
    error = body["error"]
    assert error["type"] == "exceed_context_size_error"
    assert error["n_ctx"] == 512
    assert error["n_prompt_tokens"] > 512
    assert headers["connection"] == "close"


def test_malformed_requests_are_400(llama_server: LlamaHandle) -> None:
    url = llama_server.base_url + "/chat/completions"
    status, _, body = _request(url, raw=b"{not json")
    assert (status, body["error"]["type"]) == (400, "invalid_request_error")
    status, _, body = _request(url, {"model": "tiny", "max_tokens": 8})
    assert (status, body["error"]["type"]) == (400, "invalid_request_error")
    status, _, body = _request(llama_server.base_url + "/no-such-endpoint", {})
    assert (status, body["error"]["type"]) == (404, "not_found_error")


def test_concurrent_requests_all_succeed(llama_server: LlamaHandle) -> None:
    url = llama_server.base_url + "/chat/completions"

    def one(i: int) -> tuple[int, int, float]:
        start = time.monotonic()
        status, _, body = _request(url, _chat(f"request {i}", max_tokens=16))
        return status, body["usage"]["completion_tokens"], time.monotonic() - start

    # More requests in flight than the 4 slots: llama.cpp queues the rest.
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(one, range(48)))
    assert [(s, n) for s, n, _ in results] == [(200, 16)] * 48
    assert max(t for _, _, t in results) < _TIMEOUT_S


@pytest.mark.parametrize("embedding", [False, True])
def test_start_and_stop(tiny_gguf: Path, tmp_path: Path, embedding: bool) -> None:
    log = tmp_path / "server.log"
    handle = start_llama_server(
        tiny_gguf, parallel=1, ctx=256, embedding=embedding, alias="other", log_path=log
    )
    try:
        status, _, health = _request(handle.root_url + "/health")
        assert (status, health) == (200, {"status": "ok"})
        _, _, models = _request(handle.base_url + "/models")
        assert models["data"][0]["id"] == "other"
        assert models["data"][0]["meta"]["n_ctx"] == 256
    finally:
        code = handle.stop()
    assert code == 0, log.read_text()[-3000:]  # SIGTERM is a clean shutdown
    assert handle.stop() == 0  # idempotent
    assert "llama_server: stopped" in log.read_text()
    with pytest.raises(urllib.error.URLError):
        _request(handle.root_url + "/health")


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(RuntimeError, match="failed to start"):
        start_llama_server(bad, log_path=tmp_path / "bad.log")


def _wait_until_processing(handle: LlamaHandle, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        _, _, slots = _request(handle.root_url + "/slots")
        if any(slot["is_processing"] for slot in slots):
            return
        time.sleep(0.01)
    raise TimeoutError("no slot started processing")


@pytest.mark.parametrize(("how", "exit_code"), [("stop", 1), ("kill", -9)])
def test_shutdown_drops_requests_in_flight(
    tiny_gguf: Path, tmp_path: Path, how: str, exit_code: int
) -> None:
    # llama.cpp abandons in-flight work on SIGTERM (as on a crash): the client sees the
    # connection close without a response, so the runner must retry such requests.
    handle = start_llama_server(tiny_gguf, parallel=1, ctx=4096, log_path=tmp_path / "s.log")
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            # ~4000 tokens take seconds: certainly still running when we stop.
            reply = pool.submit(
                _request, handle.base_url + "/chat/completions", _chat(max_tokens=4000)
            )
            _wait_until_processing(handle)
            start = time.monotonic()
            assert (handle.stop() if how == "stop" else handle.kill()) == exit_code
            assert time.monotonic() - start < 5.0
            with pytest.raises(OSError):  # RemoteDisconnected / ConnectionResetError
                reply.result(timeout=_TIMEOUT_S)
    finally:
        handle.kill()
