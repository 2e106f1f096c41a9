"""B7b polite batch: a batch beside interactive traffic on one continuous-batching server.

The simulator runs in continuous mode (`openbatch sim --mode continuous`): S slots shared
by every request, a FIFO queue in front, and a service time of L seconds at idle that
grows to L * (1 + k * n / S) with n requests running. Its capacity, every slot busy, is
C = S / (L * (1 + k)). The default server is shaped like a vLLM deployment (256 running
sequences, vLLM's default `--max-num-seqs`; 1.6 s requests); its capacity is 106.7 req/s.
Interactive load (`openbatch_sim.load`: open-loop Poisson chat requests, streamed, so
each has a time to first token) arrives at a share of C (50 %); spare = C - interactive.

One run measures interactive TTFT and latency p50/p99 (a) alone, (b) beside a batch at a
large fixed window, (c) beside `--adaptive`, (d) beside `--polite`, and each batch's
throughput as a share of the spare capacity, over the whole run and in its steady middle
(from 10 % to 90 % of its requests). Targets for (d): p99 within +20 % of (a), share
>= 0.8. Beside them, the same server in an event simulation with an *ideal* batch that
knows the occupancy at every instant (`bench.polite_ideal`): the best any controller can
do there. A second case gives a polite batch a `--deadline` too close for the spare
capacity (by default exactly the time the whole spare capacity would need): it should
still complete every line on time. Rows whose flag this build's `openbatch run` lacks print
"polite: not available in this build".

"queue p99" is the time the interactive requests waited for a slot (the simulator's
`x-sim-queue-seconds`), the part of a time to first token that a batch adds by queueing;
the rest of what it adds is the server's own slowdown as its batch fills.

    python -m bench.b7_polite [--slots 256] [--service-time 1.6] [--n 3000]
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
from bench.polite_ideal import Outcome, Server, best_within, frontier
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
    batch_seen: list[tuple[float, int]] = field(default_factory=list)  # (load clock, count)

    def steady_rate(self, lines: int) -> float:
        """Batch requests per second from the poll that saw 10 % of them to the one that
        saw 90 %: the rate without the ramp at the start and the drain at the end."""
        low = next((p for p in self.batch_seen if p[1] >= 0.1 * lines), None)
        high = next((p for p in self.batch_seen if p[1] >= 0.9 * lines), None)
        if low is None or high is None or high[0] <= low[0]:
            return math.nan
        return (high[1] - low[1]) / (high[0] - low[0])

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
    steady_rate: float = math.nan  # ... in its steady middle (`QueueWatch.steady_rate`)
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
        prefill_share=args.prefill_share,
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
                seen = stats["by_model"].get(BATCH_MODEL, 0)
                if seen > 0:
                    if math.isnan(watch.first_batch_request):
                        watch.first_batch_request = background.now()
                    watch.waiting.append(stats["waiting"])
                    watch.answered.append(stats["by_status"].get("200", 0))
                    watch.batch_seen.append((background.now(), seen))
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
        steady_rate=watch.steady_rate(lines),
        wall=m.wall,
        rss_mb=m.max_rss_mb,
        queue=watch,
        errors=error_codes(files.errors),
    )


def ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


def change(value: float, base: float, is_base: bool) -> str:
    return "—" if is_base else f"{(value / base - 1) * 100:+.0f} %"


def row(case: Case, base: Summary, spare: float) -> str:
    s = case.interactive
    alone = s is base
    latency = (
        f"{ms(s.ttft_p50)} | {ms(s.ttft_p99)} | {change(s.ttft_p99, base.ttft_p99, alone)} | "
        f"{ms(s.p50)} | {ms(s.p99)} | {change(s.p99, base.p99, alone)} | {ms(s.queue_p99)}"
    )
    if case.queue is None:
        batch = "— | — | — | —"
    else:
        batch = (
            f"{case.batch_rate:.1f} | {case.batch_rate / spare:.2f} | "
            f"{case.steady_rate / spare:.2f} | "
            f"{case.queue.mean_waiting:.1f} / {max(case.queue.waiting, default=0)}"
        )
    rss = "—" if math.isnan(case.rss_mb) else f"{case.rss_mb:.0f} MB"
    return f"| {case.name} | {latency} | {batch} | {rss} |"


def ideal_row(name: str, r: Outcome, alone: Outcome, spare: float) -> str:
    latency = (
        f"{ms(r.ttft_p50)} | {ms(r.ttft_p99)} | {change(r.ttft_p99, alone.ttft_p99, False)} | "
        f"{ms(r.p50)} | {ms(r.p99)} | {change(r.p99, alone.p99, False)} | —"
    )
    share = r.batch_rate / spare
    return f"| {name} | {latency} | {r.batch_rate:.1f} | {share:.2f} | {share:.2f} | 0 | — |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--service-time", type=float, default=1.6)
    parser.add_argument("--slowdown", type=float, default=0.5, help="--occupancy-slowdown")
    parser.add_argument("--prefill-share", type=float, default=0.1)
    parser.add_argument("--load", type=float, default=0.5, help="interactive share of capacity")
    parser.add_argument("--n", type=int, default=3000, help="batch lines per case")
    parser.add_argument("--window", type=int, default=256, help="the fixed window of (b)")
    parser.add_argument("--alone-seconds", type=float, default=15.0)
    parser.add_argument("--deadline-n", type=int, default=1600)
    parser.add_argument(
        "--deadline-seconds",
        type=float,
        default=None,
        help="completion window of the deadline case (default: the time the whole spare "
        "capacity would need, which politeness alone, leaving headroom, misses)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    c = capacity(args.slots, args.service_time, args.slowdown)
    rate = args.load * c
    spare = c - rate
    deadline_seconds = args.deadline_seconds or args.deadline_n / spare
    polite = run_supports(POLITE_FLAG)
    print(
        f"B7b polite: simulator continuous, S={args.slots} slots, L={args.service_time}s, "
        f"k={args.slowdown}, prefill share {args.prefill_share}: capacity S/(L(1+k)) = "
        f"{c:.1f} req/s; interactive {rate:.1f} req/s ({args.load:.0%}), streamed; spare "
        f"{spare:.1f} req/s; batch N={args.n:,}"
    )
    server = Server(args.slots, args.service_time, args.slowdown, args.prefill_share)
    ideal_alone, ideal_rows = frontier(server, rate, seed=args.seed)
    header = (
        "| case | TTFT p50 | TTFT p99 | vs (a) | latency p50 | p99 | vs (a) | queue p99 | "
        "batch req/s | share of spare | steady share | server queue mean / max | "
        "runner peak RSS |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    cases: list[Case] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_chat_input(work / "in.jsonl", args.n)
        write_chat_input(work / "deadline.jsonl", args.deadline_n)
        base = alone(args, rate)
        cases.append(base)
        print(
            f"  {base.name}: TTFT p99 {ms(base.interactive.ttft_p99)}, "
            f"p99 {ms(base.interactive.p99)}"
        )
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
                f"  {name}: TTFT p99 {ms(case.interactive.ttft_p99)}, p99 "
                f"{ms(case.interactive.p99)}, batch {case.batch_rate:.1f} req/s, "
                f"{case.completed}/{case.batch_lines} lines in {case.wall:.1f}s"
            )
        deadline_case: Case | None = None
        if polite:
            deadline = datetime.now(UTC) + timedelta(seconds=deadline_seconds)
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
    headroom = max(1, round(args.slots * 0.1))  # what --polite leaves free
    at_headroom = min(ideal_rows, key=lambda r: abs((r.headroom or 0) - headroom))
    print(
        ideal_row(
            f"ideal batch, {at_headroom.headroom} slots free (simulated)",
            at_headroom,
            ideal_alone,
            spare,
        )
    )
    best = best_within(ideal_alone, ideal_rows, 0.2)
    if best is not None:
        print(
            ideal_row(
                f"ideal batch, most within +20 % ({best.headroom} free, simulated)",
                best,
                ideal_alone,
                spare,
            )
        )
    print(f"| {LLMD} (+495 %) |")

    saturated = cases[1].queue
    if saturated is not None:
        print(
            f"\nmeasured capacity: {saturated.served_rate:.1f} req/s answered while (b) kept "
            f"the server saturated (computed {c:.1f}); interactive arrivals in (a): "
            f"{base.interactive.rate:.1f} req/s. A share above 1 is capacity taken from "
            "interactive requests (their backlog grew). Ideal rows: the same server in an "
            f"event simulation (alone: TTFT p99 {ms(ideal_alone.ttft_p99)}, p99 "
            f"{ms(ideal_alone.p99)}), a batch knowing the occupancy at every instant."
        )
    if best is None:
        print("the ideal batch cannot keep both p99s within +20 % on this server at any share")
    if polite:
        d = cases[-1].interactive
        b = base.interactive
        print(
            "targets (d): TTFT p99 within +20 % of (a): "
            f"{'met' if d.ttft_p99 <= 1.2 * b.ttft_p99 else 'missed'}; p99 within +20 %: "
            f"{'met' if d.p99 <= 1.2 * b.p99 else 'missed'}; share of spare >= 0.80: "
            f"whole run {'met' if cases[-1].batch_rate / spare >= 0.8 else 'missed'}, "
            f"steady {'met' if cases[-1].steady_rate / spare >= 0.8 else 'missed'}"
        )
    polite_time = args.deadline_n / spare
    print(
        f"\ndeadline case: {args.deadline_n} lines, window {deadline_seconds:.1f}s (the whole "
        f"spare capacity would need {polite_time:.1f}s)"
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
            f"interactive TTFT p99 {ms(deadline_case.interactive.ttft_p99)}, p99 "
            f"{ms(deadline_case.interactive.p99)}: {'on time' if on_time else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
