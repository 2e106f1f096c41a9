"""B3 memory: peak RSS of the runner on ~1 KB lines, for growing N (target ≤ 150 MB, flat).

python bench/b3_memory.py [--sizes 100000,1000000] [--line-bytes 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import measure, openbatch_argv, write_chat_input


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--line-bytes", type=int, default=1000)
    parser.add_argument("--dir", default=None, help="scratch dir (needs ~2.5x the input size)")
    args = parser.parse_args()

    from tests.fixtures.model_sim import start_model_sim

    sim = start_model_sim(slots=1024)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        for n in (int(s) for s in args.sizes.split(",")):
            size = write_chat_input(work / "in.jsonl", n, content_bytes=args.line_bytes - 130)
            m = measure(
                openbatch_argv(
                    "run",
                    str(work / "in.jsonl"),
                    "--base-url",
                    sim.base_url,
                    "--output",
                    str(work / f"out-{n}.jsonl"),
                    "--progress",
                    "none",
                    "--max-lines",
                    str(n),
                    "--max-bytes",
                    str(size + 1),
                    "--concurrency",
                    "64",
                )
            )
            if m.returncode != 0:
                sys.exit(f"runner failed: {m.stderr[-2000:]}")
            rows.append((n, size, m))
            print(
                f"N={n:>9,}  input {size / 1e6:8.1f} MB  peak RSS {m.max_rss_mb:6.1f} MB  "
                f"wall {m.wall:6.1f}s  CPU {m.cpu:6.1f}s",
                flush=True,
            )
            for p in work.glob("out-*"):
                if p.is_file():
                    p.unlink()
    sim.stop()
    if len(rows) > 1:
        (n0, _, a), (n1, _, b) = rows[0], rows[-1]
        print(
            f"peak RSS ratio N={n1:,} / N={n0:,}: {b.max_rss_mb / a.max_rss_mb:.2f} "
            f"(N grew {n1 / n0:.0f}x); target ≤ 150 MB and flat"
        )


if __name__ == "__main__":
    main()
