"""B9 adaptive window: random (load-independent) errors versus real overload.

1. Random errors: a simulator with C slots and service time L answers 30 % of requests 429
   (Retry-After 0.05 s) and 10 % 500 at random. Throughput of fixed windows and of
   `--adaptive` (starting at 4); target: adaptive ≥ 0.8x the best fixed window.
2. Real overload: the same server without random errors, but a request that finds all C
   slots busy gets a 429 at once (no queue). Printed: throughput and the 429s each mode
   caused (work the server spent turning requests away); adaptive should back off to
   about C instead of flooding the server like a large fixed window.

    python -m bench.b9_adaptive [--n 1500] [--slots 16] [--service-time 0.05]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import RunFiles, count_lines, measure, run_argv, write_chat_input


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--service-time", type=float, default=0.05)
    args = parser.parse_args()

    from tests.fixtures.model_sim import start_model_sim

    c = args.slots
    noise = {"p_429": 0.3, "p_500": 0.1, "retry_after": 0.05, "seed": 3}
    overload = {"max_waiting": 0, "retry_after": 0.05}
    modes: list[tuple[str, list[str]]] = [
        *((f"fixed {w}", ["--concurrency", str(w)]) for w in (c // 2, c, 2 * c, 8 * c)),
        ("adaptive", ["--adaptive", "--concurrency", "4"]),
    ]
    print(f"B9: N={args.n:,} C={c} L={args.service_time}s, --max-attempts 20")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_chat_input(work / "in.jsonl", args.n)
        for case, options in (("random errors", noise), ("real overload", overload)):
            rates: dict[str, float] = {}
            for name, extra in modes:
                sim = start_model_sim(slots=c, service_time=args.service_time, **options)
                files = RunFiles.in_dir(work, f"{case}-{name}")
                out, err = files.output, files.errors
                m = measure(
                    run_argv(work / "in.jsonl", sim.base_url, files, "--max-attempts", "20", *extra)
                )
                stats = sim.stats()
                sim.stop()
                if m.returncode != 0:
                    sys.exit(f"runner failed ({m.returncode}): {m.stderr[-2000:]}")
                rates[name] = count_lines(out) / m.wall
                best = max(v for k, v in rates.items() if k != "adaptive")
                print(
                    f"{case:13} {name:9} {rates[name]:6.1f} lines/s  "
                    f"({rates[name] / best:.2f}x best fixed so far)  "
                    f"429s {stats['by_status'].get('429', 0):5}  "
                    f"peak in flight {stats['max_in_flight']:4}  failed {count_lines(err)}"
                )


if __name__ == "__main__":
    main()
