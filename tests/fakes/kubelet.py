"""The Job controller and kubelet for the Kubernetes emulator: Jobs become local processes.

Why: the emulator stores Jobs but nothing runs them. End-to-end tests need the runner to really
run when the operator creates its Job, and need the Job's status to move the way Kubernetes
moves it, including the failure paths (backoff, pod failure policy, deadlines, deletion).

What it does, per Job it sees (all namespaces, or one):
- creates Pod objects like the Job controller: `<job>-<5 chars>`, or `<job>-<index>-<5 chars>`
  for Indexed Jobs, labels `job-name`, `controller-uid` (plain and `batch.kubernetes.io/`),
  `batch.kubernetes.io/job-completion-index` (label and annotation), the template's labels and
  annotations, an ownerReference to the Job, the `batch.kubernetes.io/job-tracking` finalizer
  (removed once the pod has terminated and been counted), the template's spec;
- runs the first container of each pod as a local process (its own session/process group):
  argv is `command + args`, or the image's entrypoint (constructor mapping of image prefixes,
  default: the venv's `openbatch` script) + `args`; a bare `openbatch` resolves to the venv's
  script and a bare `python`/`python3` to this interpreter; `$(VAR)` references are expanded;
- environment: PATH, HOME, LANG of this process, `extra_env`, HOSTNAME (pod name), TMPDIR
  (a per-pod directory: the emptyDir at /tmp), `JOB_COMPLETION_INDEX` for Indexed Jobs, then
  `envFrom` (configMapRef, secretRef, prefix) and `env` (`value`, `valueFrom.secretKeyRef`,
  `configMapKeyRef`, `fieldRef` for metadata.name/namespace/uid, labels['k'],
  annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP/hostIP); a missing
  Secret/ConfigMap/key keeps the pod Pending with `CreateContainerConfigError` and is retried,
  as the kubelet does; Secret `data` is base64-decoded (`stringData` also read);
- pods that cannot start, as a real cluster shows them: an image under one of
  `missing_images` (prefixes) keeps the pod Pending, its container waiting in `ErrImagePull`
  then `ImagePullBackOff` (alternating, retried); requests above `node_allocatable`
  (`cpu`, `memory`) keep it Pending with `PodScheduled=False`, reason `Unschedulable`
  ("0/1 nodes are available: 1 Insufficient cpu."). Such pods never run and are not counted;
- volumes: `configMap`, `secret` and `emptyDir` volumes become per-pod directories (configMap and
  secret keys, or their `items`, written as files); every argument and env value that starts with
  a container's `mountPath` (also in `--flag=/mount/...` form) is rewritten to that directory,
  and an emptyDir mounted at /tmp is the TMPDIR directory. That is how an operator can mount a
  routing-table ConfigMap and pass its path. `workingDir` is honoured only under a mount;
  otherwise processes start in a per-pod work directory. Other volume types are ignored;
- stdout and stderr of a pod go to one log file (`logs(pod)`; the emulator can serve it as
  `pods/<name>/log`, so `kubectl logs` works when the fixture wires it);
- Pod status: Pending → Running (startTime, Ready, containerStatuses running) →
  Succeeded/Failed with `state.terminated.exitCode` (a signal N is reported as 128+N, like a
  container runtime); a pod killed with `disruption=True` also gets the DisruptionTarget condition;
- Job status (`/status` subresource): active, ready, terminating, succeeded, failed, startTime,
  completionTime, completedIndexes, and conditions: SuccessCriteriaMet then Complete; FailureTarget
  then Failed (reasons BackoffLimitExceeded, DeadlineExceeded, PodFailurePolicy); Suspended;
- backoffLimit (default 6): a failed pod is replaced (new name) until the failures exceed it;
  `restartPolicy: OnFailure` restarts the process in the same pod and counts the restarts;
  `podFailurePolicy` rules (`onExitCodes` In/NotIn with optional containerName,
  `onPodConditions` DisruptionTarget) with FailJob / Ignore / Count; `activeDeadlineSeconds`;
  `suspend` (kills active pods without counting them); `ttlSecondsAfterFinished`;
  `completions` unset on a non-indexed Job means "done when one pod succeeds";
- a replacement starts only after the old process has exited (the `podReplacementPolicy:
  Failed` behaviour, always), with no backoff delay between retries unless
  `retry_backoff_seconds` is set (Kubernetes waits 10 s, 20 s, ...: too slow for tests);
- termination: SIGTERM to the process group, SIGKILL after `terminationGracePeriodSeconds`
  (default 30) capped by `max_grace_seconds`; a pod deleted while running (it still has the
  tracking finalizer, so the API only marks it) is terminated and counted as failed, then its
  finalizer is removed; a Job that is deleted (or disappears) has its processes terminated and
  its pods deleted; when the harness stops, every process group is killed;
- garbage collection of Jobs whose owner is gone is the emulator's (its owner-reference sweep
  deletes the Job; the harness then sees the Job disappear and kills its pods).

Not emulated: other containers than the first (init and sidecar containers included), resources
and limits (no OOMKilled), probes, images (the command runs on this machine, as this user),
`backoffLimitPerIndex`/`maxFailedIndexes`/`FailIndex` (FailIndex counts like Count),
`successPolicy`, `managedBy`, pods of Jobs created by another harness instance (on start they are
marked Failed and counted, like pods of a lost node).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

_log = logging.getLogger(__name__)

JsonDict = dict[str, Any]

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
NODE_NAME = "kubelet-harness"
OPENBATCH_SCRIPT = Path(sys.executable).parent / "openbatch"
_TERMINAL = ("Succeeded", "Failed")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def compress_indexes(indexes: set[int]) -> str:
    """`{0, 1, 2, 5}` → `"0-2,5"`, the format of `status.completedIndexes`."""
    parts: list[str] = []
    ordered = sorted(indexes)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_indexes(text: str) -> set[int]:
    result: set[int] = set()
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        low, _, high = part.partition("-")
        result.update(range(int(low), int(high or low) + 1))
    return result


_QUANTITY_SUFFIXES = {
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}


def parse_quantity(text: str) -> float:
    """A Kubernetes resource quantity (`500m`, `2`, `256Mi`, `1G`) as a number."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text).strip())
    if match is None or match[2] not in ("", *_QUANTITY_SUFFIXES):
        raise ValueError(f"not a quantity: {text!r}")
    return float(match[1]) * _QUANTITY_SUFFIXES.get(match[2], 1.0)


def expand_vars(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` escapes `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, value)


class ConfigError(Exception):
    """A reference the kubelet cannot resolve yet (missing Secret, ConfigMap or key)."""


@dataclasses.dataclass(frozen=True)
class PodInfo:
    """A snapshot of one pod the harness ran or is running."""

    name: str
    namespace: str
    job_name: str
    index: int | None
    phase: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    pid: int | None
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    restarts: int
    log_path: Path
    workdir: Path


@dataclasses.dataclass
class _PodRun:
    name: str
    namespace: str
    job_uid: str
    job_name: str
    index: int | None
    pod_dir: Path
    container: JsonDict
    pod: JsonDict
    phase: str = "Pending"
    argv: tuple[str, ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    pid: int | None = None
    started_at: float | None = None
    started_rfc: str | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    restarts: int = 0
    # Why the harness is ending this pod; None while it runs on its own.
    stop_reason: str | None = None
    disruption: bool = False
    deleting: bool = False
    counted: bool = False
    task: asyncio.Task[None] | None = None
    terminator: asyncio.Task[None] | None = None
    config_error: str | None = None

    @property
    def log_path(self) -> Path:
        return self.pod_dir / "log"

    @property
    def terminal(self) -> bool:
        return self.phase in _TERMINAL

    def info(self) -> PodInfo:
        return PodInfo(
            name=self.name,
            namespace=self.namespace,
            job_name=self.job_name,
            index=self.index,
            phase=self.phase,
            argv=self.argv,
            env=dict(self.env),
            pid=self.pid,
            started_at=self.started_at,
            finished_at=self.finished_at,
            exit_code=self.exit_code,
            restarts=self.restarts,
            log_path=self.log_path,
            workdir=self.pod_dir / "work",
        )


@dataclasses.dataclass
class _JobState:
    uid: str
    namespace: str
    name: str
    body: JsonDict
    dirty: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    runs: dict[str, _PodRun] = dataclasses.field(default_factory=dict)
    succeeded: int = 0
    failed: int = 0
    restarts: int = 0
    succeeded_indexes: set[int] = dataclasses.field(default_factory=set)
    start_time: str | None = None
    start_monotonic: float | None = None
    completion_time: str | None = None
    conditions: list[JsonDict] = dataclasses.field(default_factory=list)
    finished: bool = False
    finishing: bool = False
    gone: bool = False
    written: JsonDict = dataclasses.field(default_factory=dict)
    worker: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    next_start_after: float = 0.0
    adopted: bool = False
    ttl_scheduled: bool = False
    status_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    @property
    def spec(self) -> JsonDict:
        spec: JsonDict = self.body.get("spec") or {}
        return spec

    @property
    def indexed(self) -> bool:
        return self.spec.get("completionMode") == "Indexed"


class KubeletHarness:
    """Plays the Job controller and the kubelet against an emulated API (see module docstring).

    Runs on its own event loop in a background thread; every public method is synchronous and
    thread-safe. Use `start()`/`stop()` or `with KubeletHarness(url) as harness:`.
    """

    def __init__(
        self,
        api_url: str,
        *,
        namespace: str | None = None,
        entrypoints: Mapping[str, Sequence[str]] | None = None,
        extra_env: Mapping[str, str] | None = None,
        workdir: Path | str | None = None,
        max_grace_seconds: float = 5.0,
        retry_backoff_seconds: float = 0.0,
        config_retry_seconds: float = 0.5,
        missing_images: Sequence[str] = (),
        node_allocatable: Mapping[str, str] | None = None,
        token: str = "kubelet-harness",  # noqa: S107  # the emulator accepts any token
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.namespace = namespace
        self.entrypoints: dict[str, list[str]] = {
            prefix: list(argv)
            for prefix, argv in (entrypoints or {"": [str(OPENBATCH_SCRIPT)]}).items()
        }
        self.extra_env = dict(extra_env or {})
        self.max_grace_seconds = max_grace_seconds
        self.retry_backoff_seconds = retry_backoff_seconds
        self.config_retry_seconds = config_retry_seconds
        # Image prefixes no registry has: their pods wait in ErrImagePull / ImagePullBackOff.
        # Read when a pod starts, so a test may set it on a running harness.
        self.missing_images: tuple[str, ...] = tuple(missing_images)
        # What the one node can hold (`cpu`, `memory`); a pod requesting more stays Pending
        # with PodScheduled=False, reason Unschedulable. None: unlimited.
        self.node_allocatable: dict[str, str] | None = (
            dict(node_allocatable) if node_allocatable is not None else None
        )
        self._token = token
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._jobs: dict[str, _JobState] = {}
        self._runs: dict[tuple[str, str], _PodRun] = {}
        self._jobs_seen: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._ready_parts: set[str] = set()
        self._error: BaseException | None = None
        self._running = False

    # ----- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> KubeletHarness:
        """Start, and return once Jobs and Pods are listed and being watched."""
        if self._own_workdir:
            self.workdir = Path(tempfile.mkdtemp(prefix="kubelet-harness-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run_thread, name="kubelet", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError("the kubelet harness did not start watching in time")
        if self._error is not None:
            raise RuntimeError("the kubelet harness failed") from self._error
        self._running = True
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Kill every process group (SIGKILL), stop watching, and end the thread."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:  # whatever the loop could not reap
            if run.pid is not None and run.exit_code is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.pid, signal.SIGKILL)
        self._running = False
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KubeletHarness:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run_thread(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:
            _log.exception("kubelet harness crashed")
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        headers = {"Authorization": f"Bearer {self._token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            self._session = session
            ns_path = f"/namespaces/{self.namespace}" if self.namespace else ""
            self._tasks = [
                asyncio.create_task(
                    self._watch_forever(f"/apis/batch/v1{ns_path}/jobs", {}, self._on_job, "jobs")
                ),
                asyncio.create_task(
                    self._watch_forever(
                        f"/api/v1{ns_path}/pods",
                        {"labelSelector": "batch.kubernetes.io/controller-uid"},
                        self._on_pod,
                        "pods",
                    )
                ),
            ]
            await self._stopping.wait()
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop reacting first (no API writes about the kills), then SIGKILL every process."""
        with self._lock:
            jobs = list(self._jobs.values())
            runs = list(self._runs.values())
        pending = list(self._tasks)
        pending += [job.worker for job in jobs if job.worker is not None]
        pending += [run.task for run in runs if run.task is not None]
        pending += [run.terminator for run in runs if run.terminator is not None]
        for job in jobs:
            if job.timer is not None:
                job.timer.cancel()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for run in runs:
            proc = run.proc
            if proc is None or proc.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                returncode = await asyncio.wait_for(proc.wait(), 5)
                run.exit_code = returncode if returncode >= 0 else 128 - returncode
                run.finished_at = time.time()
                run.phase = "Failed"
        self._changed()

    # ----- public, synchronous API ---------------------------------------------------------------

    def pods(self, job_name: str | None = None) -> list[PodInfo]:
        """Every pod the harness created, oldest first (optionally of one Job)."""
        with self._lock:
            return [
                run.info()
                for run in self._runs.values()
                if job_name is None or run.job_name == job_name
            ]

    def jobs_seen(self) -> list[str]:
        """Names of the Jobs the harness has seen, in order of first sight."""
        with self._lock:
            return list(self._jobs_seen)

    def logs(self, pod_name: str, namespace: str | None = None) -> str:
        run = self._find(pod_name, namespace)
        try:
            return run.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_for(self, namespace: str, pod_name: str) -> str | None:
        """The log of a pod, or None if the harness does not know it (for the emulator)."""
        with self._lock:
            run = self._runs.get((namespace, pod_name))
        if run is None:
            return None
        try:
            return run.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def process_started_at(self, pod_name: str, namespace: str | None = None) -> float:
        """`time.time()` when the pod's process was spawned (raises if it never was)."""
        started = self._find(pod_name, namespace).started_at
        if started is None:
            raise LookupError(f"pod {pod_name} has not started a process")
        return started

    def kill_pod(
        self,
        pod_name: str,
        sig: int = signal.SIGKILL,
        *,
        namespace: str | None = None,
        disruption: bool = False,
    ) -> None:
        """Send `sig` to the pod's process group, as a node failure or OOM kill would.

        The exit is handled like any other: the Job controller counts it and replaces the pod.
        `disruption=True` adds the DisruptionTarget condition (matched by pod failure policies).
        """
        run = self._find(pod_name, namespace)
        if run.pid is None or run.exit_code is not None:
            raise LookupError(f"pod {pod_name} has no running process")
        run.disruption = run.disruption or disruption
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, sig)

    def wait_for_pod_running(
        self, job_name: str, timeout: float = 30.0, *, exclude: Sequence[str] = ()
    ) -> str:
        """Wait until a pod of `job_name` (not in `exclude`) runs a process; return its name."""

        def find() -> str | None:
            for run in self._runs.values():
                if run.job_name == job_name and run.name not in exclude and run.phase == "Running":
                    return run.name
            return None

        with self._cond:
            found = self._cond.wait_for(find, timeout)
        if not found:
            raise TimeoutError(f"no running pod of job {job_name} within {timeout}s")
        return found

    def wait_for(self, predicate: Callable[[KubeletHarness], bool], timeout: float = 30.0) -> None:
        """Wait until `predicate(harness)` holds: re-checked on every state change of the
        harness and at least every 20 ms (for predicates on files, logs or the clock)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met within {timeout}s")
                self._cond.wait(min(remaining, 0.02))

    def _find(self, pod_name: str, namespace: str | None) -> _PodRun:
        with self._lock:
            for (ns, name), run in self._runs.items():
                if name == pod_name and (namespace is None or ns == namespace):
                    return run
        raise KeyError(f"unknown pod {pod_name}")

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ----- HTTP ----------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        assert self._session is not None
        data = json.dumps(body).encode() if body is not None else None
        async with self._session.request(
            method,
            self.api_url + path,
            data=data,
            params=dict(params or {}),
            headers={"Content-Type": content_type} if data is not None else {},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response:
            text = await response.text()
            try:
                payload = json.loads(text) if text else None
            except ValueError:
                payload = text
            return response.status, payload

    async def _get(self, path: str) -> JsonDict | None:
        status, payload = await self._request("GET", path)
        if status == 404:
            return None
        if status >= 400 or not isinstance(payload, dict):
            raise RuntimeError(f"GET {path} failed: {status} {payload}")
        return payload

    async def _patch_status(self, path: str, status: JsonDict) -> None:
        code, payload = await self._request(
            "PATCH",
            f"{path}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )
        if code >= 400 and code != 404:
            _log.warning("status patch of %s failed: %s %s", path, code, payload)

    async def _watch_forever(
        self,
        path: str,
        params: Mapping[str, str],
        handler: Callable[[str, JsonDict], Any],
        part: str,
    ) -> None:
        """List, then watch from the list's resourceVersion; relist on 410 or broken streams."""
        assert self._session is not None
        while True:
            try:
                status, listing = await self._request("GET", path, params=params)
                if status >= 400 or not isinstance(listing, dict):
                    raise RuntimeError(f"listing {path} failed: {status} {listing}")
                items = listing.get("items") or []
                await self._on_relist(part, items)
                for item in items:
                    await self._safely(handler, "ADDED", item)
                rv = str((listing.get("metadata") or {}).get("resourceVersion", ""))
                self._mark_ready(part)
                await self._stream(path, params, rv, handler)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("watching %s failed; relisting", path)
                await asyncio.sleep(0.5)

    async def _stream(
        self,
        path: str,
        params: Mapping[str, str],
        rv: str,
        handler: Callable[[str, JsonDict], Any],
    ) -> None:
        assert self._session is not None
        while True:
            query = {
                **params,
                "watch": "true",
                "resourceVersion": rv,
                "allowWatchBookmarks": "true",
            }
            async with self._session.get(
                self.api_url + path,
                params=query,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            ) as response:
                if response.status >= 400:
                    raise RuntimeError(f"watch {path} failed: {response.status}")
                buffer = b""
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            raise RuntimeError(f"watch {path} error: {obj.get('message')}")
                        rv = str((obj.get("metadata") or {}).get("resourceVersion", rv))
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            await self._safely(handler, str(event["type"]), obj)

    async def _safely(
        self, handler: Callable[[str, JsonDict], Any], kind: str, obj: JsonDict
    ) -> None:
        try:
            result = handler(kind, obj)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            meta = obj.get("metadata") or {}
            _log.exception(
                "handling %s of %s/%s failed", kind, meta.get("namespace"), meta.get("name")
            )

    def _mark_ready(self, part: str) -> None:
        self._ready_parts.add(part)
        if {"jobs", "pods"} <= self._ready_parts:
            self._ready.set()

    async def _on_relist(self, part: str, items: list[JsonDict]) -> None:
        """Jobs that vanished while the watch was down are gone."""
        if part != "jobs":
            return
        present = {str((i.get("metadata") or {}).get("uid")) for i in items}
        with self._lock:
            vanished = [job for uid, job in self._jobs.items() if uid not in present]
        for job in vanished:
            await self._job_gone(job)

    # ----- Jobs ----------------------------------------------------------------------------------

    async def _on_job(self, kind: str, job: JsonDict) -> None:
        meta = job.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        if not uid:
            return
        with self._lock:
            state = self._jobs.get(uid)
        if kind == "DELETED":
            if state is not None:
                await self._job_gone(state)
            return
        if state is None:
            state = _JobState(uid=uid, namespace=meta["namespace"], name=meta["name"], body=job)
            self._adopt_status(state)
            with self._lock:
                self._jobs[uid] = state
                self._jobs_seen.append(state.name)
            state.worker = asyncio.create_task(self._job_worker(state))
            self._changed()
        state.body = job
        state.dirty.set()

    def _adopt_status(self, state: _JobState) -> None:
        """Continue from the status a Job already has (e.g. after a harness restart)."""
        status = state.body.get("status") or {}
        state.succeeded = int(status.get("succeeded") or 0)
        state.failed = int(status.get("failed") or 0)
        state.succeeded_indexes = parse_indexes(status.get("completedIndexes") or "")
        state.start_time = status.get("startTime")
        state.completion_time = status.get("completionTime")
        state.conditions = copy.deepcopy(status.get("conditions") or [])
        if state.start_time:
            elapsed = (
                datetime.datetime.now(datetime.UTC)
                - datetime.datetime.fromisoformat(state.start_time.replace("Z", "+00:00"))
            ).total_seconds()
            state.start_monotonic = time.monotonic() - elapsed
        state.finished = any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in state.conditions
        )
        state.written = copy.deepcopy(status)

    async def _job_worker(self, state: _JobState) -> None:
        while not state.gone:
            await state.dirty.wait()
            state.dirty.clear()
            if state.gone:
                return
            try:
                await self._reconcile(state)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("reconciling job %s/%s failed", state.namespace, state.name)
                self._poke(state, 1.0)

    def _poke(self, state: _JobState, delay: float) -> None:
        """Reconcile again after `delay` (an earlier pending wake-up wins; it re-arms later)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        timer = state.timer
        if timer is not None and not timer.cancelled() and loop.time() < timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        state.timer = loop.call_later(max(0.0, delay), state.dirty.set)

    async def _reconcile(self, state: _JobState) -> None:
        if not state.adopted:
            state.adopted = True
            await self._adopt_orphan_pods(state)
        spec = state.spec
        if state.finished:
            await self._write_job_status(state)
            self._schedule_ttl(state)
            return
        if state.finishing:
            return
        active = [r for r in state.runs.values() if not r.terminal]
        if spec.get("suspend"):
            for run in active:
                self._terminate(run, "Suspended", delete=True)
            state.start_time = None
            state.start_monotonic = None
            self._set_condition(state, "Suspended", "True", "JobSuspended", "Job suspended")
            await self._write_job_status(state)
            return
        if any(c["type"] == "Suspended" and c["status"] == "True" for c in state.conditions):
            self._set_condition(state, "Suspended", "False", "JobResumed", "Job resumed")
        if state.start_time is None:
            state.start_time = now_rfc3339()
            state.start_monotonic = time.monotonic()
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and state.start_monotonic is not None:
            remaining = state.start_monotonic + float(deadline) - time.monotonic()
            if remaining <= 0:
                await self._fail(
                    state, "DeadlineExceeded", "Job was active longer than specified deadline"
                )
                return
            self._poke(state, remaining)
        if self._succeeded(state, active):
            await self._complete(state)
            return
        await self._start_pods(state, active)
        await self._write_job_status(state)

    def _succeeded(self, state: _JobState, active: list[_PodRun]) -> bool:
        completions = state.spec.get("completions")
        if state.indexed:
            return len(state.succeeded_indexes) >= int(completions or 1)
        if completions is None:
            return state.succeeded >= 1 and not active
        return state.succeeded >= int(completions)

    async def _start_pods(self, state: _JobState, active: list[_PodRun]) -> None:
        spec = state.spec
        parallelism = 1 if spec.get("parallelism") is None else int(spec["parallelism"])
        slots = parallelism - len(active)
        if slots <= 0:
            return
        wait = state.next_start_after - time.monotonic()
        if wait > 0:
            self._poke(state, wait)
            return
        completions = spec.get("completions")
        if state.indexed:
            busy = {r.index for r in active}
            todo = [
                i
                for i in range(int(completions or 1))
                if i not in state.succeeded_indexes and i not in busy
            ]
            for index in todo[:slots]:
                await self._create_pod(state, index)
            return
        if completions is None:
            wanted = 0 if state.succeeded else slots
        else:
            wanted = min(slots, int(completions) - state.succeeded - len(active))
        for _ in range(max(0, wanted)):
            await self._create_pod(state, None)

    async def _complete(self, state: _JobState) -> None:
        if not self._claim_finish(state):
            return
        for run in [r for r in state.runs.values() if not r.terminal]:
            self._terminate(run, "JobFinished", delete=True)
        state.completion_time = now_rfc3339()
        self._set_condition(
            state,
            "SuccessCriteriaMet",
            "True",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        )
        await self._wait_terminated(state)
        self._set_condition(
            state,
            "Complete",
            "True",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        )
        state.finished = True
        await self._write_job_status(state)
        self._schedule_ttl(state)
        self._changed()

    @staticmethod
    def _claim_finish(state: _JobState) -> bool:
        """Mark the Job as finishing (synchronously); False if something else already did."""
        if state.finished or state.finishing:
            return False
        state.finishing = True
        return True

    async def _fail(
        self, state: _JobState, reason: str, message: str, *, claimed: bool = False
    ) -> None:
        if not claimed and not self._claim_finish(state):
            return
        self._set_condition(state, "FailureTarget", "True", reason, message)
        await self._write_job_status(state)
        for run in [r for r in state.runs.values() if not r.terminal]:
            self._terminate(run, "JobFinished", delete=True)
        await self._wait_terminated(state)
        self._set_condition(state, "Failed", "True", reason, message)
        state.finished = True
        await self._write_job_status(state)
        self._schedule_ttl(state)
        self._changed()

    async def _wait_terminated(self, state: _JobState) -> None:
        """Wait for the Job's other pods to end (never for the calling pod's own task)."""
        current = asyncio.current_task()
        tasks = [r.task for r in state.runs.values() if r.task is not None]
        tasks += [r.terminator for r in state.runs.values() if r.terminator is not None]
        tasks = [t for t in tasks if t is not current and not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.max_grace_seconds + 5)

    def _set_condition(
        self, state: _JobState, ctype: str, status: str, reason: str, message: str
    ) -> None:
        now = now_rfc3339()
        for condition in state.conditions:
            if condition["type"] == ctype:
                if condition["status"] != status:
                    condition["lastTransitionTime"] = now
                condition.update(status=status, reason=reason, message=message, lastProbeTime=now)
                return
        state.conditions.append(
            {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastProbeTime": now,
                "lastTransitionTime": now,
            }
        )

    def _job_status(self, state: _JobState) -> JsonDict:
        runs = list(state.runs.values())
        active = sum(1 for r in runs if not r.terminal and r.stop_reason is None)
        terminating = sum(1 for r in runs if not r.terminal and r.stop_reason is not None)
        ready = sum(1 for r in runs if r.phase == "Running" and r.stop_reason is None)
        status: JsonDict = {"ready": ready, "terminating": terminating}
        if active:
            status["active"] = active
        if state.succeeded:
            status["succeeded"] = state.succeeded
        if state.failed:
            status["failed"] = state.failed
        if state.start_time:
            status["startTime"] = state.start_time
        if state.completion_time and any(
            c["type"] == "Complete" and c["status"] == "True" for c in state.conditions
        ):
            status["completionTime"] = state.completion_time
        if state.indexed and state.succeeded_indexes:
            status["completedIndexes"] = compress_indexes(state.succeeded_indexes)
        if state.conditions:
            status["conditions"] = copy.deepcopy(state.conditions)
        status["uncountedTerminatedPods"] = {}
        return status

    async def _write_job_status(self, state: _JobState) -> None:
        """Patch the Job's status if it changed (serialized: patches must arrive in order)."""
        async with state.status_lock:
            if state.gone:
                return
            desired = self._job_status(state)
            if desired == state.written:
                return
            patch: JsonDict = dict(desired)
            for key in state.written:
                if key not in desired:
                    patch[key] = None
            state.written = copy.deepcopy(desired)
            await self._patch_status(self._job_path(state), patch)
        self._changed()

    def _job_path(self, state: _JobState) -> str:
        return f"/apis/batch/v1/namespaces/{state.namespace}/jobs/{state.name}"

    def _schedule_ttl(self, state: _JobState) -> None:
        ttl = state.spec.get("ttlSecondsAfterFinished")
        if ttl is None or state.gone or state.ttl_scheduled:
            return
        state.ttl_scheduled = True
        loop = asyncio.get_running_loop()
        loop.call_later(float(ttl), lambda: self._spawn_task(self._delete_job(state)))

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _delete_job(self, state: _JobState) -> None:
        if state.gone:
            return
        await self._request("DELETE", self._job_path(state), {"propagationPolicy": "Background"})

    async def _job_gone(self, state: _JobState) -> None:
        """The Job was deleted: terminate its processes and delete its pods."""
        if state.gone:
            return
        state.gone = True
        state.dirty.set()
        if state.timer is not None:
            state.timer.cancel()
        for run in list(state.runs.values()):
            if not run.terminal:
                self._terminate(run, "JobDeleted")
        await self._wait_terminated(state)
        for run in list(state.runs.values()):
            await self._release_pod(run, delete=True)
        self._changed()

    async def _adopt_orphan_pods(self, state: _JobState) -> None:
        """Pods of this Job that no process of ours runs (a previous harness): a lost node."""
        status, listing = await self._request(
            "GET",
            f"/api/v1/namespaces/{state.namespace}/pods",
            params={"labelSelector": f"batch.kubernetes.io/controller-uid={state.uid}"},
        )
        if status >= 400 or not isinstance(listing, dict):
            return
        for pod in listing.get("items") or []:
            meta = pod.get("metadata") or {}
            with self._lock:
                known = (meta.get("namespace"), meta.get("name")) in self._runs
            if known:
                continue
            phase = (pod.get("status") or {}).get("phase")
            path = f"/api/v1/namespaces/{meta.get('namespace')}/pods/{meta.get('name')}"
            if phase not in _TERMINAL:
                await self._patch_status(
                    path,
                    {"phase": "Failed", "reason": "NodeLost", "message": "the harness restarted"},
                )
                if not state.finished:
                    state.failed += 1
            if TRACKING_FINALIZER in (meta.get("finalizers") or []):
                await self._request(
                    "PATCH",
                    path,
                    {
                        "metadata": {
                            "finalizers": [f for f in meta["finalizers"] if f != TRACKING_FINALIZER]
                            or None
                        }
                    },
                    content_type="application/merge-patch+json",
                )

    # ----- Pods ----------------------------------------------------------------------------------

    async def _create_pod(self, state: _JobState, index: int | None) -> None:
        template = copy.deepcopy(state.spec.get("template") or {})
        template_meta = template.get("metadata") or {}
        pod_spec: JsonDict = template.get("spec") or {}
        containers = pod_spec.get("containers") or []
        if not containers:
            await self._fail(state, "PodFailurePolicy", "the pod template has no containers")
            return
        labels = {
            **(template_meta.get("labels") or {}),
            "batch.kubernetes.io/controller-uid": state.uid,
            "batch.kubernetes.io/job-name": state.name,
            "controller-uid": state.uid,
            "job-name": state.name,
        }
        annotations = dict(template_meta.get("annotations") or {})
        if index is not None:
            labels[INDEX_KEY] = str(index)
            annotations[INDEX_KEY] = str(index)
        pod: JsonDict = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{state.name}-{index}-" if index is not None else f"{state.name}-",
                "namespace": state.namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": state.name,
                        "uid": state.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                "finalizers": [TRACKING_FINALIZER],
            },
            "spec": {**pod_spec, "nodeName": NODE_NAME},
        }
        if not annotations:
            del pod["metadata"]["annotations"]
        status, created = await self._request(
            "POST", f"/api/v1/namespaces/{state.namespace}/pods", pod
        )
        if status >= 400 or not isinstance(created, dict):
            _log.warning("creating a pod for job %s failed: %s %s", state.name, status, created)
            self._poke(state, 1.0)
            return
        name = created["metadata"]["name"]
        pod_dir = self.workdir / state.namespace / name
        (pod_dir / "work").mkdir(parents=True, exist_ok=True)
        run = _PodRun(
            name=name,
            namespace=state.namespace,
            job_uid=state.uid,
            job_name=state.name,
            index=index,
            pod_dir=pod_dir,
            container=containers[0],
            pod=created,
        )
        with self._lock:
            state.runs[name] = run
            self._runs[(state.namespace, name)] = run
        run.task = asyncio.create_task(self._run_pod(state, run))
        self._changed()

    def _pod_path(self, run: _PodRun) -> str:
        return f"/api/v1/namespaces/{run.namespace}/pods/{run.name}"

    async def _run_pod(self, state: _JobState, run: _PodRun) -> None:
        """Resolve the pod's configuration, run the process (restarting on OnFailure), report."""
        try:
            code: int | None = None
            if await self._wait_unstartable(run):
                return  # stopped while it could not start: never ran, so never counted
            while run.stop_reason is None:
                try:
                    argv, env, cwd = await self._prepare(run)
                except ConfigError as e:
                    if run.config_error != str(e):
                        run.config_error = str(e)
                        await self._patch_status(self._pod_path(run), self._waiting_status(run))
                    await asyncio.sleep(self.config_retry_seconds)
                    continue
                run.config_error = None
                if run.stop_reason is not None:
                    break
                code = await self._spawn_and_wait(state, run, argv, env, cwd)
                on_failure = (run.pod.get("spec") or {}).get("restartPolicy") == "OnFailure"
                if code == 0 or run.stop_reason is not None or not on_failure:
                    break
                run.restarts += 1
                state.restarts += 1
                if state.failed + state.restarts > int(state.spec.get("backoffLimit", 6)):
                    claimed = self._claim_finish(state)
                    await self._finish_run(state, run, code)
                    await self._fail(
                        state,
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                        claimed=claimed,
                    )
                    return
            await self._finish_run(state, run, code)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("running pod %s/%s failed", run.namespace, run.name)
            await self._finish_run(state, run, 128)

    def _unschedulable(self, run: _PodRun) -> str | None:
        """The scheduler's message when the pod's requests exceed the node, else None."""
        if self.node_allocatable is None:
            return None
        requests = (run.container.get("resources") or {}).get("requests") or {}
        short = [
            name
            for name, capacity in sorted(self.node_allocatable.items())
            if name in requests and parse_quantity(requests[name]) > parse_quantity(capacity)
        ]
        if not short:
            return None
        reasons = ", ".join(f"1 Insufficient {name}" for name in short)
        return f"0/1 nodes are available: {reasons}. preemption: 0/1 nodes are available."

    def _unpullable(self, run: _PodRun) -> bool:
        image = str(run.container.get("image", ""))
        return any(image.startswith(prefix) for prefix in self.missing_images)

    async def _wait_unstartable(self, run: _PodRun) -> bool:
        """Keep a pod that cannot be scheduled, or whose image cannot be pulled, Pending
        (with the status a real cluster shows) until it is stopped; True if it was."""
        unschedulable = self._unschedulable(run)
        if unschedulable is None and not self._unpullable(run):
            return False
        image = str(run.container.get("image", ""))
        attempt = 0
        while run.stop_reason is None:
            if unschedulable is not None:
                status = self._unschedulable_status(unschedulable)
            else:
                status = self._pull_failure_status(run, image, backoff=attempt % 2 == 1)
            if attempt <= 1 or unschedulable is None:
                await self._patch_status(self._pod_path(run), status)
            attempt += 1
            await asyncio.sleep(self.config_retry_seconds)
        run.phase = "Failed"
        run.counted = True  # the Job controller does not count pods that never ran
        self._changed()
        await self._release_pod(run, delete=run.deleting)
        return True

    @staticmethod
    def _unschedulable_status(message: str) -> JsonDict:
        return {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastTransitionTime": now_rfc3339(),
                }
            ],
        }

    def _pull_failure_status(self, run: _PodRun, image: str, *, backoff: bool) -> JsonDict:
        if backoff:
            waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
        else:
            waiting = {
                "reason": "ErrImagePull",
                "message": f'failed to pull and unpack image "{image}": not found',
            }
        return {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {
                    **self._container_base(run),
                    "ready": False,
                    "started": False,
                    "state": {"waiting": waiting},
                }
            ],
        }

    async def _spawn_and_wait(
        self, state: _JobState, run: _PodRun, argv: list[str], env: dict[str, str], cwd: Path
    ) -> int:
        run.argv = tuple(argv)
        run.env = env
        run.exit_code = None
        with run.log_path.open("ab") as log:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    env=env,
                    cwd=str(cwd),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                log.write(f"failed to start container: {e}\n".encode())
                run.exit_code = 128
                return 128
        run.proc = proc
        run.pid = proc.pid
        run.started_at = time.time()
        run.started_rfc = now_rfc3339()
        run.phase = "Running"
        self._changed()
        await self._patch_status(self._pod_path(run), self._running_status(run))
        await self._write_job_status(state)
        returncode = await proc.wait()
        # The container is gone: nothing else of it survives (a runtime kills the whole cgroup).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        run.exit_code = returncode if returncode >= 0 else 128 - returncode
        run.finished_at = time.time()
        return run.exit_code

    async def _finish_run(self, state: _JobState, run: _PodRun, code: int | None) -> None:
        """Record the pod's end, count it for the Job, and let the Job controller react.

        Counting and the decision to fail happen before the first await: the Job worker may
        reconcile meanwhile and must not replace a pod that is not counted yet.
        """
        if run.terminal:
            return
        run.exit_code = code
        run.finished_at = run.finished_at or time.time()
        run.phase = "Succeeded" if code == 0 else "Failed"
        action = self._count(state, run)
        failure: tuple[str, str] | None = None
        if action is not None and not state.finished and not state.finishing:
            if action == "FailJob":
                failure = ("PodFailurePolicy", self._policy_message(run))
            elif state.failed > int(state.spec.get("backoffLimit", 6)):
                failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            elif code != 0 and self.retry_backoff_seconds:
                state.next_start_after = time.monotonic() + self.retry_backoff_seconds
        claimed = failure is not None and self._claim_finish(state)
        self._changed()
        if not state.gone:
            await self._patch_status(self._pod_path(run), self._terminated_status(run))
        await self._release_pod(run, delete=run.deleting)
        if failure is not None and claimed:
            await self._fail(state, *failure, claimed=True)
            return
        state.dirty.set()

    def _count(self, state: _JobState, run: _PodRun) -> str | None:
        """Count a terminated pod; return the pod failure policy's action for a failure."""
        if run.counted or run.stop_reason in ("Suspended", "JobDeleted"):
            return None
        run.counted = True
        if run.exit_code == 0:
            if run.stop_reason == "JobFinished":
                return None
            state.succeeded += 1
            if run.index is not None:
                state.succeeded_indexes.add(run.index)
            return None
        action = self._policy_action(state, run)
        if action == "Ignore":
            return None
        state.failed += 1
        return "FailJob" if action == "FailJob" else "Count"

    def _policy_action(self, state: _JobState, run: _PodRun) -> str | None:
        policy = state.spec.get("podFailurePolicy") or {}
        container_name = run.container.get("name")
        for rule in policy.get("rules") or []:
            on_codes = rule.get("onExitCodes")
            if on_codes:
                if on_codes.get("containerName") not in (None, container_name):
                    continue
                values = {int(v) for v in on_codes.get("values") or []}
                inside = run.exit_code in values
                if (on_codes.get("operator") == "In") == inside:
                    return str(rule.get("action"))
            for pattern in rule.get("onPodConditions") or []:
                if (
                    pattern.get("type") == "DisruptionTarget"
                    and pattern.get("status", "True") == "True"
                    and run.disruption
                ):
                    return str(rule.get("action"))
        return None

    @staticmethod
    def _policy_message(run: _PodRun) -> str:
        return (
            f"Container {run.container.get('name')} for pod {run.namespace}/{run.name} failed "
            f"with exit code {run.exit_code} matching FailJob rule"
        )

    async def _release_pod(self, run: _PodRun, *, delete: bool) -> None:
        """Drop the tracking finalizer (the pod is counted); delete the pod if asked."""
        path = self._pod_path(run)
        pod = await self._get(path)
        if pod is None:
            return
        finalizers = (pod.get("metadata") or {}).get("finalizers") or []
        if TRACKING_FINALIZER in finalizers:
            kept = [f for f in finalizers if f != TRACKING_FINALIZER]
            await self._request(
                "PATCH",
                path,
                {"metadata": {"finalizers": kept or None}},
                content_type="application/merge-patch+json",
            )
        if delete:
            await self._request("DELETE", path, {"propagationPolicy": "Background"})

    def _terminate(self, run: _PodRun, reason: str, *, delete: bool = False) -> None:
        """SIGTERM the pod's process group, SIGKILL after the grace period (idempotent)."""
        if run.stop_reason is None:
            run.stop_reason = reason
        run.deleting = run.deleting or delete
        if run.terminator is None:
            run.terminator = asyncio.create_task(self._terminator(run))
        self._changed()

    async def _terminator(self, run: _PodRun) -> None:
        grace = float((run.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        grace = min(grace, self.max_grace_seconds)
        # A pod still resolving its configuration stops by itself (it checks stop_reason); one
        # that is just spawning gets its process in a moment: wait for either.
        while run.proc is None and run.task is not None and not run.task.done():
            await asyncio.sleep(0.05)
        proc = run.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    async def _on_pod(self, kind: str, pod: JsonDict) -> None:
        meta = pod.get("metadata") or {}
        with self._lock:
            run = self._runs.get((str(meta.get("namespace")), str(meta.get("name"))))
        if run is None:
            return
        if kind == "DELETED":
            if not run.terminal:
                self._terminate(run, run.stop_reason or "PodDeleted")
            return
        if meta.get("deletionTimestamp"):
            if run.terminal:
                await self._release_pod(run, delete=False)
            elif not run.deleting:
                self._terminate(run, run.stop_reason or "PodDeleted", delete=True)

    # ----- pod configuration ---------------------------------------------------------------------

    async def _prepare(self, run: _PodRun) -> tuple[list[str], dict[str, str], Path]:
        """argv, environment and working directory of the pod's first container."""
        pod = run.pod
        spec = pod.get("spec") or {}
        container = run.container
        tmp_dir = run.pod_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        volumes = await self._materialize_volumes(run, spec.get("volumes") or [], tmp_dir)
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            local = volumes.get(str(mount.get("name")))
            if local is None:
                continue
            if mount.get("subPath"):
                local = local / str(mount["subPath"])
            mounts.append((str(mount.get("mountPath", "")).rstrip("/") or "/", local))
        if not any(path == "/tmp" for path, _ in mounts):
            mounts.append(("/tmp", tmp_dir))
        mounts.sort(key=lambda m: len(m[0]), reverse=True)

        env: dict[str, str] = {
            key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ
        }
        env.update(self.extra_env)
        env["HOSTNAME"] = run.name
        env["TMPDIR"] = str(dict(mounts).get("/tmp", tmp_dir))
        container_env: dict[str, str] = {}
        if run.index is not None:  # the Job controller puts it first in the container's env
            container_env["JOB_COMPLETION_INDEX"] = str(run.index)
        for source in container.get("envFrom") or []:
            prefix = str(source.get("prefix", ""))
            for key, value in (await self._env_from(run.namespace, source)).items():
                container_env[prefix + key] = value
        for entry in container.get("env") or []:
            name = str(entry.get("name"))
            if "value" in entry:
                container_env[name] = expand_vars(str(entry["value"]), container_env)
            elif entry.get("valueFrom"):
                resolved = await self._env_value(run, entry["valueFrom"])
                if resolved is not None:
                    container_env[name] = resolved
        for key, value in container_env.items():
            env[key] = self._rewrite(value, mounts)

        image = str(container.get("image", ""))
        command = container.get("command")
        args = [expand_vars(str(a), container_env) for a in container.get("args") or []]
        if command:
            argv = [expand_vars(str(c), container_env) for c in command] + args
        else:
            argv = self._entrypoint(image) + args
        if not argv:
            raise ConfigError(f"no command and no entrypoint known for image {image!r}")
        argv = [self._resolve_program(argv[0])] + [self._rewrite(a, mounts) for a in argv[1:]]

        cwd = run.pod_dir / "work"
        working_dir = container.get("workingDir")
        if working_dir:
            mapped = Path(self._rewrite(str(working_dir), mounts))
            if mapped != Path(str(working_dir)):
                cwd = mapped
        return argv, env, cwd

    def _entrypoint(self, image: str) -> list[str]:
        best: list[str] | None = None
        best_len = -1
        for prefix, argv in self.entrypoints.items():
            if image.startswith(prefix) and len(prefix) > best_len:
                best, best_len = argv, len(prefix)
        return list(best or [])

    @staticmethod
    def _resolve_program(program: str) -> str:
        if program == "openbatch":
            return str(OPENBATCH_SCRIPT)
        if program in ("python", "python3"):
            return sys.executable
        return program

    @staticmethod
    def _rewrite(value: str, mounts: Sequence[tuple[str, Path]]) -> str:
        """Map container paths under a mount to the pod's local directories."""
        head, eq, tail = value.partition("=")
        candidates = [(value, "")] + ([(tail, head + eq)] if eq and head.startswith("-") else [])
        for text, prefix in candidates:
            for mount_path, local in mounts:
                if text == mount_path or text.startswith(mount_path.rstrip("/") + "/"):
                    return prefix + str(local) + text[len(mount_path.rstrip("/")) :]
        return value

    async def _materialize_volumes(
        self, run: _PodRun, volumes: list[JsonDict], tmp_dir: Path
    ) -> dict[str, Path]:
        result: dict[str, Path] = {}
        for volume in volumes:
            name = str(volume.get("name"))
            target = run.pod_dir / "volumes" / name
            if "emptyDir" in volume:
                target.mkdir(parents=True, exist_ok=True)
                result[name] = target
            elif "configMap" in volume or "secret" in volume:
                is_secret = "secret" in volume
                source = volume["secret"] if is_secret else volume["configMap"]
                ref_name = source.get("secretName") if is_secret else source.get("name")
                kind = "secrets" if is_secret else "configmaps"
                obj = await self._get(f"/api/v1/namespaces/{run.namespace}/{kind}/{ref_name}")
                if obj is None:
                    if source.get("optional"):
                        target.mkdir(parents=True, exist_ok=True)
                        result[name] = target
                        continue
                    raise ConfigError(f'{kind[:-1]} "{ref_name}" not found')
                data = self._decoded(obj, is_secret)
                items = source.get("items")
                files = (
                    {str(i["path"]): data[str(i["key"])] for i in items if str(i["key"]) in data}
                    if items
                    else data
                )
                target.mkdir(parents=True, exist_ok=True)
                for path, content in files.items():
                    file_path = target / path
                    file_path.parent.mkdir(parents=True, exist_ok=True)
                    file_path.write_bytes(content)
                result[name] = target
        # An emptyDir at /tmp is the TMPDIR directory itself.
        for mount in run.container.get("volumeMounts") or []:
            name = str(mount.get("name"))
            if str(mount.get("mountPath", "")).rstrip("/") == "/tmp" and any(
                v.get("name") == name and "emptyDir" in v for v in volumes
            ):
                result[name] = tmp_dir
        return result

    @staticmethod
    def _decoded(obj: JsonDict, is_secret: bool) -> dict[str, bytes]:
        result: dict[str, bytes] = {}
        if is_secret:
            for key, value in (obj.get("data") or {}).items():
                result[key] = base64.b64decode(value)
            for key, value in (obj.get("stringData") or {}).items():
                result[key] = str(value).encode()
        else:
            for key, value in (obj.get("data") or {}).items():
                result[key] = str(value).encode()
            for key, value in (obj.get("binaryData") or {}).items():
                result[key] = base64.b64decode(value)
        return result

    async def _env_from(self, namespace: str, source: JsonDict) -> dict[str, str]:
        for field, kind, is_secret in (
            ("configMapRef", "configmaps", False),
            ("secretRef", "secrets", True),
        ):
            ref = source.get(field)
            if not ref:
                continue
            obj = await self._get(f"/api/v1/namespaces/{namespace}/{kind}/{ref.get('name')}")
            if obj is None:
                if ref.get("optional"):
                    return {}
                raise ConfigError(f'{kind[:-1]} "{ref.get("name")}" not found')
            return {k: v.decode(errors="replace") for k, v in self._decoded(obj, is_secret).items()}
        return {}

    async def _env_value(self, run: _PodRun, value_from: JsonDict) -> str | None:
        for field, kind, is_secret in (
            ("secretKeyRef", "secrets", True),
            ("configMapKeyRef", "configmaps", False),
        ):
            ref = value_from.get(field)
            if not ref:
                continue
            obj = await self._get(f"/api/v1/namespaces/{run.namespace}/{kind}/{ref.get('name')}")
            data = self._decoded(obj, is_secret) if obj is not None else None
            key = str(ref.get("key"))
            if data is None or key not in data:
                if ref.get("optional"):
                    return None
                if data is None:
                    raise ConfigError(f'{kind[:-1]} "{ref.get("name")}" not found')
                raise ConfigError(
                    f"couldn't find key {key} in {kind[:-1]} {run.namespace}/{ref.get('name')}"
                )
            return data[key].decode(errors="replace")
        field_ref = value_from.get("fieldRef")
        if field_ref:
            return self._field_value(run.pod, str(field_ref.get("fieldPath", "")))
        if value_from.get("resourceFieldRef"):
            return "0"
        return None

    @staticmethod
    def _field_value(pod: JsonDict, path: str) -> str:
        meta = pod.get("metadata") or {}
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str((meta.get(match[1]) or {}).get(match[2], ""))
        simple = {
            "metadata.name": meta.get("name"),
            "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"),
            "spec.nodeName": NODE_NAME,
            "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        return str(simple.get(path) or "")

    # ----- pod statuses --------------------------------------------------------------------------

    def _container_base(self, run: _PodRun) -> JsonDict:
        return {
            "name": run.container.get("name", "main"),
            "image": run.container.get("image", ""),
            "imageID": "",
            "restartCount": run.restarts,
        }

    def _waiting_status(self, run: _PodRun) -> JsonDict:
        return {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {
                    **self._container_base(run),
                    "ready": False,
                    "started": False,
                    "state": {
                        "waiting": {
                            "reason": "CreateContainerConfigError",
                            "message": run.config_error,
                        }
                    },
                }
            ],
        }

    def _running_status(self, run: _PodRun) -> JsonDict:
        now = now_rfc3339()
        return {
            "phase": "Running",
            "startTime": run.started_rfc,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": now}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    **self._container_base(run),
                    "ready": True,
                    "started": True,
                    "state": {"running": {"startedAt": run.started_rfc}},
                }
            ],
        }

    def _terminated_status(self, run: _PodRun) -> JsonDict:
        now = now_rfc3339()
        conditions = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {
                "type": "Ready",
                "status": "False",
                "reason": "PodCompleted",
                "lastTransitionTime": now,
            },
        ]
        if run.disruption:
            conditions.append(
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "TerminationByKubelet",
                    "lastTransitionTime": now,
                }
            )
        container = {**self._container_base(run), "ready": False, "started": False}
        if run.exit_code is not None:
            container["state"] = {
                "terminated": {
                    "exitCode": run.exit_code,
                    "reason": "Completed" if run.exit_code == 0 else "Error",
                    "startedAt": run.started_rfc,
                    "finishedAt": now,
                }
            }
        return {
            "phase": run.phase,
            "conditions": conditions,
            "containerStatuses": [container],
        }
