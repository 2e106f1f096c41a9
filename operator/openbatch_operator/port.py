"""All I/O of the operator behind one small port: the Kubernetes API and object storage.

Blocking clients (the `kubernetes` client, minio) run in worker threads. Every call is
idempotent at this edge: creating what exists (409) and deleting what is gone (404) succeed.
"""

import asyncio
import logging
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from openbatch.layout import cancel_key, progress_key, result_key
from openbatch.lifecycle import ABSENT, Owner, RunnerState, StartProblem
from openbatch.progress import (
    MAX_PROGRESS_BYTES,
    MAX_RESULT_BYTES,
    FinalResult,
    ProgressRecord,
    parse_record,
)
from openbatch.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION, format_time
from openbatch.storage import ObjectNotFound, ObjectStore, StorageError, open_uri
from openbatch_operator.errors import KubernetesUnavailable, StorageUnavailable

HTTP_NOT_FOUND = 404
_log = logging.getLogger("openbatch.operator")
HTTP_CONFLICT = 409


# The reason the Job controller gives when activeDeadlineSeconds (our backstop) killed it.
DEADLINE_EXCEEDED = "DeadlineExceeded"


def ownership(meta: Mapping[str, Any], batch_uid: str | None, batch_name: str) -> tuple[Owner, str]:
    """Whose a child Job is, from its controller owner reference (and why not ours).

    Only a Job whose controller is this very BatchJob (same uid) is adopted. One whose
    controller is a BatchJob of the same name with another uid was left by a deleted
    predecessor: garbage collection removes it. Anything else (no controller, another
    kind, another name) was made by someone else.
    """
    refs = [r for r in meta.get("ownerReferences") or [] if isinstance(r, Mapping)]
    controller = next((r for r in refs if r.get("controller") is True), None)
    if controller is None:
        return Owner.OTHER, "it has no controller owner reference"
    kind, name, uid = controller.get("kind"), controller.get("name"), controller.get("uid")
    if kind == KIND and str(controller.get("apiVersion", "")).startswith(f"{GROUP}/"):
        if batch_uid and uid == batch_uid:
            return Owner.THIS_BATCH, ""
        if name == batch_name:
            return Owner.EARLIER_BATCH, f"its controller is an earlier BatchJob, uid {uid}"
    return Owner.OTHER, f"its controller is {str(kind)[:63]} {str(name)[:253]}"


def job_state(obj: Any, batch_uid: str | None = None, batch_name: str = "") -> RunnerState:
    """Summarise a `V1Job` (or its dict form) into what reconcile needs."""
    data: dict[str, Any] = (
        obj if isinstance(obj, dict) else k8s.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    )
    owner, detail = ownership(data.get("metadata") or {}, batch_uid, batch_name)
    status = data.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    complete = (conditions.get("Complete") or {}).get("status") == "True"
    failed = conditions.get("Failed") or {}
    failed_for_good = failed.get("status") == "True"
    reason = failed.get("reason") if failed_for_good else None
    return RunnerState(
        exists=True,
        complete=complete,
        failed_for_good=failed_for_good,
        stopped_at_deadline=reason == DEADLINE_EXCEEDED,
        reason=reason,
        message=failed.get("message") if failed_for_good else None,
        owner=owner,
        owner_detail=detail,
    )


# Waiting reasons of a container that cannot start by itself soon; ContainerCreating and
# PodInitializing are normal steps, not problems.
START_FAILURES = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "RunContainerError",
    }
)


def pod_start_problem(pod: Mapping[str, Any]) -> StartProblem | None:
    """Why a pod cannot start (a container waiting on a missing Secret, ConfigMap or image,
    or the pod unschedulable), or None: it runs, ran, is starting normally, or is going."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    statuses = list(status.get("initContainerStatuses") or [])
    statuses += list(status.get("containerStatuses") or [])
    for container in statuses:
        waiting = ((container or {}).get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in START_FAILURES:
            return StartProblem(str(reason), str(waiting.get("message") or ""))
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return StartProblem("Unschedulable", str(condition.get("message") or ""))
    return None


class ClusterPort:
    def __init__(self, api: k8s.ApiClient) -> None:
        self._batch = k8s.BatchV1Api(api)
        self._custom = k8s.CustomObjectsApi(api)
        self._core = k8s.CoreV1Api(api)

    async def post_event(
        self, raw: dict[str, Any], type_: str, reason: str, message: str, now: datetime
    ) -> None:
        """A core/v1 Event about the BatchJob, posted now (not queued): the caller records
        the phase only after its Event exists, so a crash in between repeats the Event
        instead of losing it."""
        meta = raw.get("metadata") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
        stamp = format_time(now.astimezone(UTC))
        body = {
            "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": name,
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "openbatch-operator"},
            "reportingComponent": "openbatch-operator",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            # The client accepts plain dicts for bodies; its type hints name only CoreV1Event.
            event = cast(k8s.CoreV1Event, body)
            await asyncio.to_thread(self._core.create_namespaced_event, namespace, event)
        except ApiException as exc:
            raise KubernetesUnavailable(f"posting an Event for {namespace}/{name}: {exc}") from exc

    async def get_batchjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = await asyncio.to_thread(
                self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                return None
            raise KubernetesUnavailable(f"reading BatchJob {namespace}/{name}: {exc}") from exc
        return cast(dict[str, Any], obj)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(
                self._custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
            )
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                return  # deleted meanwhile: nothing left to report on
            raise KubernetesUnavailable(f"patching {namespace}/{name} status: {exc}") from exc

    async def read_job(
        self, namespace: str, name: str, batch_uid: str | None, batch_name: str
    ) -> RunnerState:
        try:
            job = await asyncio.to_thread(self._batch.read_namespaced_job, name, namespace)
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                return ABSENT
            raise KubernetesUnavailable(f"reading Job {namespace}/{name}: {exc}") from exc
        return job_state(job, batch_uid, batch_name)

    async def create_job(self, namespace: str, manifest: dict[str, Any]) -> None:
        try:
            # The client accepts plain dicts for bodies; its type hints name only V1Job.
            body = cast(k8s.V1Job, manifest)
            await asyncio.to_thread(self._batch.create_namespaced_job, namespace, body)
        except ApiException as exc:
            if exc.status == HTTP_CONFLICT:
                return  # created by an earlier run of this operator: that is the point
            raise KubernetesUnavailable(
                f"creating Job {namespace}/{manifest['metadata']['name']}: {exc}"
            ) from exc


def _read_capped(store: ObjectStore, key: str, limit: int) -> bytes | None:
    """At most `limit + 1` bytes of the object (enough to tell it is too large), or None
    when it does not exist: a runner-written object is never read whole."""
    try:
        with store.open_read(key) as reader:
            chunks: list[bytes] = []
            size = 0
            while size <= limit:
                chunk = reader.read(min(1 << 16, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
    except ObjectNotFound:
        return None


class StoragePort:
    """Reads what runners write (progress, result) and writes the cancel marker."""

    def _store(self, work_uri: str) -> tuple[ObjectStore, str]:
        return open_uri(work_uri)

    async def observe(
        self, work_uri: str, shards: int
    ) -> tuple[tuple[ProgressRecord | None, ...], FinalResult | None, bool]:
        try:
            return await asyncio.to_thread(self._observe, work_uri, shards)
        except StorageError as exc:
            raise StorageUnavailable(f"reading {work_uri}: {exc}") from exc

    def _observe(
        self, work_uri: str, shards: int
    ) -> tuple[tuple[ProgressRecord | None, ...], FinalResult | None, bool]:
        store, work = self._store(work_uri)
        records: list[ProgressRecord | None] = []
        for shard in range(shards):
            data = _read_capped(store, progress_key(work, shard), MAX_PROGRESS_BYTES)
            record = parse_record(ProgressRecord, data, MAX_PROGRESS_BYTES) if data else None
            if data and record is None:
                # Not written by a runner (or by a newer one), or too large: no progress to
                # mirror. The runner refuses such a work dir itself, and its Job failure says so.
                _log.warning("unreadable progress record of shard %d in %s", shard, work_uri)
            records.append(record)
        data = _read_capped(store, result_key(work), MAX_RESULT_BYTES)
        result = parse_record(FinalResult, data, MAX_RESULT_BYTES) if data else None
        if data and result is None:
            _log.warning("unreadable result record in %s", work_uri)
        return tuple(records), result, store.exists(cancel_key(work))

    async def input_present(self, input_uri: str) -> bool:
        """False only when storage says the input does not exist. If storage cannot answer,
        True: the runner starts and finds out itself, rather than the batch waiting on the
        operator's view of storage."""
        try:
            store, key = open_uri(input_uri)
            return await asyncio.to_thread(store.exists, key)
        except (StorageError, ValueError) as exc:
            _log.warning(
                "cannot check the input %s, starting the runner anyway: %s", input_uri, exc
            )
            return True

    async def write_cancel_marker(self, work_uri: str) -> None:
        store, work = self._store(work_uri)
        try:
            await asyncio.to_thread(store.put_bytes, cancel_key(work), b"cancelled by operator\n")
        except StorageError as exc:
            raise StorageUnavailable(f"writing the cancel marker in {work_uri}: {exc}") from exc
