"""The Kubernetes backend: batches are BatchJob CRs that the operator runs.

Writes (create, cancel) go to the API server; reads and lists are served from a cache fed by
one watch, not an API call per request (a list of 10,000 CRs per `GET /v1/batches` would
cost the API server and the client seconds). The shim writes only `spec` (and annotations at
creation); `status` is the operator's (DESIGN §3: one writer per field).
"""

import asyncio
import logging
import threading
import time
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from openbatch.resource import CANCEL_REQUESTED_ANNOTATION, GROUP, PLURAL, VERSION, BatchJob
from openbatch_shim.backends.base import BatchIndex
from openbatch_shim.errors import ServiceUnavailable

HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
WATCH_TIMEOUT = 300
_log = logging.getLogger("openbatch.shim.kube")


def load_api_client() -> k8s.ApiClient:
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


class KubeBackend:
    def __init__(self, *, models: list[str], api: k8s.ApiClient | None = None) -> None:
        self._models = models
        self._api = api
        self._custom: k8s.CustomObjectsApi | None = None
        self._index: dict[str, BatchIndex] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- server lifecycle
    async def start(self) -> None:
        api = self._api or await asyncio.to_thread(load_api_client)
        self._api = api
        self._custom = k8s.CustomObjectsApi(api)
        self._thread = threading.Thread(
            target=self._watch_forever, name="batchjob-watch", daemon=True
        )
        self._thread.start()
        # Serve once the cache holds every object; a slow API server is not fatal (readyz).
        await asyncio.to_thread(self._synced.wait, 30)

    async def stop(self) -> None:
        self._stopping.set()

    def ready(self) -> bool:
        return self._synced.is_set()

    def models(self) -> list[str]:
        return list(self._models)

    def indexes(self) -> list[BatchIndex]:
        with self._lock:
            return list(self._index.values())

    # ----------------------------------------------------------------- the cache
    def _put(self, raw: dict[str, Any]) -> BatchJob | None:
        try:
            job = BatchJob.model_validate(raw)
        except ValidationError as exc:
            _log.warning("ignoring a BatchJob that does not parse: %s", exc)
            return None
        namespace = job.metadata.namespace or "default"
        with self._lock:
            current = self._index.setdefault(namespace, BatchIndex()).get(job.metadata.name)
            if current is not None and _newer(current, job):
                return current  # a watch event older than what a write already returned
            self._index[namespace].put(job)
        return job

    def _relist(self, custom: k8s.CustomObjectsApi) -> str | None:
        """Replace the cache with a fresh list; returns the list's resourceVersion."""
        listing = cast(dict[str, Any], custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))
        seen: set[tuple[str, str]] = set()
        for raw in listing.get("items", []):
            job = self._put(raw)
            if job is not None:
                seen.add((job.metadata.namespace or "default", job.metadata.name))
        with self._lock:
            for namespace, index in self._index.items():
                for job in index.ordered():
                    if (namespace, job.metadata.name) not in seen:
                        index.remove(job.metadata.name)
        self._synced.set()
        version = (listing.get("metadata") or {}).get("resourceVersion")
        return str(version) if version is not None else None

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        raw = cast(dict[str, Any], event.get("object") or {})
        if kind == "DELETED":
            meta = raw.get("metadata") or {}
            with self._lock:
                found = self._index.get(meta.get("namespace") or "default")
                if found is not None:
                    found.remove(meta.get("name", ""))
        elif kind in ("ADDED", "MODIFIED"):
            self._put(raw)

    def _watch_forever(self) -> None:
        assert self._custom is not None
        custom = self._custom
        while not self._stopping.is_set():
            try:
                version = self._relist(custom)
                watcher = k8s_watch.Watch()  # type: ignore[no-untyped-call]
                for event in watcher.stream(  # type: ignore[no-untyped-call]
                    custom.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    resource_version=version,
                    timeout_seconds=WATCH_TIMEOUT,
                ):
                    if self._stopping.is_set():
                        watcher.stop()  # type: ignore[no-untyped-call]
                        break
                    self._on_event(event)
            except Exception as exc:  # the watch ends or the API server blips: relist
                if self._stopping.is_set():
                    return
                _log.warning("BatchJob watch failed, relisting in 2s: %s", exc)
                time.sleep(2)

    # ----------------------------------------------------------------- the backend interface
    def _client(self) -> k8s.CustomObjectsApi:
        if self._custom is None:
            raise ServiceUnavailable("The Kubernetes backend is not started yet.")
        return self._custom

    async def create(self, job: BatchJob) -> BatchJob:
        namespace = job.metadata.namespace or "default"
        body = job.to_api()
        body.pop("status", None)
        try:
            raw = await asyncio.to_thread(
                self._client().create_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                body,
            )
        except ApiException as exc:
            if exc.status != HTTP_CONFLICT:
                raise ServiceUnavailable(f"Creating the BatchJob failed: {exc.reason}") from exc
            existing = await self._read(namespace, job.metadata.name)
            if existing is None:
                raise ServiceUnavailable("The BatchJob exists but cannot be read.") from exc
            return existing
        stored = self._put(cast(dict[str, Any], raw))
        if stored is None:
            raise ServiceUnavailable("The API server returned a BatchJob that does not parse.")
        return stored

    async def _read(self, namespace: str, name: str) -> BatchJob | None:
        try:
            raw = await asyncio.to_thread(
                self._client().get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                return None
            raise ServiceUnavailable(f"Reading the BatchJob failed: {exc.reason}") from exc
        return self._put(cast(dict[str, Any], raw))

    async def get(self, namespace: str, name: str) -> BatchJob | None:
        with self._lock:
            index = self._index.get(namespace)
            cached = index.get(name) if index is not None else None
        if cached is not None:
            return cached
        # Not in the cache (yet): another replica may just have created it.
        return await self._read(namespace, name)

    async def index(self, namespace: str) -> BatchIndex:
        with self._lock:
            return self._index.setdefault(namespace, BatchIndex())

    async def request_cancel(self, namespace: str, name: str) -> BatchJob | None:
        try:
            raw = await asyncio.to_thread(
                self._client().patch_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {
                    "metadata": {
                        "annotations": {CANCEL_REQUESTED_ANNOTATION: str(int(time.time()))}
                    },
                    "spec": {"cancel": True},
                },
            )
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                return None
            raise ServiceUnavailable(f"Cancelling the BatchJob failed: {exc.reason}") from exc
        return self._put(cast(dict[str, Any], raw))


def _newer(current: BatchJob, candidate: BatchJob) -> bool:
    """Whether `current` is a later version than `candidate` (resourceVersions as integers:
    opaque by contract, monotonic in practice for one object)."""
    a, b = current.metadata.resource_version, candidate.metadata.resource_version
    if a is None or b is None or not a.isdigit() or not b.isdigit():
        return False
    return int(a) > int(b)
