"""B14: `GET /v1/batches?limit=100` latency, first and deep pages, as the batch count grows.

Through `openbatch serve` (local backend): N batches are created through the API from a file
id that does not exist, so each fails validation at once and none runs (the list cost is
what is measured, not the runners'). Then p50/p99 of the first page and of a deep page
(`after` = the batch at position 0.9 N) over repeated requests, at each N in one run:
"flat" means the ratio between the largest and smallest N stays near 1.

    python -m bench.b14_list_latency [--counts 1000,10000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.fixtures.shim import start_serve


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        serve = start_serve(Path(tmp) / "data")
        try:
            client = httpx.Client(base_url=serve.base_url, timeout=60)
            have = 0
            rows = []
            for n in counts:
                started = time.perf_counter()
                _fill(client, n, have)
                have = n
                fill = time.perf_counter() - started
                ids = _ids(client)
                assert len(ids) == n and len(set(ids)) == n, "a page skipped or repeated"
                first = _time(client, {"limit": 100}, args.repeat)
                deep = _time(client, {"limit": 100, "after": ids[int(0.9 * n)]}, args.repeat)
                rows.append((n, first, deep, fill))
            print(f"B14: GET /v1/batches?limit=100, {args.repeat} requests each, local backend")
            print(f"{'batches':>8} {'first p50':>10} {'first p99':>10} {'deep p50':>9} "
                  f"{'deep p99':>9} {'create/s':>9}")  # fmt: skip
            for n, first, deep, fill in rows:
                made = n - (
                    rows[rows.index((n, first, deep, fill)) - 1][0] if n != rows[0][0] else 0
                )
                print(
                    f"{n:>8} {statistics.median(first):>8.2f}ms {_percentile(first, 0.99):>8.2f}ms "
                    f"{statistics.median(deep):>7.2f}ms {_percentile(deep, 0.99):>7.2f}ms "
                    f"{made / fill:>9.0f}"
                )
            small, large = rows[0], rows[-1]
            print(
                f"p50 ratio {large[0]} vs {small[0]} batches: first page "
                f"{statistics.median(large[1]) / statistics.median(small[1]):.2f}, deep page "
                f"{statistics.median(large[2]) / statistics.median(small[2]):.2f}"
            )
        finally:
            serve.stop()


if __name__ == "__main__":
    main()
