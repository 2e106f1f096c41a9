"""The shim tests run against both backends through one fixture, `api`:

- `local`: `openbatch serve` (uvicorn, SQLite, runner subprocesses) with a simulator;
- `kubernetes`: `python -m openbatch_shim` with the Kubernetes backend on the emulated
  cluster, the real kopf operator and the kubelet harness running runner Jobs, SeaweedFS.

`api(...)` starts one and returns an `Api` (base URL, the simulator, the backend's name).
Tests that need a backend's internals (the local data dir, a restart) use `serve_factory`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import openai
import pytest

from tests.e2e.test_operator import cluster  # noqa: F401  # the emulated cluster fixture
from tests.fixtures.model_sim import ModelSimFactory, SimHandle
from tests.fixtures.shim import ServeFactory, ServeHandle, start_shim

TERMINAL = {"completed", "failed", "expired", "cancelled"}
MODEL = "sim-model"


def client_for(serve: ServeHandle | Api, key: str = "anything") -> openai.OpenAI:
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


@dataclass
class Api:
    backend: str
    base_url: str
    sim: SimHandle

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")


class ApiFactory(Protocol):
    def __call__(
        self,
        *,
        slots: int = 8,
        service_time: float = 0.0,
        api_keys: dict[str, str] | None = None,
        windows: list[str] | None = None,
        max_concurrent: int | None = None,
    ) -> Api: ...


def _local(
    serve_factory: ServeFactory, model_sim_factory: ModelSimFactory, tmp_path: Path
) -> ApiFactory:
    def start(
        *,
        slots: int = 8,
        service_time: float = 0.0,
        api_keys: dict[str, str] | None = None,
        windows: list[str] | None = None,
        max_concurrent: int | None = None,
    ) -> Api:
        sim = model_sim_factory(slots=slots, service_time=service_time)
        extra: list[str] = []
        for window in windows or []:
            extra += ["--allow-completion-window", window]
        if max_concurrent is not None:
            extra += ["--max-concurrent-batches", str(max_concurrent)]
        serve = serve_factory(
            tmp_path / "data", models={MODEL: sim.base_url}, api_keys=api_keys, extra=extra
        )
        return Api("local", serve.base_url, sim)

    return start


def _kubernetes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiFactory]:
    emulated: Any = request.getfixturevalue("cluster")
    started: list[ServeHandle] = []

    def start(
        *,
        slots: int = 8,
        service_time: float = 0.0,
        api_keys: dict[str, str] | None = None,
        windows: list[str] | None = None,
        max_concurrent: int | None = None,
    ) -> Api:
        emulated.sim.configure(slots=slots, service_time=service_time)
        overrides = (
            {} if max_concurrent is None else {"max_concurrent_batches": str(max_concurrent)}
        )
        emulated.start_operator(**overrides)
        routing = tmp_path / "models.json"
        routing.write_text(json.dumps({"models": {MODEL: [emulated.sim.base_url]}}))
        env = {
            **emulated.seaweed.env(),
            "KUBECONFIG": str(emulated.kube.kubeconfig),
            "OPENBATCH_SHIM_BACKEND": "kubernetes",
            "OPENBATCH_SHIM_BUCKET": emulated.bucket,
            "OPENBATCH_SHIM_NAMESPACE": emulated.kube.namespace,
            "OPENBATCH_SHIM_MODELS_FILE": str(routing),
            "OPENBATCH_SHIM_ALLOWED_COMPLETION_WINDOWS": ",".join(["24h", *(windows or [])]),
        }
        if api_keys:
            # One namespace per test on the emulator: every key is the test's tenant.
            keys = tmp_path / "keys.json"
            keys.write_text(json.dumps(dict.fromkeys(api_keys, emulated.kube.namespace)))
            env["OPENBATCH_SHIM_API_KEYS_FILE"] = str(keys)
        handle = start_shim(env, tmp_path / "shim.log")
        started.append(handle)
        return Api("kubernetes", handle.base_url, emulated.sim)

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture(params=["local", "kubernetes"])
def api_factory(
    request: pytest.FixtureRequest,
    serve_factory: ServeFactory,
    model_sim_factory: ModelSimFactory,
    tmp_path: Path,
) -> Iterator[ApiFactory]:
    if request.param == "local":
        yield _local(serve_factory, model_sim_factory, tmp_path)
    else:
        yield from _kubernetes(request, tmp_path)


@pytest.fixture
def api(api_factory: ApiFactory) -> Api:
    return api_factory()


@pytest.fixture
def serve(serve_factory: ServeFactory, model_sim: SimHandle, tmp_path: Path) -> ServeHandle:
    return serve_factory(tmp_path / "data", models={MODEL: model_sim.base_url})
