"""Shared helpers of the shim tests: a running `openbatch serve` and polling."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from tests.fixtures.model_sim import SimHandle
from tests.fixtures.shim import ServeFactory, ServeHandle

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def client_for(serve: ServeHandle, key: str = "anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=serve.base_url, api_key=key, max_retries=0)


def wait_status(
    client: openai.OpenAI, batch_id: str, statuses: set[str] = TERMINAL, timeout: float = 90
) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}, wanted {statuses}"
        time.sleep(0.1)


@pytest.fixture
def serve(serve_factory: ServeFactory, model_sim: SimHandle, tmp_path: Path) -> ServeHandle:
    return serve_factory(tmp_path / "data", models={"sim-model": model_sim.base_url})
