"""`openbatch submit`: one batch input file through any OpenAI-compatible Batch API.

Uploads the file and creates the batch with the official `openai` client (so it works the
same against `openbatch serve`, a shim on Kubernetes or OpenAI itself), then optionally
follows the batch to its end and downloads the output and error files. Progress goes to
stderr (a bar on a terminal, log lines otherwise); stdout gets only the batch id and the
downloaded paths, for scripts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    import openai
    from openai.types import Batch

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_ENDPOINT = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# An anonymous `openbatch serve` accepts any key; the client insists on one.
_PLACEHOLDER_KEY = "openbatch"
_LOG_EVERY = 10.0  # seconds between unchanged progress lines when stderr is not a terminal
_BAR_WIDTH = 30


class SubmitExit(IntEnum):
    OK = 0  # submitted (no --wait), or the batch completed
    BATCH_NOT_COMPLETED = 1  # --wait: the batch ended failed, expired or cancelled
    USAGE = 2  # bad options, input file missing or unreadable
    UNREACHABLE = 3  # the server could not be reached (or the connection was lost)
    REJECTED = 4  # the server answered with an error (shown)
    INTERRUPTED = 130  # Ctrl-C while waiting; the batch keeps running on the server


EPILOG = """exit codes:
  0    submitted (without --wait), or the batch completed
  1    with --wait: the batch ended failed, expired or cancelled (what it wrote is downloaded)
  2    usage error: bad options, or the input file is missing or unreadable
  3    the server could not be reached, or the connection was lost
  4    the server rejected a request (its error message is printed)
  130  interrupted while waiting: the batch keeps running on the server

The API key comes from $OPENAI_API_KEY; an anonymous `openbatch serve` accepts any value,
and a placeholder is sent when it is unset.
"""


class SubmitError(Exception):
    def __init__(self, message: str, code: SubmitExit) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openbatch submit",
        description="Upload a batch input file (JSONL) to an OpenAI-compatible Batch API, "
        "create the batch and, with --wait, follow it and download its output and error files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, metavar="INPUT.jsonl", help="the batch input file")
    p.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
        help=f"the API's base URL ($OPENAI_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    p.add_argument(
        "--endpoint",
        help="the batch's endpoint, e.g. /v1/embeddings (default: the url of the input's "
        f"first line, else {DEFAULT_ENDPOINT})",
    )
    p.add_argument("--completion-window", default="24h", help="the completion window (24h)")
    p.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a metadata pair for the batch; repeat for more",
    )
    p.add_argument(
        "--wait", action="store_true", help="follow the batch until it ends, then download"
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="where --wait downloads BATCH_output.jsonl and BATCH_error.jsonl (the current "
        "directory); implies --wait",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between status checks while waiting (2)",
    )
    return p


def first_line_url(path: Path) -> str | None:
    """The `url` of the first non-blank line, if it is a JSON object with one."""
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return None
            url = line.get("url") if isinstance(line, dict) else None
            return url if isinstance(url, str) else None
    return None


def parse_metadata(pairs: Sequence[str]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SubmitError(
                f"--metadata must look like KEY=VALUE, got {pair!r}", SubmitExit.USAGE
            )
        out[key] = value
    return out or None


# --------------------------------------------------------------------------- progress


@dataclass
class Snapshot:
    status: str
    total: int
    completed: int
    failed: int

    @classmethod
    def of(cls, batch: Batch) -> Snapshot:
        counts = batch.request_counts
        return cls(
            status=batch.status,
            total=counts.total if counts else 0,
            completed=counts.completed if counts else 0,
            failed=counts.failed if counts else 0,
        )

    def describe(self) -> str:
        return (
            f"{self.status}: {self.completed + self.failed}/{self.total} done, {self.failed} failed"
        )


class Progress:
    """A bar redrawn in place on a terminal; a line per change (at most every few seconds
    while nothing but the counts change) otherwise."""

    def __init__(self, stream: IO[str], batch_id: str) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._batch_id = batch_id
        self._started = time.monotonic()
        self._last: Snapshot | None = None
        self._last_line = 0.0

    def update(self, snap: Snapshot) -> None:
        now = time.monotonic()
        elapsed = int(now - self._started)
        clock = f"{elapsed // 60:02d}:{elapsed % 60:02d}"
        if self._tty:
            done = snap.completed + snap.failed
            filled = _BAR_WIDTH * done // snap.total if snap.total else 0
            bar = "#" * filled + "." * (_BAR_WIDTH - filled)
            self._stream.write(f"\r[{bar}] {snap.describe()}  {clock}\x1b[K")
        else:
            changed_status = self._last is None or snap.status != self._last.status
            if snap == self._last or (not changed_status and now - self._last_line < _LOG_EVERY):
                return
            self._stream.write(f"batch {self._batch_id} {snap.describe()} ({clock})\n")
            self._last_line = now
        self._last = snap
        self._stream.flush()

    def close(self) -> None:
        if self._tty and self._last is not None:
            self._stream.write("\n")
            self._stream.flush()


# --------------------------------------------------------------------------- the client


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return f"{exc.status_code}: {error['message']}"
    return f"{exc.status_code}: {exc.message}"


def _download(client: openai.OpenAI, file_id: str, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    with client.files.with_streaming_response.content(file_id) as response, partial.open("wb") as f:
        for chunk in response.iter_bytes(1024 * 1024):
            f.write(chunk)
    partial.replace(target)


def _wait(client: openai.OpenAI, batch: Batch, interval: float) -> Batch:
    progress = Progress(sys.stderr, batch.id)
    try:
        while True:
            progress.update(Snapshot.of(batch))
            if batch.status in TERMINAL:
                return batch
            time.sleep(interval)
            batch = client.batches.retrieve(batch.id)
    finally:
        progress.close()


def submit(args: argparse.Namespace) -> SubmitExit:
    import openai

    path: Path = args.input
    if not path.is_file():
        raise SubmitError(f"{path}: no such file", SubmitExit.USAGE)
    try:
        endpoint = args.endpoint or first_line_url(path) or DEFAULT_ENDPOINT
    except OSError as exc:
        raise SubmitError(f"{path}: cannot read it: {exc.strerror}", SubmitExit.USAGE) from None
    metadata = parse_metadata(args.metadata)
    wait = args.wait or args.output_dir is not None
    output_dir: Path = args.output_dir or Path()
    if args.poll_interval <= 0:
        raise SubmitError("--poll-interval must be positive", SubmitExit.USAGE)

    client = openai.OpenAI(
        base_url=args.base_url,
        api_key=os.environ.get("OPENAI_API_KEY") or _PLACEHOLDER_KEY,
        max_retries=2,
    )
    batch_id: str | None = None
    try:
        with path.open("rb") as f:
            uploaded = client.files.create(file=f, purpose="batch")
        sys.stderr.write(f"uploaded {path} as {uploaded.id} ({uploaded.bytes} bytes)\n")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint=endpoint,  # type: ignore[arg-type]  # vendors may accept more
            completion_window=args.completion_window,
            metadata=metadata,
        )
        batch_id = batch.id
        sys.stderr.write(f"created batch {batch.id} ({endpoint}, {batch.status})\n")
        sys.stdout.write(f"{batch.id}\n")
        sys.stdout.flush()
        if not wait:
            return SubmitExit.OK
        batch = _wait(client, batch, args.poll_interval)
        for error in (batch.errors.data or []) if batch.errors else []:
            where = f" (line {error.line})" if error.line else ""
            sys.stderr.write(f"  {error.code}: {error.message}{where}\n")
        output_dir.mkdir(parents=True, exist_ok=True)
        for file_id, kind in ((batch.output_file_id, "output"), (batch.error_file_id, "error")):
            if file_id:
                target = output_dir / f"{batch.id}_{kind}.jsonl"
                _download(client, file_id, target)
                sys.stdout.write(f"{target}\n")
        sys.stdout.flush()
    except openai.APIConnectionError as exc:
        running = f"; batch {batch_id} may still be running" if batch_id else ""
        raise SubmitError(
            f"cannot reach {args.base_url} ({exc.__cause__ or exc}){running}",
            SubmitExit.UNREACHABLE,
        ) from None
    except openai.APIStatusError as exc:
        raise SubmitError(
            f"the server rejected the request: {_api_message(exc)}", SubmitExit.REJECTED
        ) from None
    except KeyboardInterrupt:
        if batch_id is None:
            raise SubmitError("interrupted", SubmitExit.INTERRUPTED) from None
        raise SubmitError(
            f"interrupted: batch {batch_id} keeps running on the server", SubmitExit.INTERRUPTED
        ) from None
    return SubmitExit.OK if batch.status == "completed" else SubmitExit.BATCH_NOT_COMPLETED


def main(argv: Sequence[str]) -> int:
    import openai  # noqa: F401  # fail before any work when the client extra is missing

    args = build_parser().parse_args(list(argv))
    try:
        return int(submit(args))
    except SubmitError as exc:
        sys.stderr.write(f"openbatch submit: {exc}\n")
        return int(exc.code)
