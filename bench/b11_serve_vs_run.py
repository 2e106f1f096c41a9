"""B11: one batch through `openbatch serve` vs `openbatch run` of the same file.

Same 10,000-line file, same simulator, same run. Through the shim the clock covers what a
user waits for: upload → create → poll until completed → download of the output (the
official `openai` client, polling every 0.1 s). `openbatch run` is timed as a process,
start-up included. Target: serve ≤ 1.1× run.

    python -m bench.b11_serve_vs_run [--n 10000] [--slots 64] [--service-time 0.05]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import measure, openbatch_argv, write_chat_input

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--service-time", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each")
    args = parser.parse_args()

    import openai

    from tests.fixtures.model_sim import start_model_sim
    from tests.fixtures.shim import start_serve

    sim = start_model_sim(slots=args.slots, service_time=args.service_time)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "in.jsonl"
        size = write_chat_input(path, args.n, model="bench")
        limit = args.n * args.service_time / args.slots
        print(
            f"B11: {args.n:,} chat lines ({size / 1e6:.1f} MB), simulator {args.slots} slots × "
            f"{args.service_time} s (capacity limit {limit:.1f} s)"
        )
        serve = start_serve(tmp / "serve", models={"bench": sim.base_url})
        client = openai.OpenAI(base_url=serve.base_url, api_key="bench", max_retries=0)
        run_walls: list[float] = []
        serve_walls: list[float] = []
        try:
            for round_ in range(args.rounds):
                m = measure(
                    openbatch_argv(
                        "run",
                        str(path),
                        "--base-url",
                        sim.base_url,
                        "--output",
                        str(tmp / f"run-{round_}.jsonl"),
                        "--progress",
                        "none",
                    )
                )
                if m.returncode != 0:
                    raise SystemExit(f"openbatch run failed: {m.stderr[-2000:]}")
                run_walls.append(m.wall)

                started = time.monotonic()
                with path.open("rb") as f:
                    uploaded = client.files.create(file=f, purpose="batch")
                batch = client.batches.create(
                    input_file_id=uploaded.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )
                while batch.status not in TERMINAL:
                    time.sleep(0.1)
                    batch = client.batches.retrieve(batch.id)
                assert batch.status == "completed" and batch.output_file_id, batch
                with (
                    client.files.with_streaming_response.content(batch.output_file_id) as r,
                    (tmp / f"serve-{round_}.jsonl").open("wb") as out,
                ):
                    for chunk in r.iter_bytes(1 << 20):
                        out.write(chunk)
                serve_walls.append(time.monotonic() - started)
                lines = (tmp / f"serve-{round_}.jsonl").read_bytes().count(b"\n")
                print(
                    f"  round {round_ + 1}: run {run_walls[-1]:.2f} s, serve "
                    f"{serve_walls[-1]:.2f} s ({lines:,} output lines; run peak RSS "
                    f"{m.max_rss_mb:.1f} MB)"
                )
        finally:
            serve.stop()
            sim.stop()
    best_run, best_serve = min(run_walls), min(serve_walls)
    print("| path | best wall | vs limit |\n|---|---|---|")
    print(f"| `openbatch run` | {best_run:.2f} s | {limit / best_run:.3f} |")
    print(
        f"| `openbatch serve` (upload → completed → download) | {best_serve:.2f} s | "
        f"{limit / best_serve:.3f} |"
    )
    print(f"serve / run = {best_serve / best_run:.3f} (target ≤ 1.1)")


if __name__ == "__main__":
    main()
