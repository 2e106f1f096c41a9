"""The runner's orchestration: validate, dispatch, commit, stop, finalize.

Decisions live in pure modules (retry, aimd, outcome, source); this module wires them to
storage, the model client, signals and the clock.
"""

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import orjson
from pydantic import ValidationError

from openbatch.jsonl import is_blank, iter_lines
from openbatch.layout import cancel_key, progress_key, validation_key
from openbatch.lines import LineErrorCode
from openbatch.progress import InputFingerprint, ProgressRecord, RunState, WindowMode
from openbatch.runner_args import ExitCode
from openbatch.storage import LocalStore, ObjectStore, StorageError, open_uri
from openbatch.usage import to_batch_usage
from openbatch.validation import StreamingValidator, ValidationReport
from openbatch_runner.aimd import AimdController
from openbatch_runner.client import ModelClient, make_client
from openbatch_runner.committer import Committer, scan_committed
from openbatch_runner.config import RunConfig
from openbatch_runner.dispatch import Dispatcher
from openbatch_runner.finalize import finalize
from openbatch_runner.outcome import LineResult, unrun_line
from openbatch_runner.parts import CorruptPart
from openbatch_runner.polite_gate import PoliteGate, PoliteSettings
from openbatch_runner.probe import probe
from openbatch_runner.progress_view import ProgressView, Snapshot
from openbatch_runner.reply import Reply, is_overload
from openbatch_runner.retry import AttemptKind, RetryPolicy
from openbatch_runner.servers import HealthMonitor, OutageTimeout, ServerPool
from openbatch_runner.source import DigestReader, content_digest, shard_lines, take
from openbatch_runner.window import Window
from openbatch_runner.workdir import ShardCountMismatch, check_shard_count

READ_BATCH = 512
# After SIGTERM/SIGINT, the last commit may take this long past --term-grace; then the runner
# exits anyway (storage may be down, and what is not committed is simply run again).
TERM_MARGIN = 5.0
_CANCEL_WAIT = 1.0  # part of the margin: how long an abandoned run may take to unwind
PROBE_TIMEOUT = 10.0  # seconds a health probe waits for a model server's answer


class StopReason(StrEnum):
    CANCEL = "cancel"
    DEADLINE = "deadline"
    TERM = "term"
    INTERRUPT = "interrupt"
    SUPERSEDED = "superseded"  # another runner finished this shard
    OUTAGE = "outage"  # no model server answered for --outage-timeout


class UsageError(Exception):
    """A problem with the command itself or its input location: retrying cannot help."""


class Runner:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.in_store, self.in_key = open_uri(cfg.input)
        self.work_store, self.work_key = open_uri(cfg.work_dir)
        self.run_id = os.urandom(4).hex()
        self.view = ProgressView(cfg.progress, cfg.log_interval)
        self.stop_reason: StopReason | None = None
        self.terminated: StopReason | None = None
        self.stop_event = asyncio.Event()
        self.term_event = asyncio.Event()  # set by the first SIGTERM/SIGINT
        self.rng = random.Random()
        self.policy = RetryPolicy(
            max_attempts=cfg.max_attempts,
            base_delay=cfg.retry_base_delay,
            max_delay=cfg.retry_max_delay,
            max_retry_after=cfg.max_retry_after,
        )
        self.record = ProgressRecord(
            state=RunState.VALIDATING, shard=cfg.shard, shards=cfg.shards, started_at=time.time()
        )
        self.live_completed = 0
        self.live_failed = 0
        self._urls: list[str] = []
        self.outage_message = ""
        self._unrun_written = 0
        self.aimd: AimdController | None = None
        self.window: Window | None = None
        self.gate: PoliteGate | None = None
        self._owns_work_dir = False  # True once the work dir is known to be this input's
        self._had_record = False  # this shard's record existed before this run
        self._wrote_record = False  # this run wrote this shard's record
        self.superseded_by: ProgressRecord | None = None  # another runner's terminal record

    # ----------------------------------------------------------------- entry point
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig, reason in (
            (signal.SIGTERM, StopReason.TERM),
            (signal.SIGINT, StopReason.INTERRUPT),
        ):
            loop.add_signal_handler(sig, self.request_stop, reason)
        try:
            return await self._run_bounded()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _run_bounded(self) -> int:
        """Run, but after SIGTERM/SIGINT never longer than --term-grace + TERM_MARGIN.

        Storage calls run in threads that retry for OPENBATCH_S3_RETRY_SECONDS and cannot
        be interrupted; past the bound the run is abandoned (the CLI then exits without
        waiting for those threads) and the rerun resumes from the last committed part.
        """
        main = asyncio.create_task(self._run_reporting())
        overdue = asyncio.create_task(self._overdue())
        try:
            await asyncio.wait({main, overdue}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            overdue.cancel()
        if main.done():
            return main.result()
        main.cancel()
        await asyncio.wait({main}, timeout=_CANCEL_WAIT)
        how = "SIGTERM" if self.terminated is StopReason.TERM else "SIGINT"
        self.view.message(
            f"stopped by {how}: storage did not finish the last commit within --term-grace "
            f"+ {TERM_MARGIN:g}s; exiting anyway, uncommitted lines run again on resume"
        )
        return ExitCode.INTERRUPTED if self.terminated is StopReason.TERM else ExitCode.KEYBOARD

    async def _overdue(self) -> None:
        await self.term_event.wait()
        await asyncio.sleep(self.cfg.term_grace + TERM_MARGIN - _CANCEL_WAIT)

    async def _run_reporting(self) -> int:
        try:
            return await self._run()
        except UsageError as exc:
            return await self._give_up(f"error: {exc}", ExitCode.USAGE)
        except StorageError as exc:
            code = ExitCode.INFRASTRUCTURE if exc.transient else ExitCode.USAGE
            return await self._give_up(f"storage error: {exc}", code)
        except (CorruptPart, ValidationError) as exc:
            # Something other than a runner wrote into the work dir: retrying cannot help.
            message = f"error: the work dir {self.cfg.work_dir} is corrupt: {exc}"
            return await self._give_up(message, ExitCode.USAGE)

    async def _give_up(self, message: str, code: int) -> int:
        """Say why, and leave the reason in the progress record for the operator (best
        effort: the storage that failed may be the one we would write it to)."""
        self.view.message(message)
        # Never overwrite the record of a work dir that belongs to another input, and do not
        # make a local work dir just to say that the arguments or the input are wrong (an
        # operator reads the reason from object storage, so there it is always written).
        made = self._had_record or self._wrote_record or not isinstance(self.work_store, LocalStore)
        if self._owns_work_dir and made and not self.record.state.terminal:
            self.record.message = message
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._write_progress(), timeout=10)
        return code

    def request_stop(self, reason: StopReason) -> None:
        # The first stop decides the outcome: a SIGTERM during a cancel does not turn the
        # cancel into a resume, but it does cut the cancel's remaining work short.
        if reason in (StopReason.TERM, StopReason.INTERRUPT):
            self.terminated = reason
            self.term_event.set()
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_event.set()

    async def _run(self) -> int:
        early_exit = await self._prepare()
        if early_exit is not None:
            return early_exit
        committer = await self._open_committer()
        watchers = [
            asyncio.create_task(committer.run()),
            asyncio.create_task(self._watch_cancel()),
            asyncio.create_task(self._show_progress()),
        ]
        deadline_handle = self._arm_deadline()
        try:
            exit_code = await self._process(committer)
        finally:
            if deadline_handle is not None:
                deadline_handle.cancel()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        return exit_code if exit_code is not None else await self._finish()

    async def _prepare(self) -> int | None:
        """Check the input and the work dir, validate; an exit code means: stop here."""
        cfg = self.cfg
        previous = await self._read_progress()
        self._had_record = previous is not None
        try:
            await asyncio.to_thread(
                check_shard_count,
                self.work_store,
                self.work_key,
                cfg.work_dir,
                cfg.shards,
                previous,
                how=f"--shard {cfg.shard}/{cfg.shards}",
            )
        except ShardCountMismatch as exc:
            raise UsageError(str(exc)) from exc
        info = await asyncio.to_thread(self.in_store.stat, self.in_key)
        if info is None:
            self._owns_work_dir = previous is None
            raise UsageError(self._missing_input_message())
        fingerprint = InputFingerprint(uri=cfg.input, size=info.size, etag=info.etag)
        if previous is not None:
            self._check_same_input(previous, fingerprint)
            removed = await asyncio.to_thread(self._remove_stale_temporaries)
            if removed:
                self.view.message(f"removed {removed} temporary file(s) left by a killed run")
            if previous.state.terminal and previous.state is not RunState.FAILED:
                self._owns_work_dir = True
                self.record = previous
                self.view.message(f"shard {cfg.shard} already {previous.state.value}")
                return await self._finish()
            await self._check_same_content(previous, fingerprint)
        self._owns_work_dir = True  # no record yet, or the record is this input's
        if previous is not None and previous.state is RunState.FAILED:
            return self._report_invalid(previous)
        await asyncio.to_thread(self._check_destinations)
        self.record.input = fingerprint
        if previous is not None and previous.model is not None:
            # Validated by an earlier run of this shard on the very same input.
            self.record.total = previous.total
            self.record.model = previous.model
        else:
            await self._write_progress()
            report, shard_total, digest = await asyncio.to_thread(self._validate)
            fingerprint.digest = digest
            if not report.ok:
                return await self._fail_validation(report)
            self.record.total = shard_total
            self.record.model = report.model
        self._urls = self._resolve_urls()
        return None

    async def _open_committer(self) -> Committer:
        cfg = self.cfg
        committed = await asyncio.to_thread(
            scan_committed, self.work_store, self.work_key, cfg.shard
        )
        committer = Committer(
            self.work_store,
            self.work_key,
            cfg.shard,
            self.run_id,
            committed,
            commit_every=cfg.commit_every,
            commit_interval=cfg.commit_interval,
            on_commit=self._write_progress,
        )
        self.committer = committer
        self.live_completed = committer.tally.completed
        self.live_failed = committer.tally.failed
        if committer.tally.parts:
            self.view.message(
                f"resuming shard {cfg.shard}: {committer.done.count()} of {self.record.total} "
                f"lines already committed"
            )
        self.record.state = RunState.IN_PROGRESS
        await self._write_progress()
        return committer

    async def _process(self, committer: Committer) -> int | None:
        """Run every line, then handle the stop (if any); an exit code means: no finalize."""
        await self._check_cancel_once()
        if self.stop_reason is None:
            await self._dispatch_all()
        await self._drain()
        await committer.commit()
        if self.superseded_by is not None:
            return ExitCode.DONE  # the shard is done; its record and finalize are not ours
        reason = self.stop_reason
        if reason is StopReason.OUTAGE and self.terminated is None:
            # Not the lines' fault: nothing was marked failed; a Job retry resumes later.
            self.record.state = RunState.INTERRUPTED
            self.record.message = self.outage_message
            await self._write_progress()
            self.view.message(
                f"error: {self.outage_message}; committed {committer.done.count()} lines; "
                f"rerun the same command to resume"
            )
            return ExitCode.INFRASTRUCTURE
        if reason in (StopReason.CANCEL, StopReason.DEADLINE) and self.terminated is None:
            await self._write_unrun(reason)
        if self.terminated is not None:
            await committer.commit()
            self.record.state = RunState.INTERRUPTED
            await self._write_progress()
            how = "SIGTERM" if self.terminated is StopReason.TERM else "SIGINT"
            self.view.message(
                f"stopped by {how}: committed {committer.done.count()} lines; rerun the same "
                f"command to resume"
            )
            return ExitCode.INTERRUPTED if self.terminated is StopReason.TERM else ExitCode.KEYBOARD
        if reason is StopReason.CANCEL:
            # After `cancelling` a batch only ever becomes `cancelled` (contract §3.3).
            self.record.state = RunState.CANCELLED
        elif reason is StopReason.DEADLINE and not self._all_ran():
            self.record.state = RunState.EXPIRED
        else:
            # No stop, or every line had run when the deadline came: the batch completed.
            self.record.state = RunState.COMPLETED
        await self._write_progress()
        return None

    # ----------------------------------------------------------------- validation
    def _validate(self) -> tuple[ValidationReport, int, str | None]:
        """Validate the whole input; also count this shard's lines and fingerprint the
        content in the same pass (None when validation stopped before the end)."""
        cfg = self.cfg
        known = set(cfg.routing.models) if cfg.routing is not None else None
        validator = StreamingValidator(cfg.endpoint, limits=cfg.limits, known_models=known)
        shard_total = 0
        ordinal = 0
        with self.in_store.open_read(self.in_key) as reader:
            digester = DigestReader(reader)
            lines = iter_lines(digester, max_line_bytes=cfg.limits.max_line_bytes)
            for index, line in lines:
                validator.feed(index, line)
                if validator.stopped:
                    break
                if not is_blank(line):
                    if ordinal % cfg.shards == cfg.shard:
                        shard_total += 1
                    ordinal += 1
        return validator.finish(), shard_total, digester.digest if digester.at_end else None

    def _input_digest(self) -> str:
        with self.in_store.open_read(self.in_key) as reader:
            return content_digest(reader)

    async def _fail_validation(self, report: ValidationReport) -> int:
        self.record.state = RunState.FAILED
        self.record.errors = report.to_batch_errors()
        self.record.error_count = report.error_count
        self.record.message = f"input failed validation with {report.error_count} error(s)"
        errors_json = report.to_batch_errors()
        data = errors_json.model_dump_json().encode() if errors_json is not None else b"null"
        await asyncio.to_thread(self.work_store.put_bytes, validation_key(self.work_key), data)
        await self._write_progress()
        return self._report_invalid(self.record)

    def _report_invalid(self, record: ProgressRecord) -> int:
        if record.errors is not None:
            sys.stdout.write(record.errors.model_dump_json() + "\n")
            sys.stdout.flush()
        self.view.message(
            f"input failed validation ({record.error_count} error(s)); nothing was sent to the "
            f"model server. Errors are stored in {self.cfg.work_dir}"
        )
        return ExitCode.INVALID_INPUT

    def _check_same_input(self, previous: ProgressRecord, current: InputFingerprint) -> None:
        before = previous.input
        if before is None:
            return
        # Local mtimes change on a mere copy; compare content-based ETags only on S3.
        same = before.size == current.size and (
            not current.uri.startswith("s3://") or before.etag == current.etag
        )
        if not same:
            raise UsageError(
                f"the work dir {self.cfg.work_dir} holds results of a different input "
                f"({before.uri}, {before.size} bytes); use a new --work-dir for a new input"
            )

    async def _check_same_content(
        self, previous: ProgressRecord, current: InputFingerprint
    ) -> None:
        """Refuse to resume on an input whose bytes changed (same size, edited lines).

        Local files are read once more to compare their fingerprint (only on a resume: a
        first run fingerprints during validation). On S3 the ETag, already compared, is a
        content hash, so the input is not read again.
        """
        before = previous.input
        if before is None or before.digest is None:
            return  # validation never finished, or a record older than fingerprints
        if current.uri.startswith("s3://") and current.etag is not None:
            current.digest = before.digest
            return
        digest = await asyncio.to_thread(self._input_digest)
        if digest != before.digest:
            raise UsageError(
                f"the input {self.cfg.input} changed since the work dir {self.cfg.work_dir} "
                f"was made (same size, different content): resuming would mix two files; "
                f"restore the original input, or use a new --work-dir"
            )
        current.digest = digest

    def _destinations(self) -> list[tuple[ObjectStore, str]]:
        """Where this run writes: the shard's record and, if it finalizes, the files."""
        cfg = self.cfg
        places = [(self.work_store, progress_key(self.work_key, cfg.shard))]
        if cfg.finalize:
            places += [open_uri(cfg.output), open_uri(cfg.errors)]
        return places

    def _check_destinations(self) -> None:
        """An unwritable output, error file or work dir is found before any request is
        sent, not when the results are in (blocking)."""
        for store, key in self._destinations():
            store.check_writable(key)

    def _remove_stale_temporaries(self) -> int:
        """Delete the temporary files of killed writers in the work dir and next to the
        output and error files (local storage only; blocking)."""
        removed = 0
        work_prefix = self.work_key.rstrip("/") + "/"
        for store, key in [(self.work_store, work_prefix), *self._destinations()[1:]]:
            if isinstance(store, LocalStore):
                removed += store.remove_stale_temporaries(key)
        return removed

    def _missing_input_message(self) -> str:
        path = Path(self.in_key)
        if isinstance(self.in_store, LocalStore) and path.is_dir():
            return f"input {self.cfg.input} is a directory, not a file"
        if isinstance(self.in_store, LocalStore) and path.exists():
            return f"input {self.cfg.input} is not a regular file"
        return f"input file {self.cfg.input} does not exist"

    def _resolve_urls(self) -> list[str]:
        cfg = self.cfg
        bases: list[str] = list(cfg.base_urls)
        if cfg.routing is not None and self.record.model is not None:
            routed = cfg.routing.urls_for(self.record.model)
            if routed:
                bases = routed
        if not bases:
            raise UsageError(f"no model server for model {self.record.model!r}")
        return bases

    # ----------------------------------------------------------------- dispatch
    async def _dispatch_all(self) -> None:
        """Hand every line of the shard to the dispatcher (`dispatch`), which schedules
        attempts, retries and outages; this side feeds it lines and applies backpressure
        when commits fall behind."""
        cfg = self.cfg
        committer = self.committer
        self.aimd = (
            AimdController(cfg.concurrency, max_limit=cfg.max_concurrency) if cfg.adaptive else None
        )
        window = self.window = Window(cfg.concurrency)
        widest = cfg.max_concurrency if cfg.elastic else cfg.concurrency
        max_pending = max(4 * cfg.commit_every, 4 * cfg.concurrency)
        api_key = cfg.key_for(self._urls)
        self.client: ModelClient = make_client(
            cfg.http_client,
            request_timeout=cfg.request_timeout,
            api_key=api_key,
            max_connections=widest * 2,
        )
        probe_timeout = min(PROBE_TIMEOUT, cfg.request_timeout)

        async def probe_server(base_url: str) -> str | None:
            return await probe(base_url, probe_timeout, cfg.api_key)

        pool = ServerPool.of(self._urls)
        self.monitor = HealthMonitor(
            pool,
            probe_server,
            outage_timeout=cfg.outage_timeout,
            say=self.view.message,
        )
        gate = self.gate = self._polite_gate(pool, window, api_key) if cfg.polite else None
        self.dispatcher = dispatcher = Dispatcher(
            client=self.client,
            monitor=self.monitor,
            window=window,
            policy=self.policy,
            max_retry_wait=cfg.max_retry_wait,
            deliver=self._deliver,
            observe=self._observe,
            # Lines taken but not finished (in flight or waiting to retry) are bounded, so
            # memory stays flat even when most lines are backing off.
            max_live=max(4 * widest, 256),
            say=self.view.message,
            rng=self.rng,
            gate=gate,
        )
        stopper = asyncio.create_task(self._stop_dispatch_on_stop())
        watcher = asyncio.create_task(gate.run()) if gate is not None else None
        reader = await asyncio.to_thread(self.in_store.open_read, self.in_key)
        lines = shard_lines(reader, cfg.shard, cfg.shards, skip=committer.done)

        async def read_batch() -> list[tuple[int, bytes]]:
            if committer.failure is not None:
                raise committer.failure
            while committer.pending >= max_pending and self.stop_reason is None:
                await committer.wait_committed()
                if committer.failure is not None:
                    raise committer.failure
            return await asyncio.to_thread(take, lines, READ_BATCH)

        try:
            await self.monitor.check_all()
            await dispatcher.run(read_batch)
        except OutageTimeout as exc:
            self.outage_message = str(exc)
            self.request_stop(StopReason.OUTAGE)
        finally:
            stopper.cancel()
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await asyncio.to_thread(reader.close)

    def _polite_gate(self, pool: ServerPool, window: Window, api_key: str | None) -> PoliteGate:
        cfg = self.cfg
        if not cfg.polite_metrics_url.startswith("/") and len(pool.servers) > 1:
            raise UsageError(
                f"a full --polite-metrics-url is one server's, and model {self.record.model!r} "
                f"has {len(pool.servers)}: give a path (such as /metrics) instead"
            )

        def progress() -> tuple[int, int]:
            done = self.live_completed + self.live_failed
            return max(0, self.record.total - done), done

        return PoliteGate(
            pool=pool,
            window=window,
            max_total=cfg.max_concurrency,
            settings=PoliteSettings(
                metrics_url=cfg.polite_metrics_url,
                kind=cfg.polite_server_kind,
                queue_threshold=cfg.polite_queue_threshold,
                interval=cfg.polite_scrape_interval,
            ),
            api_key=api_key,
            progress=progress,
            deadline=cfg.deadline,
            say=self.view.message,
            shares=cfg.shards,
        )

    async def _stop_dispatch_on_stop(self) -> None:
        await self.stop_event.wait()
        self.dispatcher.stop()
        await self.monitor.close()

    def _deliver(self, index: int, result: LineResult) -> None:
        if result.ok:
            self.live_completed += 1
        else:
            self.live_failed += 1
        self.committer.add(index, result)

    async def _drain(self) -> None:
        """Wait for in-flight lines; after a stop, only for the grace period."""
        window = self.window
        if window is not None:
            idle = asyncio.create_task(window.wait_idle())
            stop = asyncio.create_task(self.stop_event.wait())
            await asyncio.wait({idle, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not idle.done():
                grace = (
                    self.cfg.term_grace
                    if self.stop_reason in (StopReason.TERM, StopReason.INTERRUPT)
                    else self.cfg.grace_period
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(idle), grace)
            tasks = self.dispatcher.tasks
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            idle.cancel()
            stop.cancel()
            self.dispatcher.stop()
            await self.monitor.close()
            await self.client.close()

    def _observe(self, reply: Reply, latency: float, now: float) -> None:
        aimd = self.aimd
        if aimd is None:
            return
        if reply.kind is AttemptKind.OK:
            aimd.on_success(latency, now)
        elif is_overload(reply):
            aimd.on_overload(now, latency)
        else:
            return
        if self.window is not None:
            self.window.set_limit(aimd.window)

    # ----------------------------------------------------------------- stops
    def _arm_deadline(self) -> asyncio.TimerHandle | None:
        if self.cfg.deadline is None:
            return None
        remaining = (self.cfg.deadline - datetime.now(UTC)).total_seconds()
        loop = asyncio.get_running_loop()
        if remaining <= 0:
            self.request_stop(StopReason.DEADLINE)
            return None
        return loop.call_later(remaining, self.request_stop, StopReason.DEADLINE)

    async def _check_cancel_once(self) -> None:
        if await asyncio.to_thread(self.work_store.exists, cancel_key(self.work_key)):
            self.request_stop(StopReason.CANCEL)

    async def _watch_cancel(self) -> None:
        while self.stop_reason is None:
            await asyncio.sleep(self.cfg.poll_interval)
            try:
                await self._check_cancel_once()
            except StorageError as exc:
                # A storage hiccup must not kill a healthy run; the next poll tries again.
                self.view.message(f"cancel check failed, will retry: {exc}")

    async def _write_unrun(self, reason: StopReason) -> None:
        code = (
            LineErrorCode.BATCH_CANCELLED
            if reason is StopReason.CANCEL
            else LineErrorCode.BATCH_EXPIRED
        )
        committer = self.committer
        reader = await asyncio.to_thread(self.in_store.open_read, self.in_key)
        lines = shard_lines(reader, self.cfg.shard, self.cfg.shards, skip=committer.done)
        written = 0
        try:
            while self.terminated is None:
                batch = await asyncio.to_thread(take, lines, READ_BATCH * 4)
                if not batch:
                    break
                for index, raw in batch:
                    committer.add(index, unrun_line(_custom_id(raw), code))
                    written += 1
                if committer.pending >= self.cfg.commit_every:
                    await committer.commit()
            await committer.commit()
        finally:
            await asyncio.to_thread(reader.close)
        self._unrun_written = written
        label = "cancelled" if reason is StopReason.CANCEL else "expired"
        self.view.message(f"batch {label}: {written} line(s) never ran and were written as {code}")

    def _all_ran(self) -> bool:
        return self._unrun_written == 0 and self.committer.tally.unrun == 0

    # ----------------------------------------------------------------- progress
    async def _read_progress(self) -> ProgressRecord | None:
        key = progress_key(self.work_key, self.cfg.shard)
        if not await asyncio.to_thread(self.work_store.exists, key):
            return None
        data = await asyncio.to_thread(self.work_store.read_bytes, key)
        return ProgressRecord.model_validate_json(data)

    async def _write_progress(self) -> None:
        committer: Committer | None = getattr(self, "committer", None)
        record = self.record
        if committer is not None:
            tally = committer.tally
            record.completed = tally.completed
            record.failed = tally.failed
            record.unrun = tally.unrun
            record.usage = to_batch_usage(tally.usage)
            record.parts = tally.parts
        self._record_window(record)
        record.updated_at = time.time()
        data = record.model_dump_json().encode()
        final = await asyncio.to_thread(self._put_progress, data)
        if final is None:
            self._wrote_record = True
        elif self.superseded_by is None:
            self.superseded_by = final
            self.view.message(
                f"shard {self.cfg.shard} was finished by another runner (state "
                f"{final.state.value}); this one stops without touching its record"
            )
            self.request_stop(StopReason.SUPERSEDED)

    def _record_window(self, record: ProgressRecord) -> None:
        """How the window is sized, for the operator and people reading the record."""
        cfg = self.cfg
        window = self.window
        if window is None:
            return
        record.window = window.limit
        gate = self.gate
        if gate is not None:
            record.window_mode = WindowMode.POLITE
            record.load_signal = gate.signal[:256]
            record.deadline_pressure = gate.pressure
        else:
            record.window_mode = WindowMode.ADAPTIVE if cfg.adaptive else WindowMode.FIXED

    def _put_progress(self, data: bytes) -> ProgressRecord | None:
        """Write this shard's record unless a terminal one is already there (blocking).

        A terminal record is final: a stale runner (a pod thought dead, still running) must
        not move a finished shard back to in_progress or interrupted, after which finalize
        would refuse. Returns the terminal record found instead of writing. (Between the
        read and the write another runner may still finish: that window is one PUT long.)
        """
        key = progress_key(self.work_key, self.cfg.shard)
        if self.work_store.exists(key):
            current = ProgressRecord.model_validate_json(self.work_store.read_bytes(key))
            if current.state.terminal:
                return current
        self.work_store.put_bytes(key, data)
        return None

    async def _show_progress(self) -> None:
        while True:
            await asyncio.sleep(self.view.interval)
            window = self.window
            self.view.update(
                Snapshot(
                    total=self.record.total,
                    completed=self.live_completed,
                    failed=self.live_failed,
                    in_flight=window.in_flight if window is not None else 0,
                    window=window.limit if window is not None else self.cfg.concurrency,
                )
            )

    async def _finish(self) -> int:
        record = self.record
        if not self.cfg.finalize or self.cfg.shards > 1:
            self.view.message(
                f"shard {self.cfg.shard}/{self.cfg.shards} {record.state.value}: "
                f"completed={record.completed} failed={record.failed} unrun={record.unrun}"
            )
            return ExitCode.DONE
        result = await asyncio.to_thread(
            finalize,
            self.cfg.work_dir,
            self.cfg.shards,
            self.cfg.output,
            self.cfg.errors,
        )
        usage = result.usage
        self.view.message(
            f"{result.state.value}: {result.total} requests, completed={result.completed} "
            f"failed={result.failed} not run={result.unrun}; tokens in={usage.input_tokens} "
            f"out={usage.output_tokens} total={usage.total_tokens}; "
            f"elapsed {time.time() - (record.started_at or time.time()):.1f}s"
        )
        self.view.message(f"output: {result.output_uri or '(none: no request succeeded)'}")
        self.view.message(f"errors: {result.error_uri or '(none: no request failed)'}")
        return ExitCode.DONE


def _custom_id(raw: bytes) -> str:
    value = orjson.loads(raw)["custom_id"]
    return value if isinstance(value, str) else str(value)
