"""B7 model-server outage: a server stopped and restarted on the same port mid-run.

N lines at default options (64 in flight, 5 attempts) against one simulator; after a
quarter of the requests the simulator is stopped for T seconds and restarted on the same
port. Printed per outage length: failed lines (target 0), wall time and wall time minus
the fault-free run's, which should be about T (the batch waits, then goes on).

    python -m bench.b7_outage [--n 5000] [--outages 0,5,20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import count_lines, error_codes, measure, openbatch_argv, write_chat_input


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--service-time", type=float, default=0.02)
    parser.add_argument("--outages", default="0,5,20", help="outage lengths in seconds")
    args = parser.parse_args()

    from tests.fixtures.model_sim import SimHandle, start_model_sim

    options = {"slots": args.slots, "service_time": args.service_time}
    print(f"B7: N={args.n:,}, simulator {args.slots} slots x {args.service_time}s, defaults")
    baseline: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_chat_input(work / "in.jsonl", args.n)
        for outage in (float(t) for t in args.outages.split(",")):
            holder: dict[str, SimHandle] = {"sim": start_model_sim(**options)}
            port = holder["sim"].port
            out, err = work / f"out-{outage:g}.jsonl", work / f"err-{outage:g}.jsonl"

            def during(
                proc: subprocess.Popen[bytes],
                outage: float = outage,
                holder: dict[str, SimHandle] = holder,
                port: int = port,
            ) -> None:
                if outage <= 0:
                    return
                sim = holder["sim"]
                while proc.poll() is None and sim.stats()["requests"] < args.n // 4:
                    time.sleep(0.05)
                sim.stop()
                time.sleep(outage)
                holder["sim"] = start_model_sim(port=port, **options)

            m = measure(
                openbatch_argv(
                    "run",
                    str(work / "in.jsonl"),
                    "--base-url",
                    holder["sim"].base_url,
                    *["--output", str(out), "--errors", str(err), "--progress", "none"],
                ),
                during=during,
            )
            holder["sim"].stop()
            if m.returncode != 0:
                sys.exit(f"runner failed ({m.returncode}): {m.stderr[-2000:]}")
            if baseline is None:
                baseline = m.wall
            failed = count_lines(err)
            print(
                f"outage {outage:4.0f}s  completed {count_lines(out):5}  failed {failed:3} "
                f"{error_codes(err) or ''}  wall {m.wall:5.1f}s  "
                f"extra vs no outage {m.wall - baseline:5.1f}s  peak RSS {m.max_rss_mb:.0f} MB"
            )


if __name__ == "__main__":
    main()
