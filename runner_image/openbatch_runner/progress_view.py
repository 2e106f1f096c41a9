"""What a person watching the runner sees: a bar on a terminal, log lines elsewhere."""

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from openbatch.runner_args import ProgressMode

BAR_WIDTH = 24


@dataclass
class Snapshot:
    total: int
    completed: int
    failed: int
    in_flight: int
    window: int


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def render_bar(snap: Snapshot, rate: float) -> str:
    done = snap.completed + snap.failed
    frac = done / snap.total if snap.total else 1.0
    filled = int(frac * BAR_WIDTH)
    eta = format_duration((snap.total - done) / rate) if rate > 0 else "?"
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {frac * 100:5.1f}% "
        f"{done:,}/{snap.total:,} ok {snap.completed:,} failed {snap.failed:,} "
        f"| {rate:,.0f} req/s | in flight {snap.in_flight}/{snap.window} | ETA {eta}"
    )


def render_log(snap: Snapshot, rate: float) -> str:
    done = snap.completed + snap.failed
    pct = done / snap.total * 100 if snap.total else 100.0
    eta = f"{(snap.total - done) / rate:.0f}s" if rate > 0 else "?"
    return (
        f"openbatch: progress {done}/{snap.total} ({pct:.1f}%) completed={snap.completed} "
        f"failed={snap.failed} rate={rate:.1f}/s in_flight={snap.in_flight} "
        f"window={snap.window} eta={eta}"
    )


class ProgressView:
    def __init__(self, mode: ProgressMode, log_interval: float, stream: TextIO | None = None):
        self._stream = stream or sys.stderr
        if mode is ProgressMode.AUTO:
            mode = ProgressMode.BAR if self._stream.isatty() else ProgressMode.LOG
        self.mode = mode
        self.interval = 0.5 if mode is ProgressMode.BAR else log_interval
        self._start = time.monotonic()
        self._base_done: int | None = None  # lines done before this process (resume)
        self._drawn = False

    def update(self, snap: Snapshot) -> None:
        if self.mode is ProgressMode.NONE:
            return
        done = snap.completed + snap.failed
        if self._base_done is None:
            self._base_done = done
        elapsed = time.monotonic() - self._start
        rate = (done - self._base_done) / elapsed if elapsed > 0 else 0.0
        if self.mode is ProgressMode.BAR:
            self._stream.write("\r\x1b[2K" + render_bar(snap, rate))
            self._drawn = True
        else:
            self._stream.write(render_log(snap, rate) + "\n")
        self._stream.flush()

    def message(self, text: str) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._drawn = False
        self._stream.write(f"openbatch: {text}\n")
        self._stream.flush()
