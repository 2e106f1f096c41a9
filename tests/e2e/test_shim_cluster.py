"""The full path on the emulated cluster: the official `openai` client -> shim (Kubernetes
backend) -> BatchJob CR -> operator (kopf) -> runner Job (kubelet harness) -> S3 -> the
completed batch, downloaded by the client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from tests.e2e.test_operator import MODEL, Cluster, cluster  # noqa: F401  # the fixture
from tests.fixtures.shim import ServeHandle, start_shim
from tests.runner_support import chat_line, jsonl


@pytest.fixture
def shim(cluster: Cluster, tmp_path: Path) -> Iterator[ServeHandle]:  # noqa: F811
    routing = tmp_path / "models.json"
    routing.write_text(json.dumps({"models": {MODEL: [cluster.sim.base_url]}}))
    env = {
        **cluster.seaweed.env(),
        "KUBECONFIG": str(cluster.kube.kubeconfig),
        "OPENBATCH_SHIM_BACKEND": "kubernetes",
        "OPENBATCH_SHIM_BUCKET": cluster.bucket,
        "OPENBATCH_SHIM_NAMESPACE": cluster.kube.namespace,
        "OPENBATCH_SHIM_MODELS_FILE": str(routing),
    }
    handle = start_shim(env, tmp_path / "shim.log")
    yield handle
    handle.stop()


def test_openai_client_through_the_cluster(
    cluster: Cluster,  # noqa: F811
    shim: ServeHandle,
) -> None:
    cluster.start_operator()
    client = openai.OpenAI(base_url=shim.base_url, api_key="k", max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    uploaded = client.files.create(
        file=("in.jsonl", jsonl(chat_line(i, model=MODEL) for i in range(40))), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating"
    name = batch.id.replace("_", "-")
    cr = cluster.get(name)
    assert cr["spec"]["input"] == {"fileID": uploaded.id}
    assert cr["metadata"]["annotations"]["openbatch.dev/batch-id"] == batch.id
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None and batch.request_counts.completed == 40
    assert batch.output_file_id is not None
    assert [b.id for b in client.batches.list()] == [batch.id]
    lines = client.files.content(batch.output_file_id).read().splitlines()
    assert sorted(orjson.loads(x)["custom_id"] for x in lines) == sorted(
        f"req-{i}" for i in range(40)
    )
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    assert cluster.runner_jobs() == [f"{name}-runner"]
