"""B14: `GET /v1/batches?limit=100` latency, first and deep pages, as the batch count grows.

For each backend: N batches are created through the API from a file id that does not
exist (the local backend fails each at validation at once, the Kubernetes one keeps it as a
BatchJob with no operator to run it: the list cost is what is measured, not runners'). Then
p50/p99 of the first page and of a deep page (`after` = the batch at position 0.9 N) over
repeated requests, at each N in one run: "flat" means the ratio between the largest and
smallest N stays near 1.

* local: `openbatch serve` (SQLite, in-memory index);
* kubernetes: `python -m openbatch_shim` with `OPENBATCH_SHIM_BACKEND=kubernetes` against
  the test suite's API server emulator (kmock) and SeaweedFS; its lists come from the cache
  its BatchJob watch feeds.

    python -m bench.b14_list_latency [--counts 1000,10000] [--repeat 200]
        [--backends local,kubernetes]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.fixtures.shim import start_serve, start_shim


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _fill(client: httpx.Client, target: int, have: int) -> None:
    body = {
        "input_file_id": "file-benchmissing",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    for _ in range(target - have):
        response = client.post("/batches", json=body)
        response.raise_for_status()


def _ids(client: httpx.Client) -> list[str]:
    out: list[str] = []
    after = None
    while True:
        params: dict[str, str | int] = {"limit": 100}
        if after:
            params["after"] = after
        page = client.get("/batches", params=params).json()
        out += [b["id"] for b in page["data"]]
        if not page["has_more"]:
            return out
        after = page["data"][-1]["id"]


def _time(client: httpx.Client, params: dict[str, str | int], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.get("/batches", params=params).raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@contextlib.contextmanager
def _local(tmp: Path) -> Iterator[str]:
    serve = start_serve(tmp / "data")
    try:
        yield serve.base_url
    finally:
        serve.stop()


@contextlib.contextmanager
def _kubernetes(tmp: Path) -> Iterator[str]:
    from tests.fakes.kube_emulator import EmulatorThread, load_crds
    from tests.fixtures.kube import REPO_ROOT, write_kubeconfig
    from tests.fixtures.s3 import SeaweedServer, unique_bucket_name

    namespace = "bench"
    with EmulatorThread((), crds=load_crds(REPO_ROOT / "crds")) as emulator:
        httpx.post(
            emulator.url + "/api/v1/namespaces", json={"metadata": {"name": namespace}}
        ).raise_for_status()
        kubeconfig = write_kubeconfig(tmp / "kubeconfig", emulator.url, namespace)
        seaweed = SeaweedServer(tmp / "seaweed")
        seaweed.start()
        try:
            routing = tmp / "models.json"
            routing.write_text(json.dumps({"models": {"bench": ["http://127.0.0.1:9/v1"]}}))
            env = {
                **seaweed.env(),
                "KUBECONFIG": str(kubeconfig),
                "OPENBATCH_SHIM_BACKEND": "kubernetes",
                "OPENBATCH_SHIM_BUCKET": seaweed.make_bucket(unique_bucket_name("b14")),
                "OPENBATCH_SHIM_NAMESPACE": namespace,
                "OPENBATCH_SHIM_MODELS_FILE": str(routing),
            }
            shim = start_shim(env, tmp / "shim.log")
            try:
                yield shim.base_url
            finally:
                shim.stop()
        finally:
            seaweed.stop()


BACKENDS = {"local": _local, "kubernetes": _kubernetes}


def _measure(
    base_url: str, counts: list[int], repeat: int
) -> list[tuple[int, list[float], list[float], float]]:
    client = httpx.Client(base_url=base_url, timeout=60)
    have = 0
    rows = []
    for n in counts:
        started = time.perf_counter()
        _fill(client, n, have)
        fill = (n - have) / (time.perf_counter() - started)
        have = n
        ids = _ids(client)
        assert len(ids) == n and len(set(ids)) == n, "a page skipped or repeated"
        first = _time(client, {"limit": 100}, repeat)
        deep = _time(client, {"limit": 100, "after": ids[int(0.9 * n)]}, repeat)
        rows.append((n, first, deep, fill))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--backends", default="local,kubernetes")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    print(f"B14: GET /v1/batches?limit=100, {args.repeat} requests per cell")
    print(
        "| backend | batches | first p50 | first p99 | deep p50 | deep p99 | creates/s |\n"
        "|---|---|---|---|---|---|---|"
    )
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp, BACKENDS[backend](Path(tmp)) as base_url:
            rows = _measure(base_url, counts, args.repeat)
        for n, first, deep, fill in rows:
            print(
                f"| {backend} | {n:,} | {statistics.median(first):.2f} ms | "
                f"{_percentile(first, 0.99):.2f} ms | {statistics.median(deep):.2f} ms | "
                f"{_percentile(deep, 0.99):.2f} ms | {fill:.0f} |"
            )
        small, large = rows[0], rows[-1]
        print(
            f"| {backend}: p50 ratio {large[0]:,} vs {small[0]:,} | first page "
            f"{statistics.median(large[1]) / statistics.median(small[1]):.2f} | deep page "
            f"{statistics.median(large[2]) / statistics.median(small[2]):.2f} | | | | |",
            flush=True,
        )


if __name__ == "__main__":
    main()
