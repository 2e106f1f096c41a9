"""B1 overhead: runner CPU time per request against a zero-latency simulator.

Wall time is meaningless here (the simulator shares the two cores), so the measure is the
runner process's own user+sys CPU per request, side by side with a hand-written
`AsyncOpenAI` + semaphore script in the same run. Target: ≤ 0.2 CPU-ms per request and
≥ 3x less CPU than the hand-written script.

    python bench/b1_overhead.py [--n 100000] [--concurrency 64] [--clients aiohttp,raw]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import Measured, measure, openbatch_argv, write_chat_input


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--clients", default="aiohttp,raw")
    parser.add_argument(
        "--baseline-n",
        type=int,
        default=20_000,
        help="requests for the hand-written script (it is ~15x slower; CPU is per request)",
    )
    args = parser.parse_args()

    from tests.fixtures.model_sim import start_model_sim

    sim = start_model_sim(slots=1024)
    results: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        size = write_chat_input(work / "in.jsonl", args.n)
        print(
            f"B1: {args.n:,} chat requests ({size / 1e6:.1f} MB), zero service time, "
            f"{args.concurrency} in flight"
        )
        for client in args.clients.split(","):
            m = measure(
                openbatch_argv(
                    "run",
                    str(work / "in.jsonl"),
                    "--base-url",
                    sim.base_url,
                    "--output",
                    str(work / f"out-{client}.jsonl"),
                    "--concurrency",
                    str(args.concurrency),
                    "--progress",
                    "none",
                    "--max-lines",
                    str(max(args.n, 50_000)),
                    "--http-client",
                    client,
                )
            )
            if m.returncode != 0:
                sys.exit(f"runner ({client}) failed: {m.stderr[-2000:]}")
            results[f"openbatch run ({client})"] = m
        if args.baseline_n > 0:
            write_chat_input(work / "in-baseline.jsonl", args.baseline_n)
            m = measure(
                [
                    sys.executable,
                    str(Path(__file__).parent / "openai_baseline.py"),
                    str(work / "in-baseline.jsonl"),
                    str(work / "out-openai.jsonl"),
                    sim.base_url,
                    str(args.concurrency),
                ]
            )
            if m.returncode != 0:
                sys.exit(f"baseline failed: {m.stderr[-2000:]}")
            results["AsyncOpenAI + semaphore"] = m
    sim.stop()

    counts = dict.fromkeys(results, args.n)
    counts["AsyncOpenAI + semaphore"] = args.baseline_n
    print(
        f"{'program':32} {'requests':>9} {'CPU-ms/req':>10} {'req/s/core':>11} {'wall s':>8} "
        f"{'peak RSS MB':>12}"
    )
    for name, m in results.items():
        per = m.cpu / counts[name] * 1000
        print(
            f"{name:32} {counts[name]:9,} {per:10.3f} {1000 / per:11,.0f} {m.wall:8.1f} "
            f"{m.max_rss_mb:12.1f}"
        )
    base = results.get("AsyncOpenAI + semaphore")
    if base is not None:
        for name, m in results.items():
            if name != "AsyncOpenAI + semaphore":
                ratio = (base.cpu / args.baseline_n) / (m.cpu / args.n)
                print(f"ratio: hand-written CPU per request / {name} = {ratio:.2f}x")
    for name, m in results.items():
        if name.startswith("openbatch"):
            print(f"target check: {name} {m.cpu / args.n * 1000:.3f} CPU-ms/req (target ≤ 0.200)")


if __name__ == "__main__":
    main()
