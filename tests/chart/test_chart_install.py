"""The closest to `helm install` this machine allows: the default install's manifests, rendered
by Helm, applied with the real kubectl to the emulated cluster of the operator tests; the
operator then runs from the applied Deployment's settings and a BatchJob completes.

What plays what (docs/install.md, "What CI proves"):
- the emulator (tests/fakes/kube_emulator.py) is the API server; the chart's kinds it does not
  serve by default (Deployments, RBAC, NetworkPolicies, ...) are registered as plain stored
  resources: nothing enforces RBAC or NetworkPolicies here;
- SeaweedFS plays the chart's MinIO Service (its URL is rewritten to SeaweedFS's, as DNS would
  resolve it), with the chart's credential Secrets set to SeaweedFS's identity; the MinIO
  StatefulSet is applied but not run, and its setup hook (buckets, users) is played by the test
  (the bucket exists; SeaweedFS has one identity);
- `LocalWorkload` (tests/chart/workloads.py) runs the operator's and the shim's Deployment
  containers with the env, Secrets and ConfigMap mounts read back from the emulator; the
  kubelet harness runs the runner Jobs, with the chart's runner Secret and routing ConfigMap.

`ChartInstall.start(component)` runs any Deployment of the chart the same way: the second test
starts the shim too and sends the batch through the official OpenAI client, authenticated with
the key the chart generated, as mounted from the applied Secret.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart_support import chart_crds, is_hook, render
from tests.chart.workloads import REPO_ROOT, LocalWorkload, dockerfile_entrypoint
from tests.fakes.kube_emulator import EmulatorThread, KubeEmulator, ResourceSpec
from tests.fakes.kubelet import KubeletHarness
from tests.fixtures.kube import KubeApi
from tests.fixtures.model_sim import ModelSimFactory
from tests.fixtures.s3 import SeaweedServer
from tests.operator_support import wait_for_metric
from tests.runner_support import (
    assert_exactly_once,
    chat_line,
    jsonl,
    parse_lines,
    read_uri,
    write_uri,
)

RELEASE = "ob"
FULLNAME = f"{RELEASE}-openbatch"
MODEL = "sim-model"
TERMINAL = {"Completed", "Failed", "Expired", "Cancelled"}
DOCKERFILES = {
    "operator": REPO_ROOT / "operator" / "Dockerfile",
    "shim": REPO_ROOT / "api_shim" / "Dockerfile",
}
# The images' entrypoints as the chart relies on them (no `command` in the Deployments).
ENTRYPOINTS = {
    "operator": ["python", "-m", "openbatch_operator"],
    "shim": ["python", "-m", "openbatch_shim"],
}
SHIM_MISSING = importlib.util.find_spec("openbatch_shim") is None

# Kinds the chart renders that the emulator does not serve out of the box.
CHART_KINDS = (
    ResourceSpec("", "v1", "serviceaccounts", "ServiceAccount", ("sa",)),
    ResourceSpec("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", ("pvc",)),
    ResourceSpec("apps", "v1", "deployments", "Deployment", ("deploy",), status_subresource=True),
    ResourceSpec("apps", "v1", "statefulsets", "StatefulSet", ("sts",), status_subresource=True),
    ResourceSpec("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ResourceSpec("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ResourceSpec(
        "rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False
    ),
    ResourceSpec(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        namespaced=False,
    ),
    ResourceSpec("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", ("netpol",)),
    ResourceSpec("networking.k8s.io", "v1", "ingresses", "Ingress", ("ing",)),
    ResourceSpec("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", ("pdb",)),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _entrypoint(component: str) -> list[str]:
    """The image's entrypoint, checked against its Dockerfile when there is one."""
    dockerfile = DOCKERFILES[component]
    if dockerfile.exists():
        assert dockerfile_entrypoint(dockerfile) == ENTRYPOINTS[component]
    return ENTRYPOINTS[component]


def _serve_chart_kinds(emulator: EmulatorThread) -> None:
    def register(emu: KubeEmulator) -> None:
        for spec in CHART_KINDS:
            try:
                emu.find_spec(f"{spec.api_version}/{spec.plural}")
            except KeyError:
                emu.register(spec)

    emulator.call(register)


@dataclass
class ChartInstall:
    kube: KubeApi
    kubelet: KubeletHarness
    seaweed: SeaweedServer
    bucket: str
    objects: list[dict[str, Any]]
    workdir: Path
    minio_url: str
    running: list[LocalWorkload] = field(default_factory=list)

    def applied(self, kind: str, name: str) -> dict[str, Any]:
        obj = self.kube.get(kind, name)
        assert obj is not None, f"{kind}/{name} was not applied"
        return obj

    def start(self, component: str, **env_overrides: str) -> LocalWorkload:
        """Run the chart's `<fullname>-<component>` Deployment as the kubelet would."""
        deployment = self.applied("deployments", f"{FULLNAME}-{component}")
        workload = LocalWorkload(
            self.kube,
            deployment,
            self.workdir / component,
            entrypoint=_entrypoint(component),
            services={self.minio_url: self.seaweed.endpoint},
            env_overrides=env_overrides,
        )
        self.running.append(workload.start())
        return workload

    def wait_phase(self, name: str, timeout: float = 60) -> dict[str, Any]:
        def done(obj: dict[str, Any] | None) -> bool:
            return ((obj or {}).get("status") or {}).get("phase") in TERMINAL

        obj = self.kube.wait_for("batchjobs", name, done, timeout=timeout)
        assert obj is not None
        return obj


@pytest.fixture
def chart_install(  # pytest injects fixtures by name
    kube_api: KubeApi,
    kubelet: KubeletHarness,
    seaweed: SeaweedServer,
    s3_bucket: str,
    model_sim_factory: ModelSimFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ChartInstall]:
    for key, value in seaweed.env().items():  # the test itself uploads and reads results
        monkeypatch.setenv(key, value)
    sim = model_sim_factory(slots=8, service_time=0.01, models=[MODEL])
    # The default install; only what this environment dictates is set: the bucket, the
    # credentials SeaweedFS knows, and a routing-table entry for the simulator.
    values = {
        "storage": {
            "bucket": s3_bucket,
            "accessKey": seaweed.access_key,
            "secretKey": seaweed.secret_key,
        },
        "runner": {"s3": {"accessKey": seaweed.access_key, "secretKey": seaweed.secret_key}},
        "routing": {"models": {MODEL: [sim.base_url]}},
    }
    objects = render(values, namespace=kube_api.namespace, release=RELEASE)
    _serve_chart_kinds(kube_api.emulator)
    # A kubectl discovery cache of its own: the kinds registered above must be seen.
    kube = KubeApi(kube_api.emulator, kube_api.namespace, kube_api.kubeconfig, tmp_path / "kc")
    (tmp_path / "crds.yaml").write_text(yaml.safe_dump_all(chart_crds()))
    # Helm applies the release's manifests and runs hooks separately: hooks are not applied.
    manifests = [o for o in objects if not is_hook(o)]
    (tmp_path / "manifests.yaml").write_text(yaml.safe_dump_all(manifests))
    kube.kubectl("apply", "-f", str(tmp_path / "crds.yaml"))
    kube.kubectl("apply", "-f", str(tmp_path / "manifests.yaml"))
    minio_url = f"http://{FULLNAME}-minio.{kube_api.namespace}.svc.cluster.local:9000"
    install = ChartInstall(kube, kubelet, seaweed, s3_bucket, objects, tmp_path, minio_url)
    try:
        yield install
    finally:
        for workload in install.running:
            workload.stop()
        for obj in manifests:  # cluster-scoped objects outlive the namespace
            if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                kube.delete(obj["kind"].lower() + "s", obj["metadata"]["name"])


def _start_operator(install: ChartInstall) -> tuple[LocalWorkload, int]:
    """The operator from the applied Deployment; its ports move to free local ones."""
    container = install.applied("deployments", f"{FULLNAME}-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OPENBATCH_OPERATOR_LIVENESS"].endswith(f":{ports['health']}/healthz")
    assert env["OPENBATCH_OPERATOR_METRICS_PORT"] == str(ports["metrics"])
    liveness, metrics = _free_port(), _free_port()
    operator = install.start(
        "operator",
        OPENBATCH_OPERATOR_LIVENESS=f"http://127.0.0.1:{liveness}/healthz",
        OPENBATCH_OPERATOR_METRICS_PORT=str(metrics),
    )
    operator.wait_http(f"http://127.0.0.1:{liveness}/healthz")
    return operator, metrics


def test_default_install_applies_and_runs_a_batch(
    chart_install: ChartInstall, tmp_path: Path
) -> None:
    install = chart_install
    ns = install.kube.namespace
    # Everything the release holds is there, as kubectl sees it.
    listed = install.kube.kubectl(
        "get", "deploy,sts,svc,sa,cm,secret,netpol,role,rolebinding", "-o", "name"
    ).stdout.split()
    for name in (
        f"deployment.apps/{FULLNAME}-operator",
        f"deployment.apps/{FULLNAME}-shim",
        f"statefulset.apps/{FULLNAME}-minio",
        f"networkpolicy.networking.k8s.io/{FULLNAME}-runner",
        f"configmap/{FULLNAME}-routing",
        f"secret/{FULLNAME}-runner-s3",
        f"role.rbac.authorization.k8s.io/{FULLNAME}-operator",
    ):
        assert name in listed, listed
    operator, metrics = _start_operator(install)
    assert operator.env["OPENBATCH_OPERATOR_NAMESPACES"] == ns
    assert operator.env["OPENBATCH_S3_ENDPOINT"] == install.seaweed.endpoint
    assert operator.env["OPENBATCH_OPERATOR_TENANTS_FILE"].startswith(str(operator.workdir))

    # A kubectl user's batch, routed through the chart's routing table.
    lines = [chat_line(i, model=MODEL) for i in range(20)]
    write_uri(f"s3://{install.bucket}/inputs/chart.jsonl", jsonl(lines))
    batch = {
        "apiVersion": "openbatch.dev/v1alpha1",
        "kind": "BatchJob",
        "metadata": {"name": "chart-batch", "namespace": ns},
        "spec": {
            "input": {"s3": {"bucket": install.bucket, "key": "inputs/chart.jsonl"}},
            "endpoint": "/v1/chat/completions",
        },
    }
    (tmp_path / "batch.yaml").write_text(yaml.safe_dump(batch))
    install.kube.kubectl("apply", "-f", str(tmp_path / "batch.yaml"))
    status = install.wait_phase("chart-batch")["status"]
    assert status["phase"] == "Completed", (status, operator.logs()[-3000:])
    assert status["requestCounts"] == {"total": 20, "completed": 20, "failed": 0}
    out = parse_lines(read_uri(status["outputURI"]))
    assert_exactly_once({f"req-{i}" for i in range(20)}, out, [])

    # The runner pod got what the chart configured.
    job = install.applied("jobs", "chart-batch-runner")
    pod = job["spec"]["template"]["spec"]
    runner = pod["containers"][0]
    assert runner["image"] == "ghcr.io/openbatch/openbatch-runner:0.1.0"
    assert runner["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in runner["env"] if "valueFrom" in e}
    assert refs == {f"{FULLNAME}-runner-s3"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["routing"]["configMap"]["name"] == f"{FULLNAME}-routing"
    wait_for_metric(metrics, 'openbatch_batches{phase="Completed"} 1.0')


@pytest.mark.skipif(SHIM_MISSING, reason="the API shim (openbatch_shim) is not in this tree yet")
def test_default_install_runs_a_batch_through_the_shim(chart_install: ChartInstall) -> None:
    """openai client -> shim -> BatchJob -> operator -> runner Job, all from the manifests."""
    from openai import OpenAI

    install = chart_install
    _start_operator(install)
    container = install.applied("deployments", f"{FULLNAME}-shim")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["ports"][0]["containerPort"] == 8000
    port = _free_port()
    shim = install.start("shim", OPENBATCH_SHIM_HOST="127.0.0.1", OPENBATCH_SHIM_PORT=str(port))
    shim.wait_http(f"http://127.0.0.1:{port}/readyz")
    # The default tenant's generated key, as mounted into the shim.
    keys = json.loads((shim.workdir / "volumes" / "api-keys" / "api-keys.json").read_text())
    ((api_key, tenant),) = keys.items()
    assert tenant == install.kube.namespace
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]  # the chart's routing table
    lines = [chat_line(i, model=MODEL) for i in range(20)]
    uploaded = client.files.create(file=("chart.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", (batch, shim.logs()[-3000:])
    assert batch.request_counts is not None and batch.request_counts.completed == 20
    assert batch.output_file_id is not None
    out = parse_lines(client.files.content(batch.output_file_id).read())
    assert_exactly_once({f"req-{i}" for i in range(20)}, out, [])
