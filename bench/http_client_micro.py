"""Benchmark B1 input: CPU per request of each model-server client, alone and in the runner.

1. Micro: for each client, a child process sends N POSTs (64 concurrent, under uvloop like
   the runner) to a zero-latency simulator and reports its own CPU time (user+sys from
   getrusage(RUSAGE_SELF) around the measured phase, after a warm-up) per request.
2. Whole runner: `openbatch run` on generated chat lines with `--http-client raw` and
   `--http-client aiohttp`; CPU from getrusage(RUSAGE_CHILDREN) deltas around each run, so
   it includes start-up, reading the input, writing parts and finalizing.

Prints numbers; asserts nothing (the simulator shares the machine, so only ratios within
one run are meaningful). Usage:
    .venv/bin/python bench/http_client_micro.py [--requests 30000] [--lines 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # `tests.*` helpers start the simulator and build input

CLIENTS = ("raw", "aiohttp")
BODY = (
    b'{"model":"bench","messages":[{"role":"user","content":"say hello to number 7"}],'
    b'"max_tokens":4}'
)


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


# ---- child: one client, measured from inside ---------------------------------------------


async def _drive(kind: str, url: str, requests: int, concurrency: int, warmup: int) -> None:
    from openbatch.runner_args import HttpClientKind
    from openbatch_runner.client import make_client
    from openbatch_runner.retry import AttemptKind

    client = make_client(
        HttpClientKind(kind), request_timeout=60.0, api_key=None, max_connections=2 * concurrency
    )
    failures = 0

    async def worker(count: int) -> None:
        nonlocal failures
        for _ in range(count):
            reply = await client.post(url, BODY)
            if reply.kind is not AttemptKind.OK:
                failures += 1

    async def run(total: int) -> None:
        share, extra = divmod(total, concurrency)
        await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))

    await run(warmup)  # connections opened, code paths warm: not what B1 is about
    failures = 0
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await run(requests)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    await client.close()
    result = {
        "client": kind,
        "requests": requests,
        "failures": failures,
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
    }
    print(json.dumps(result), flush=True)


def child_main(args: argparse.Namespace) -> None:
    import uvloop

    uvloop.run(_drive(args.child, args.url, args.requests, args.concurrency, args.warmup))


# ---- parent --------------------------------------------------------------------------------


def micro(url: str, kind: str, requests: int, concurrency: int) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--url",
        url,
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
    ]
    done = subprocess.run(
        argv, cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def whole_runner(base_url: str, kind: str, input_path: Path, work: Path) -> dict[str, float]:
    out_dir = work / kind
    out_dir.mkdir(parents=True)
    argv = [
        str(Path(sys.executable).parent / "openbatch"),
        "run",
        str(input_path),
        "--base-url",
        base_url,
        "--output",
        str(out_dir / "out.jsonl"),
        "--progress",
        "none",
        "--http-client",
        kind,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"openbatch run ({kind}) exited {done.returncode}:\n{done.stderr}")
    with (out_dir / "out.jsonl").open("rb") as f:
        lines = sum(1 for _ in f)
    return {"wall": wall, "cpu": _cpu_seconds(after) - _cpu_seconds(before), "lines": lines}


def parent_main(args: argparse.Namespace) -> None:
    from tests.fixtures.model_sim import start_model_sim
    from tests.runner_support import chat_line, jsonl

    sim = start_model_sim(slots=64)
    try:
        url = sim.base_url + "/chat/completions"
        print(
            f"micro: {args.requests} POSTs per client, {args.concurrency} concurrent, uvloop, "
            f"zero-latency simulator (slots=64)"
        )
        for _ in range(args.repeat):
            for kind in CLIENTS:
                r = micro(url, kind, args.requests, args.concurrency)
                cpu = r["user"] + r["sys"]
                print(
                    f"  {kind:8s} {cpu / r['requests'] * 1e6:7.1f} CPU-us/request "
                    f"(user {r['user']:.2f}s sys {r['sys']:.2f}s)  "
                    f"{r['requests'] / r['wall']:8.0f} req/s  failures {r['failures']}"
                )
        if args.lines <= 0:
            return
        with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
            work = Path(tmp)
            input_path = work / "input.jsonl"
            input_path.write_bytes(jsonl(chat_line(i) for i in range(args.lines)))
            print(f"whole runner: openbatch run, {args.lines} chat lines, default concurrency")
            for round_ in range(args.repeat):
                for kind in CLIENTS:
                    r2 = whole_runner(sim.base_url, kind, input_path, work / f"r{round_}")
                    print(
                        f"  {kind:8s} {r2['cpu'] / args.lines * 1e6:7.1f} CPU-us/line "
                        f"(cpu {r2['cpu']:.2f}s, wall {r2['wall']:.2f}s, "
                        f"{args.lines / r2['wall']:6.0f} lines/s, {r2['lines']:.0f} output lines)"
                    )
    finally:
        sim.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=30_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--lines", type=int, default=20_000, help="whole-runner lines (0: skip)")
    p.add_argument("--repeat", type=int, default=1, help="rounds (interleaved clients)")
    p.add_argument("--warmup", type=int, default=2_000, help=argparse.SUPPRESS)
    p.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
