"""The local backend (`openbatch serve`): BatchJobs in SQLite, each run by runner subprocesses.

The same pure lifecycle as the operator's (`openbatch.lifecycle.reconcile`) decides every
step; this module only observes (runner processes, progress records in the work dir), calls
it, and applies the decision. Runner processes stand in for Jobs: one per shard, restarted
on a retryable exit up to `BACKOFF_LIMIT` times, killed as a backstop past the deadline.

Crash safety: every decision is recomputed from SQLite and the work dir, so a restarted
server resumes each batch where its runners committed (they are started again and skip what
is done). Runners die with the server (Linux `PR_SET_PDEATHSIG`: they get SIGTERM, commit
and exit), so a restarted server never races an orphan.
"""

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from openbatch.admission import QueueEntry, slots_view
from openbatch.launch import ModelTarget, finalize_args_for, runner_args_for
from openbatch.layout import cancel_key, progress_key, result_key
from openbatch.lifecycle import (
    ABSENT,
    TERMINAL_PHASES,
    Decision,
    Observed,
    RunnerState,
    reconcile,
)
from openbatch.locations import BatchLocations, locations_of
from openbatch.progress import FinalResult, ProgressRecord
from openbatch.resource import BatchJob, ConditionStatus, ConditionType, format_time
from openbatch.runner_args import FINAL_EXIT_CODES, ExitCode
from openbatch.storage import ObjectNotFound, StorageError, open_uri
from openbatch_shim.backends.base import BatchIndex

BACKOFF_LIMIT = 3  # retryable runner exits before the batch fails, as a Job's backoffLimit
RESTART_DELAY = 1.0
DEADLINE_BACKSTOP = timedelta(minutes=5)
_log = logging.getLogger("openbatch.shim.local")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
"""


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the server process dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class _Proc:
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    exit_code: int | None = None
    restarts: int = 0
    restart_at: float = 0.0
    log: IO[bytes] | None = None


@dataclass
class _Step:
    """One child "Job": the runner (a process per shard) or the finalize step."""

    procs: list[_Proc] = field(default_factory=list)
    killed_at_deadline: bool = False

    def state(self) -> RunnerState:
        if not self.procs:
            return ABSENT
        if self.killed_at_deadline:
            return RunnerState(
                exists=True,
                failed_for_good=True,
                stopped_at_deadline=True,
                reason="DeadlineExceeded",
                message="the runner was still running past the deadline and was stopped",
            )
        for proc in self.procs:
            code = proc.exit_code
            if code is not None and code in FINAL_EXIT_CODES:
                return RunnerState(
                    exists=True,
                    failed_for_good=True,
                    reason=f"exit code {code}",
                    message=f"{ExitCode(code).name.lower()}; see {_log_name(proc)}",
                )
            if code is not None and code != 0 and proc.restarts >= BACKOFF_LIMIT:
                return RunnerState(
                    exists=True,
                    failed_for_good=True,
                    reason="BackoffLimitExceeded",
                    message=f"exit code {code} after {proc.restarts} restarts; see "
                    f"{_log_name(proc)}",
                )
        if all(p.exit_code == 0 for p in self.procs):
            return RunnerState(exists=True, complete=True)
        return RunnerState(exists=True)


def _log_name(proc: _Proc) -> str:
    return getattr(proc.log, "name", "the runner log")


class LocalBackend:
    def __init__(
        self,
        *,
        data_dir: Path,
        root: str,
        target: ModelTarget,
        model_names: list[str],
        max_concurrent: int,
        poll_interval: float,
        runner_env: dict[str, str] | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._root = root
        self._target = target
        self._model_names = model_names
        self._max_concurrent = max_concurrent
        self._poll = poll_interval
        self._env = dict(os.environ if runner_env is None else runner_env)
        self._reapers: set[asyncio.Task[None]] = set()
        self._active: set[tuple[str, str]] = set()  # batches not finished: what the loop visits
        self._db: sqlite3.Connection | None = None
        self._index: dict[str, BatchIndex] = {}
        self._runners: dict[tuple[str, str], _Step] = {}
        self._finalizers: dict[tuple[str, str], _Step] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        self._logs = data_dir / "logs"

    # ----------------------------------------------------------------- lifecycle of the server
    async def start(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._logs.mkdir(exist_ok=True)
        db = sqlite3.connect(self._data_dir / "openbatch.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a created batch survives a power cut
        db.executescript(_SCHEMA)
        self._db = db
        for namespace, body in db.execute("SELECT namespace, body FROM batches"):
            job = BatchJob.model_validate_json(body)
            self._ns(namespace).put(job)
            self._track(namespace, job)
        self._task = asyncio.create_task(self._loop())
        self._ready = True

    async def stop(self) -> None:
        self._ready = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Runners get SIGTERM: they commit and exit; the next start resumes them.
        procs = [
            p.process
            for steps in (self._runners, self._finalizers)
            for step in steps.values()
            for p in step.procs
            if p.process is not None and p.process.returncode is None
        ]
        for process in procs:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in procs:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if self._db is not None:
            self._db.close()
            self._db = None

    def ready(self) -> bool:
        return self._ready

    def models(self) -> list[str]:
        return list(self._model_names)

    def indexes(self) -> list[BatchIndex]:
        return list(self._index.values())

    # ----------------------------------------------------------------- store
    def _ns(self, namespace: str) -> BatchIndex:
        return self._index.setdefault(namespace, BatchIndex())

    def _save(self, job: BatchJob) -> None:
        assert self._db is not None
        namespace = job.metadata.namespace or "default"
        self._db.execute(
            "INSERT INTO batches (namespace, name, body) VALUES (?, ?, ?) "
            "ON CONFLICT (namespace, name) DO UPDATE SET body = excluded.body",
            (namespace, job.metadata.name, job.model_dump_json(by_alias=True, exclude_none=True)),
        )
        self._ns(namespace).put(job)
        self._track(namespace, job)

    def _track(self, namespace: str, job: BatchJob) -> None:
        key = (namespace, job.metadata.name)
        if job.status.phase in TERMINAL_PHASES:
            self._active.discard(key)
        else:
            self._active.add(key)

    async def create(self, job: BatchJob) -> BatchJob:
        namespace = job.metadata.namespace or "default"
        existing = self._ns(namespace).get(job.metadata.name)
        if existing is not None:
            return existing
        now = datetime.now(UTC).replace(microsecond=0)
        meta = job.metadata.model_copy(
            update={
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "generation": 1,
                "creation_timestamp": now,
            }
        )
        stored = job.model_copy(update={"metadata": meta})
        self._save(stored)
        self._wake.set()
        return stored

    async def get(self, namespace: str, name: str) -> BatchJob | None:
        return self._ns(namespace).get(name)

    async def index(self, namespace: str) -> BatchIndex:
        return self._ns(namespace)

    async def request_cancel(self, namespace: str, name: str) -> BatchJob | None:
        job = self._ns(namespace).get(name)
        if job is None:
            return None
        if not job.spec.cancel:
            spec = job.spec.model_copy(update={"cancel": True})
            meta = job.metadata.model_copy(
                update={"generation": (job.metadata.generation or 1) + 1}
            )
            job = job.model_copy(update={"spec": spec, "metadata": meta})
            self._save(job)
        # Decide at once, so the response already shows `cancelling` (or `cancelled`).
        await self._reconcile(job, self._entries())
        self._wake.set()
        return self._ns(namespace).get(name)

    # ----------------------------------------------------------------- the control loop
    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                _log.exception("reconcile pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()

    def _entries(self) -> list[QueueEntry]:
        """Admission entries of the unfinished batches (finished ones hold no slot and wait
        for none, so they never change a decision: leaving them out keeps this O(active))."""
        out = []
        for namespace, name in list(self._active):
            job = self._ns(namespace).get(name)
            if job is not None:
                admitted = job.status.condition(ConditionType.ADMITTED)
                out.append(
                    QueueEntry(
                        key=(namespace, job.metadata.name),
                        priority=job.spec.priority,
                        created=format_time(job.metadata.creation_timestamp)
                        if job.metadata.creation_timestamp
                        else "",
                        admitted=admitted is not None and admitted.status is ConditionStatus.TRUE,
                        terminal=job.status.phase in TERMINAL_PHASES,
                    )
                )
        return out

    async def tick(self) -> None:
        """One reconcile pass over every batch that is not finished."""
        for namespace, name in sorted(self._active):
            job = self._ns(namespace).get(name)
            if job is not None and job.status.phase not in TERMINAL_PHASES:
                await self._reconcile(job, self._entries())

    async def _reconcile(self, job: BatchJob, entries: list[QueueEntry]) -> None:
        namespace = job.metadata.namespace or "default"
        key = (namespace, job.metadata.name)
        if job.status.phase in TERMINAL_PHASES:
            return
        where = locations_of(job, self._root)
        runner = self._runners.setdefault(key, _Step())
        finalizer = self._finalizers.setdefault(key, _Step())
        await self._supervise(runner, job)
        await self._supervise(finalizer, job)
        try:
            shards, result, marker, input_missing = await asyncio.to_thread(
                _observe_storage, where.work_uri, where.input_uri, job.spec.parallelism
            )
        except StorageError as exc:
            _log.warning("batch %s: storage not readable, will retry: %s", key, exc)
            return
        view = slots_view(entries, key)
        observed = Observed(
            runner=runner.state(),
            finalize=finalizer.state(),
            shards=shards,
            result=result,
            cancel_marker=marker,
            admitted_elsewhere=view.held,
            ahead_in_queue=view.ahead,
            namespace_full=view.namespace_full,
            max_concurrent=self._max_concurrent,
            output_file_id=where.output_file_id,
            error_file_id=where.error_file_id,
            output_uri=where.output_uri,
            error_uri=where.error_uri,
            input_missing=input_missing and not runner.procs,
        )
        now = datetime.now(UTC)
        decision = reconcile(job, observed, now)
        await self._apply(
            job=job, decision=decision, where=where, runner=runner, finalizer=finalizer, now=now
        )

    async def _apply(
        self,
        *,
        job: BatchJob,
        decision: Decision,
        where: BatchLocations,
        runner: _Step,
        finalizer: _Step,
        now: datetime,
    ) -> None:
        if decision.write_cancel_marker:
            store, work = open_uri(where.work_uri)
            await asyncio.to_thread(
                store.put_bytes, cancel_key(work), b"cancelled through the API\n"
            )
        deadline = job.deadline() or now
        if decision.create_runner and not runner.procs:
            for shard in range(job.spec.parallelism):
                args = runner_args_for(job, where, self._target, deadline=deadline, shard=shard)
                runner.procs.append(_Proc(argv=args.to_argv()))
            await self._supervise(runner, job)
        if decision.create_finalize and not finalizer.procs:
            finalizer.procs.append(_Proc(argv=finalize_args_for(job, where).to_argv()))
            await self._supervise(finalizer, job)
        for event in decision.events:
            _log.info(
                "batch %s/%s: %s: %s",
                job.metadata.namespace,
                job.metadata.name,
                event.reason,
                event.message,
            )
        if decision.status != job.status:
            self._save(job.model_copy(update={"status": decision.status}))
        if decision.terminal:
            key = (job.metadata.namespace or "default", job.metadata.name)
            self._runners.pop(key, None)
            self._finalizers.pop(key, None)

    async def _supervise(self, step: _Step, job: BatchJob) -> None:
        """Start what should run, restart retryable exits, stop what outlived the deadline."""
        now = time.monotonic()
        deadline = job.deadline()
        overdue = deadline is not None and datetime.now(UTC) > deadline + DEADLINE_BACKSTOP
        for index, proc in enumerate(step.procs):
            process = proc.process
            if process is not None and process.returncode is None:
                if overdue:
                    step.killed_at_deadline = True
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                continue
            if process is not None:
                proc.exit_code = process.returncode
                proc.process = None
                if proc.log is not None:
                    proc.log.close()
                    proc.log = None
                if proc.exit_code not in (0, *FINAL_EXIT_CODES):
                    proc.restart_at = now + RESTART_DELAY * (2**proc.restarts)
            code = proc.exit_code
            if code == 0 or (code is not None and code in FINAL_EXIT_CODES):
                continue
            if code is not None and proc.restarts >= BACKOFF_LIMIT:
                continue
            if step.killed_at_deadline or now < proc.restart_at:
                continue
            if code is not None:
                proc.restarts += 1
            await self._spawn(proc, job, index)

    async def _spawn(self, proc: _Proc, job: BatchJob, index: int) -> None:
        log_path = self._logs / f"{job.metadata.name}-{proc.argv[0]}-{index}.log"
        log = log_path.open("ab")  # closed when the process is reaped
        proc.log = log
        proc.exit_code = None
        proc.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "openbatch_runner",
            *proc.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=self._env,
            preexec_fn=_die_with_parent,  # only calls prctl
        )
        self._reapers.add(asyncio.create_task(self._reap(proc.process)))

    async def _reap(self, process: asyncio.subprocess.Process) -> None:
        try:
            await process.wait()
            self._wake.set()  # react to an exit at once, not at the next tick
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._reapers.discard(task)


def _observe_storage(
    work_uri: str, input_uri: str, shards: int
) -> tuple[tuple[ProgressRecord | None, ...], FinalResult | None, bool, bool]:
    """Progress records, result and cancel marker of a work dir, and whether the input is gone.

    Blocking; run in a thread. Locations are the ones the backend computed, never ones read
    from an object.
    """
    store, work = open_uri(work_uri)
    records: list[ProgressRecord | None] = []
    for shard in range(shards):
        try:
            records.append(
                ProgressRecord.model_validate_json(store.read_bytes(progress_key(work, shard)))
            )
        except ObjectNotFound:
            records.append(None)
    try:
        result: FinalResult | None = FinalResult.model_validate_json(
            store.read_bytes(result_key(work))
        )
    except ObjectNotFound:
        result = None
    marker = store.exists(cancel_key(work))
    in_store, in_key = open_uri(input_uri)
    input_missing = not any(records) and not in_store.exists(in_key)
    return tuple(records), result, marker, input_missing
