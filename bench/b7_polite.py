"""B7b polite batch: a batch beside interactive traffic on one continuous-batching server.

The simulator runs in continuous mode (`openbatch sim --mode continuous`): S slots shared
by every request, a FIFO queue in front, and a service time of L seconds at idle that
grows to L * (1 + k * n / S) with n requests running. Its capacity, every slot busy, is
C = S / (L * (1 + k)). Interactive load (`openbatch_sim.load`: open-loop Poisson chat
requests) arrives at a share of C (50 %); spare = C - interactive rate.

One run measures interactive p50/p99 latency (a) alone, (b) beside a batch at a large fixed
window, (c) beside `--adaptive`, (d) beside `--polite`, and each batch's throughput as a
share of the spare capacity; targets for (d): p99 within +20 % of (a), share >= 0.8. A
second case gives a polite batch a `--deadline` too close for the spare capacity: it should
still complete every line on time. Rows whose flag this build's `openbatch run` lacks print
"polite: not available in this build".

Latency is the whole request (the simulator does not stream); "queue p99" is the time the
interactive requests waited for a slot, the part of a time to first token that a batch adds.

    python -m bench.b7_polite [--slots 16] [--service-time 0.1] [--n 1000]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import (
    RunFiles,
    count_lines,
    error_codes,
    measure,
    run_argv,
    run_supports,
    write_chat_input,
)
from openbatch.runner_args import format_deadline
from openbatch_sim.continuous import capacity
from openbatch_sim.load import BackgroundLoad, InteractiveLoad, Summary, summarize

if TYPE_CHECKING:
    from tests.fixtures.model_sim import SimHandle

BATCH_MODEL = "bench"  # write_chat_input's model; the interactive load asks for another
POLITE_FLAG = "--polite"
POLITE_OPTIONS = [POLITE_FLAG]  # the runner finds /metrics from the base URL
NOT_AVAILABLE = "polite: not available in this build"
WARMUP = 1.0  # seconds of interactive load before a batch starts
# llm-d batch gateway, issue 491: batch beside interactive traffic on vLLM.
LLMD = "llm-d batch gateway (issue 491): batch 3.86 req/s, interactive p99 TTFT 82 -> 488 ms"


@dataclass
class QueueWatch:
    """What the benchmark sees of the server while a batch runs (polled every 50 ms)."""

    first_batch_request: float = math.nan  # load clock
    end: float = math.nan
    waiting: list[int] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)  # the server's 200s, at each poll

    @property
    def served_rate(self) -> float:
        """Answers per second, batch and interactive, between the first and last poll."""
        span = self.end - self.first_batch_request
        return (self.answered[-1] - self.answered[0]) / span if len(self.answered) > 1 else 0.0

    @property
    def mean_waiting(self) -> float:
        return sum(self.waiting) / len(self.waiting) if self.waiting else math.nan


@dataclass
class Case:
    name: str
    interactive: Summary
    batch_lines: int = 0
    completed: int = 0
    batch_rate: float = math.nan  # completed lines per second while the batch ran
    wall: float = math.nan
    rss_mb: float = math.nan
    queue: QueueWatch | None = None
    errors: dict[str, int] = field(default_factory=dict)


def running(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the child still runs, without reaping it (`measure` reaps it with wait4)."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def start_sim(args: argparse.Namespace) -> SimHandle:
    from tests.fixtures.model_sim import start_model_sim

    return start_model_sim(
        mode="continuous",
        slots=args.slots,
        service_time=args.service_time,
        occupancy_slowdown=args.slowdown,
    )


def alone(args: argparse.Namespace, rate: float) -> Case:
    sim = start_sim(args)
    try:
        background = BackgroundLoad(InteractiveLoad(sim.base_url, rate, seed=args.seed)).start()
        time.sleep(WARMUP + args.alone_seconds)
        samples = background.stop()
    finally:
        sim.stop()
    return Case("(a) interactive alone", summarize(samples, WARMUP, WARMUP + args.alone_seconds))


def beside_batch(
    name: str,
    args: argparse.Namespace,
    *,
    rate: float,
    work: Path,
    input_path: Path,
    lines: int,
    options: list[str],
) -> Case:
    sim = start_sim(args)
    files = RunFiles.in_dir(work, name)
    watch = QueueWatch()
    try:
        background = BackgroundLoad(InteractiveLoad(sim.base_url, rate, seed=args.seed)).start()
        time.sleep(WARMUP)

        def during(proc: subprocess.Popen[bytes]) -> None:
            while running(proc):
                stats = sim.stats()
                if stats["by_model"].get(BATCH_MODEL, 0) > 0:
                    if math.isnan(watch.first_batch_request):
                        watch.first_batch_request = background.now()
                    watch.waiting.append(stats["waiting"])
                    watch.answered.append(stats["by_status"].get("200", 0))
                time.sleep(0.05)
            watch.end = background.now()

        m = measure(run_argv(input_path, sim.base_url, files, *options), during=during)
        samples = background.stop()
    finally:
        sim.stop()
    if m.returncode != 0:
        sys.exit(f"{name}: runner failed ({m.returncode}): {m.stderr[-2000:]}")
    completed = count_lines(files.output)
    span = watch.end - watch.first_batch_request
    return Case(
        name,
        summarize(samples, watch.first_batch_request, watch.end),
        batch_lines=lines,
        completed=completed,
        batch_rate=completed / span if span > 0 else math.nan,
        wall=m.wall,
        rss_mb=m.max_rss_mb,
        queue=watch,
        errors=error_codes(files.errors),
    )


def ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


def row(case: Case, base: Summary, spare: float) -> str:
    s = case.interactive
    vs = "—" if s is base else f"{(s.p99 / base.p99 - 1) * 100:+.0f} %"
    if case.queue is None:
        batch = "— | — | —"
    else:
        batch = (
            f"{case.batch_rate:.1f} | {case.batch_rate / spare:.2f} | "
            f"{case.queue.mean_waiting:.1f} / {max(case.queue.waiting, default=0)}"
        )
    rss = "—" if math.isnan(case.rss_mb) else f"{case.rss_mb:.0f} MB"
    return (
        f"| {case.name} | {ms(s.p50)} | {ms(s.p99)} | {vs} | {ms(s.queue_p99)} | {batch} | {rss} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--service-time", type=float, default=0.1)
    parser.add_argument("--slowdown", type=float, default=0.5, help="--occupancy-slowdown")
    parser.add_argument("--load", type=float, default=0.5, help="interactive share of capacity")
    parser.add_argument("--n", type=int, default=1000, help="batch lines per case")
    parser.add_argument("--window", type=int, default=256, help="the fixed window of (b)")
    parser.add_argument("--alone-seconds", type=float, default=15.0)
    parser.add_argument("--deadline-n", type=int, default=800)
    parser.add_argument(
        "--deadline-seconds",
        type=float,
        default=10.0,
        help="completion window of the deadline case (should be shorter than N / spare)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    c = capacity(args.slots, args.service_time, args.slowdown)
    rate = args.load * c
    spare = c - rate
    polite = run_supports(POLITE_FLAG)
    print(
        f"B7b polite: simulator continuous, S={args.slots} slots, L={args.service_time}s, "
        f"k={args.slowdown}: capacity S/(L(1+k)) = {c:.1f} req/s; interactive "
        f"{rate:.1f} req/s ({args.load:.0%}); spare {spare:.1f} req/s; batch N={args.n:,}"
    )
    header = (
        "| case | interactive p50 | p99 | p99 vs (a) | queue p99 | batch req/s | "
        "share of spare | server queue mean / max | runner peak RSS |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    cases: list[Case] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_chat_input(work / "in.jsonl", args.n)
        write_chat_input(work / "deadline.jsonl", args.deadline_n)
        base = alone(args, rate)
        cases.append(base)
        print(f"  {base.name}: p50 {ms(base.interactive.p50)} p99 {ms(base.interactive.p99)}")
        batches = [
            (f"(b) fixed window {args.window}", ["--concurrency", str(args.window)]),
            ("(c) --adaptive from 4", ["--adaptive", "--concurrency", "4"]),
        ]
        if polite:
            batches.append(("(d) --polite", POLITE_OPTIONS))
        for name, options in batches:
            case = beside_batch(
                name,
                args,
                rate=rate,
                work=work,
                input_path=work / "in.jsonl",
                lines=args.n,
                options=options,
            )
            cases.append(case)
            print(
                f"  {name}: p99 {ms(case.interactive.p99)}, batch {case.batch_rate:.1f} req/s, "
                f"{case.completed}/{case.batch_lines} lines in {case.wall:.1f}s"
            )
        deadline_case: Case | None = None
        if polite:
            deadline = datetime.now(UTC) + timedelta(seconds=args.deadline_seconds)
            deadline_case = beside_batch(
                "deadline",
                args,
                rate=rate,
                work=work,
                input_path=work / "deadline.jsonl",
                lines=args.deadline_n,
                options=[*POLITE_OPTIONS, "--deadline", format_deadline(deadline)],
            )

    print()
    print(header)
    for case in cases:
        print(row(case, base.interactive, spare))
    if not polite:
        print(f"| (d) --polite | {NOT_AVAILABLE} |")
    print(f"| {LLMD} (+495 %) |")

    saturated = cases[1].queue
    if saturated is not None:
        print(
            f"\nmeasured capacity: {saturated.served_rate:.1f} req/s answered while (b) kept "
            f"the server saturated (computed {c:.1f}); interactive arrivals in (a): "
            f"{base.interactive.rate:.1f} req/s. A share above 1 is capacity taken from "
            "interactive requests (their backlog grew)."
        )
    if polite:
        d = cases[-1]
        p99_ok = d.interactive.p99 <= 1.2 * base.interactive.p99
        share_ok = d.batch_rate / spare >= 0.8
        print(
            f"targets (d): p99 within +20 % of (a): {'met' if p99_ok else 'missed'}; "
            f"share of spare >= 0.80: {'met' if share_ok else 'missed'}"
        )
    polite_time = args.deadline_n / spare
    print(
        f"\ndeadline case: {args.deadline_n} lines, window {args.deadline_seconds:g}s "
        f"(the whole spare capacity would need {polite_time:.1f}s)"
    )
    if deadline_case is None:
        print(f"  {NOT_AVAILABLE}")
    else:
        expired = deadline_case.errors.get("batch_expired", 0)
        on_time = deadline_case.completed == args.deadline_n and expired == 0
        print(
            f"  completed {deadline_case.completed}/{args.deadline_n}, expired {expired}, "
            f"other errors {sum(deadline_case.errors.values()) - expired}, wall "
            f"{deadline_case.wall:.1f}s, batch {deadline_case.batch_rate:.1f} req/s, "
            f"interactive p99 {ms(deadline_case.interactive.p99)}: "
            f"{'on time' if on_time else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
