"""Running a chart's Deployment as a local process, from the objects applied to the emulator.

The emulator has no Deployment controller and no kubelet for Deployments (the kubelet harness
plays only Jobs), so `LocalWorkload` does what the kubelet would do for the Deployment's one
container, reading everything back from the emulated API server:
- argv: the container's `command`/`args`, or the image's ENTRYPOINT read from the Dockerfile
  that builds it (`python` is this interpreter);
- env: `value`, `valueFrom.secretKeyRef` / `configMapKeyRef` (from the applied objects);
- volumes: `configMap` and `secret` volumes are written to a local directory; env values
  under a mount path are rewritten to it; `emptyDir` at /tmp is a private TMPDIR;
- cluster DNS: env values naming an in-cluster Service URL (`http://svc.ns.svc.cluster.local:
  port`) are rewritten to the local endpoint that plays that Service;
- in-cluster credentials: KUBECONFIG points at the emulator instead of the service-account
  token, and `env_overrides` moves listening ports to free local ones.

What this cannot show: the image itself (no Docker here), the probes as the kubelet runs them,
resource limits, and RBAC (the emulator does not enforce it).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.fixtures.kube import KubeApi

REPO_ROOT = Path(__file__).resolve().parents[2]

Obj = dict[str, Any]


def dockerfile_entrypoint(dockerfile: Path) -> list[str]:
    """The exec-form ENTRYPOINT of the Dockerfile's last stage."""
    entrypoint: list[str] | None = None
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            parsed = json.loads(line.removeprefix("ENTRYPOINT").strip())
            entrypoint = [str(part) for part in parsed]
    assert entrypoint, f"{dockerfile} has no exec-form ENTRYPOINT"
    return entrypoint


class LocalWorkload:
    """One Deployment's container as a local process (start / wait_http / stop / logs)."""

    def __init__(
        self,
        kube: KubeApi,
        deployment: Obj,
        workdir: Path,
        *,
        entrypoint: list[str],
        services: Mapping[str, str] | None = None,
        env_overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.kube = kube
        self.deployment = deployment
        self.workdir = workdir
        self.entrypoint = entrypoint
        self.services = dict(services or {})
        self.env_overrides = dict(env_overrides or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.argv: list[str] = []
        self.log_path = workdir / "log"

    @property
    def pod(self) -> Obj:
        spec: Obj = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> Obj:
        (container,) = self.pod["containers"]
        result: Obj = container
        return result

    def _object(self, kind: str, name: str) -> Obj:
        namespace = self.deployment["metadata"]["namespace"]
        obj = self.kube.get(kind, name, namespace=namespace)
        assert obj is not None, f"{kind}/{name} was not applied to {namespace}"
        return obj

    def _data(self, kind: str, name: str) -> dict[str, str]:
        obj = self._object(kind, name)
        data = obj.get("data") or {}
        if kind == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return {k: str(v) for k, v in data.items()}

    def _mounts(self) -> list[tuple[str, Path]]:
        volumes = {v["name"]: v for v in self.pod.get("volumes") or []}
        mounts: list[tuple[str, Path]] = []
        for mount in self.container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            local = self.workdir / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume or "secret" in volume:
                source = volume.get("configMap") or volume["secret"]
                kind = "configmaps" if "configMap" in volume else "secrets"
                data = self._data(kind, source.get("name") or source["secretName"])
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    (local / item["path"]).write_text(data[item["key"]])
            mounts.append((mount["mountPath"], local))
        return mounts

    def _value(self, entry: Obj) -> str:
        if "value" in entry:
            return str(entry["value"])
        source = entry["valueFrom"]
        ref = source.get("secretKeyRef") or source["configMapKeyRef"]
        kind = "secrets" if "secretKeyRef" in source else "configmaps"
        return self._data(kind, ref["name"])[ref["key"]]

    def _rewrite(self, value: str, mounts: list[tuple[str, Path]]) -> str:
        for url, endpoint in self.services.items():
            value = value.replace(url, endpoint)
        for mount_path, local in mounts:
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(local) + value[len(mount_path.rstrip("/")) :]
        return value

    def prepare(self) -> None:
        """Resolve argv and env from the applied objects (no process yet)."""
        mounts = self._mounts()
        env: dict[str, str] = {}
        for entry in self.container.get("env") or []:
            env[entry["name"]] = self._rewrite(self._value(entry), mounts)
        tmp = dict(mounts).get("/tmp")  # the pod's emptyDir
        base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        self.env = {
            **base,
            **({"TMPDIR": str(tmp)} if tmp else {}),
            **env,
            "KUBECONFIG": str(self.kube.kubeconfig),
            **self.env_overrides,
        }
        argv = list(self.container.get("command") or self.entrypoint)
        argv += list(self.container.get("args") or [])
        self.argv = [sys.executable if a in ("python", "python3") else a for a in argv]

    def start(self) -> LocalWorkload:
        self.prepare()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        """Until `url` answers 200 (the way the kubelet's probe would see it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.logs()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{url} did not answer within {timeout}s:\n{self.logs()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        return process.returncode

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
