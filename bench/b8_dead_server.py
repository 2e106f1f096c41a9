"""B8 one dead server among the `--base-url`s.

N lines against one live simulator alone, then against the live one plus a dead URL
(nothing listens there: connection refused), at default attempts and at `--max-attempts 2`.
Printed: failed lines (target 0), and throughput relative to the live server alone (target
close to 1: the dead server is ejected after a few requests and probed in the background).

    python -m bench.b8_dead_server [--n 2000]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

from bench.common import count_lines, error_codes, measure, openbatch_argv, write_chat_input


def _dead_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--service-time", type=float, default=0.02)
    args = parser.parse_args()

    from tests.fixtures.model_sim import start_model_sim

    print(f"B8: N={args.n:,}, live simulator {args.slots} slots x {args.service_time}s")
    dead = _dead_url()
    cases: list[tuple[str, bool, list[str]]] = [  # (name, with the dead URL first, options)
        ("live only", False, []),
        ("dead + live", True, []),
        ("dead + live, --max-attempts 2", True, ["--max-attempts", "2"]),
    ]
    alone: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_chat_input(work / "in.jsonl", args.n)
        for i, (name, with_dead, extra) in enumerate(cases):
            sim = start_model_sim(slots=args.slots, service_time=args.service_time)
            urls = [dead, sim.base_url] if with_dead else [sim.base_url]
            out, err = work / f"out-{i}.jsonl", work / f"err-{i}.jsonl"
            argv = ["run", str(work / "in.jsonl"), "--output", str(out), "--errors", str(err)]
            for url in urls:
                argv += ["--base-url", url]
            m = measure(openbatch_argv(*argv, "--progress", "none", *extra))
            served = sim.stats()["requests"]
            sim.stop()
            if m.returncode != 0:
                sys.exit(f"runner failed ({m.returncode}): {m.stderr[-2000:]}")
            rate = args.n / m.wall
            if alone is None:
                alone = rate
            print(
                f"{name:31} failed {count_lines(err):4} {error_codes(err) or ''}  "
                f"{rate:6.0f} lines/s = {rate / alone:.2f}x live alone  "
                f"live server saw {served} requests  peak RSS {m.max_rss_mb:.0f} MB"
            )


if __name__ == "__main__":
    main()
