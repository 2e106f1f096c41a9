"""B2 efficiency: achieved time against the capacity limit N·L/C.

The simulator has C slots and a service time of L seconds; no client can finish N requests
faster than N·L/C. The ratio limit / achieved (whole `openbatch run` process, validation and
finalize included) says how much of the server's capacity the runner used. Target ≥ 0.97.

    python bench/b2_efficiency.py [--n 100000] [--slots 32] [--service-time 0.05]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import measure, openbatch_argv, write_chat_input


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--service-time", type=float, default=0.05)
    parser.add_argument("--modes", default="fixed,adaptive")
    args = parser.parse_args()

    from tests.fixtures.model_sim import start_model_sim

    limit = args.n * args.service_time / args.slots
    print(f"B2: N={args.n:,} C={args.slots} L={args.service_time}s -> limit N*L/C = {limit:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_chat_input(work / "in.jsonl", args.n)
        for mode in args.modes.split(","):
            sim = start_model_sim(slots=args.slots, service_time=args.service_time)
            extra = (
                ["--concurrency", str(args.slots * 2)]
                if mode == "fixed"
                else ["--adaptive", "--concurrency", "4", "--max-concurrency", "1024"]
            )
            m = measure(
                openbatch_argv(
                    "run",
                    str(work / "in.jsonl"),
                    "--base-url",
                    sim.base_url,
                    "--output",
                    str(work / f"out-{mode}.jsonl"),
                    "--progress",
                    "none",
                    "--max-lines",
                    str(max(args.n, 50_000)),
                    *extra,
                )
            )
            stats = sim.stats()
            sim.stop()
            if m.returncode != 0:
                sys.exit(f"runner failed: {m.stderr[-2000:]}")
            # The simulator's own slot-seconds: on a busy machine its sleeps overrun L, which
            # is simulator overhead, not runner inefficiency; report both views.
            served = stats["busy_seconds"] / args.slots
            print(
                f"{mode:9} achieved {m.wall:7.1f}s  limit/achieved = {limit / m.wall:.3f}  "
                f"(server-busy limit {served:.1f}s -> {served / m.wall:.3f})  "
                f"peak in flight at server {stats['max_in_flight']}  "
                f"runner CPU {m.cpu:.1f}s  peak RSS {m.max_rss_mb:.0f} MB"
            )


if __name__ == "__main__":
    main()
