"""B6: operator latency on the emulated cluster.

1. From `kubectl apply` of a BatchJob to the runner process started (target ≤ 2 s).
2. Progress lag: how long after the runner commits a progress record the BatchJob's
   `status.requestCounts` shows it (target ≤ 5 s). The runner's own commit interval adds to
   what a user sees on top; it is printed alongside.

Runs the real operator (kopf subprocess), kubectl, the kubelet harness, SeaweedFS and the
model simulator, exactly as tests/e2e/test_operator.py does.

    python -m bench.b6_operator [--batches 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import REPO_ROOT


def main() -> None:  # one linear script: set up, measure, print
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--poll-interval", default="2.0")
    parser.add_argument("--commit-interval", default="2.0")
    args = parser.parse_args()

    from openbatch.progress import ProgressRecord
    from openbatch.storage import ObjectNotFound, open_uri
    from tests.fakes.kube_emulator import EmulatorThread, load_crds
    from tests.fakes.kubelet import KubeletHarness
    from tests.fixtures.kube import KopfProcess, KubeApi, write_kubeconfig
    from tests.fixtures.model_sim import start_model_sim
    from tests.fixtures.s3 import SeaweedServer, unique_bucket_name
    from tests.operator_support import operator_env, prepare_namespace
    from tests.runner_support import chat_line, jsonl

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        seaweed = SeaweedServer(tmp / "seaweed")
        seaweed.start()
        os.environ.update(seaweed.env())
        bucket = seaweed.make_bucket(unique_bucket_name("b6"))
        sim = start_model_sim(slots=8, service_time=0.01, models=["sim-model"])
        emulator = EmulatorThread((), crds=load_crds(REPO_ROOT / "crds"))
        emulator.start()
        namespace = "bench"
        kubeconfig = write_kubeconfig(tmp / "kubeconfig", emulator.url, namespace)
        kube = KubeApi(emulator, namespace, kubeconfig, tmp / "kubectl-cache")
        kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        prepare_namespace(kube, seaweed, {"sim-model": [sim.base_url]})
        kubelet = KubeletHarness(kube.url, namespace=namespace, workdir=tmp / "kubelet")
        kubelet.start()
        operator = KopfProcess(
            "openbatch_operator.handlers",
            api_url=kube.url,
            kubeconfig=kubeconfig,
            namespace=namespace,
            log_path=tmp / "kopf.log",
            env=operator_env(
                seaweed,
                bucket,
                poll_interval_seconds=args.poll_interval,
                commit_interval_seconds=args.commit_interval,
                metrics_port="0",
            ),
        )
        operator.start()
        operator.wait_ready(60)
        write = open_uri(f"s3://{bucket}/x")[0]
        write.put_bytes("in.jsonl", jsonl(chat_line(i, model="sim-model") for i in range(200)))
        sim.configure(slots=4, service_time=0.05)  # ~80 requests/s: a few seconds of progress

        start_latencies: list[float] = []
        lags: list[float] = []
        try:
            for n in range(args.batches):
                name = f"b6-{n}"
                manifest: dict[str, Any] = {
                    "apiVersion": "openbatch.dev/v1alpha1",
                    "kind": "BatchJob",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {
                        "input": {"s3": {"bucket": bucket, "key": "in.jsonl"}},
                        "endpoint": "/v1/chat/completions",
                    },
                }
                path = tmp / f"{name}.yaml"
                path.write_text(yaml.safe_dump(manifest))
                applied = time.time()
                kube.kubectl("apply", "-f", str(path))
                pod = kubelet.wait_for_pod_running(f"{name}-runner", timeout=60)
                start_latencies.append(kubelet.process_started_at(pod) - applied)

                # Progress lag: each new progress record vs the first time the CR shows it.
                work_prefix = f"batches/{namespace}/{name}/"  # the work dir of this batch
                store = open_uri(f"s3://{bucket}/x")[0]
                pending: dict[int, float] = {}  # committed count -> when the record was written
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    obj = kube.get("batchjobs", name) or {}
                    status = obj.get("status") or {}
                    shown = int((status.get("requestCounts") or {}).get("completed", 0))
                    keys = [k for k in store.list_keys(work_prefix) if k.endswith("progress.json")]
                    for key in keys:
                        try:
                            record = ProgressRecord.model_validate_json(store.read_bytes(key))
                        except ObjectNotFound:
                            continue
                        if record.updated_at and record.completed not in pending:
                            pending[record.completed] = record.updated_at
                    now = time.time()
                    for count in [c for c in pending if 0 < c <= shown]:
                        lags.append(now - pending.pop(count))
                    if status.get("phase") in ("Completed", "Failed", "Expired", "Cancelled"):
                        break
                    time.sleep(0.05)
        finally:
            operator.stop()
            kubelet.stop()
            emulator.stop()
            sim.stop()
            seaweed.stop(graceful=False)

    print(
        f"B6: {args.batches} batches, operator poll {args.poll_interval}s, "
        f"runner commit interval {args.commit_interval}s"
    )
    print(
        f"apply -> runner process started: median {statistics.median(start_latencies):.2f}s, "
        f"max {max(start_latencies):.2f}s (target ≤ 2 s)"
    )
    if lags:
        print(
            f"progress record -> BatchJob status: median {statistics.median(lags):.2f}s, "
            f"max {max(lags):.2f}s over {len(lags)} updates (target ≤ 5 s); "
            f"model server -> status adds up to the commit interval"
        )


if __name__ == "__main__":
    main()
