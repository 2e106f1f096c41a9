"""B10 faults: what 429s, 500s and hung requests cost in wall time.

N lines against a simulator with C slots and service time L, window W,
`--request-timeout 2 --max-attempts 12`, first fault-free, then (same run of this script)
with 10 % 429 (Retry-After 0.05 s) + 5 % 500 + 1 % hung requests. The extra server work of
the faults is ~16 %; printed is faulty / fault-free wall time (target ≤ 1.3).

    python -m bench.b10_faults [--n 20000] [--slots 64] [--service-time 0.05] [--window 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import RunFiles, count_lines, measure, run_argv, write_chat_input


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--service-time", type=float, default=0.05)
    parser.add_argument("--window", type=int, default=128)
    args = parser.parse_args()

    from tests.fixtures.model_sim import start_model_sim

    limit = args.n * args.service_time / args.slots
    print(
        f"B10: N={args.n:,} C={args.slots} L={args.service_time}s W={args.window} "
        f"(capacity limit N*L/C = {limit:.1f}s)"
    )
    faults = {"p_429": 0.10, "retry_after": 0.05, "p_500": 0.05, "p_hang": 0.01}
    clean: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_chat_input(work / "in.jsonl", args.n)
        for name, options in (("fault-free", {}), ("faults", faults)):
            sim = start_model_sim(
                slots=args.slots, service_time=args.service_time, hang_seconds=30, **options
            )
            files = RunFiles.in_dir(work, name)
            err = files.errors
            m = measure(
                run_argv(
                    work / "in.jsonl",
                    sim.base_url,
                    files,
                    *["--concurrency", str(args.window), "--request-timeout", "2"],
                    *["--max-attempts", "12"],
                )
            )
            stats = sim.stats()
            sim.stop()
            if m.returncode != 0:
                sys.exit(f"runner failed ({m.returncode}): {m.stderr[-2000:]}")
            clean = clean or m.wall
            served = stats["busy_seconds"] / args.slots
            print(
                f"{name:10} wall {m.wall:5.1f}s = {m.wall / clean:.2f}x fault-free  "
                f"requests {stats['requests']:6} (hung {stats['hung']})  "
                f"failed {count_lines(err)}  server-busy limit {served:.1f}s  "
                f"runner CPU {m.cpu:.1f}s  peak RSS {m.max_rss_mb:.0f} MB"
            )


if __name__ == "__main__":
    main()
