"""All I/O of the operator behind one small port: the Kubernetes API and object storage.

Blocking clients (the `kubernetes` client, minio) run in worker threads. Every call is
idempotent at this edge: creating what exists (409) and deleting what is gone (404) succeed.
"""

import asyncio
import logging
import secrets
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from openbatch.layout import cancel_key, progress_key, result_key
from openbatch.lifecycle import ABSENT, RunnerState
from openbatch.progress import FinalResult, ProgressRecord
from openbatch.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION, format_time
from openbatch.storage import ObjectNotFound, ObjectStore, StorageError, open_uri
from openbatch_operator.errors import KubernetesUnavailable, StorageUnavailable

HTTP_NOT_FOUND = 404
_log = logging.getLogger("openbatch.operator")
HTTP_CONFLICT = 409


# The reason the Job controller gives when activeDeadlineSeconds (our backstop) killed it.
DEADLINE_EXCEEDED = "DeadlineExceeded"


def job_state(obj: Any) -> RunnerState:
    """Summarise a `V1Job` (or its dict form) into what reconcile needs."""
    data: dict[str, Any] = (
        obj if isinstance(obj, dict) else k8s.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    )
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
    )


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

    async def read_job(self, namespace: str, name: str) -> RunnerState:
        try:
            job = await asyncio.to_thread(self._batch.read_namespaced_job, name, namespace)
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                return ABSENT
            raise KubernetesUnavailable(f"reading Job {namespace}/{name}: {exc}") from exc
        return job_state(job)

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
            try:
                data = store.read_bytes(progress_key(work, shard))
            except ObjectNotFound:
                records.append(None)
                continue
            try:
                records.append(ProgressRecord.model_validate_json(data))
            except ValidationError as exc:
                # Not written by a runner (or by a newer one): no progress to mirror. The
                # runner refuses such a work dir itself, and its Job failure says so.
                _log.warning(
                    "unreadable progress record of shard %d in %s: %s", shard, work_uri, exc
                )
                records.append(None)
        try:
            result: FinalResult | None = FinalResult.model_validate_json(
                store.read_bytes(result_key(work))
            )
        except ObjectNotFound:
            result = None
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
