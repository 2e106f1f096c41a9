"""Tenants stay apart (issue 8, docs/security.md), end to end on the emulated cluster.

Three namespaces watched by one operator: `a` and `b` are tenants with their own SeaweedFS
bucket and an identity scoped to it (tests/fixtures/s3.py), `c` is not in the tenants file.
The operator reads with the admin identity; runner pods get their namespace's Secret only.
Model servers are simulators that record the Authorization headers they receive.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from minio.error import S3Error

from openbatch.resource import Phase
from tests.fakes.kubelet import KubeletHarness
from tests.fixtures.kube import KopfProcess, KubeApi, RunKopf
from tests.fixtures.model_sim import ModelSimFactory, SimHandle
from tests.fixtures.s3 import SeaweedServer
from tests.operator_support import ROUTING_CONFIGMAP, S3_SECRET_NAME, operator_env
from tests.runner_support import REPO_ROOT, assert_exactly_once, chat_line, jsonl, parse_lines

MODEL = "sim-model"
PREFIX = "openbatch"
TERMINAL = {p.value for p in (Phase.COMPLETED, Phase.FAILED, Phase.EXPIRED, Phase.CANCELLED)}
PLATFORM_KEY = "platform-" + secrets.token_hex(8)
TENANT_KEY = "tenant-" + secrets.token_hex(8)
PLATFORM_KEY_SECRET = "platform-model-key"  # noqa: S105  # a Secret's name
OPENBATCH = Path(sys.executable).parent / "openbatch"


@dataclass
class Tenants:
    kube: KubeApi
    seaweed: SeaweedServer
    ns: dict[str, str]  # "a" / "b" / "c" -> namespace
    bucket: dict[str, str]  # "a" / "b" -> bucket
    routed: SimHandle  # the platform's server: demands PLATFORM_KEY
    own: SimHandle  # a tenant-run server: records what it is sent
    env: dict[str, str]
    run_kopf: RunKopf
    harnesses: dict[str, KubeletHarness] = field(default_factory=dict)
    operator: KopfProcess | None = None

    def started(self, tenant: str, name: str) -> float:
        """When the (first) runner process of that batch started, on the harness clock."""
        harness = self.harnesses[tenant]
        pod = harness.pods(f"{name}-runner")[0]
        return harness.process_started_at(pod.name, self.ns[tenant])

    def start_operator(self, **overrides: str) -> KopfProcess:
        env = {**self.env, **{f"OPENBATCH_OPERATOR_{k.upper()}": v for k, v in overrides.items()}}
        extra = [a for ns in (self.ns["b"], self.ns["c"]) for a in ("--namespace", ns)]
        self.operator = self.run_kopf("openbatch_operator.handlers", env=env, extra_args=extra)
        return self.operator

    def upload(self, tenant: str, key: str, n: int) -> str:
        data = jsonl([chat_line(i, model=MODEL) for i in range(n)])
        self.seaweed.client().put_object(self.bucket[tenant], key, io.BytesIO(data), len(data))
        return key

    def apply(self, tenant: str, name: str, **spec: Any) -> None:
        spec.setdefault("input", {"s3": {"bucket": self.bucket.get(tenant), "key": "x"}})
        body = {
            "apiVersion": "openbatch.dev/v1alpha1",
            "kind": "BatchJob",
            "metadata": {"name": name},
            "spec": {"endpoint": "/v1/chat/completions", **spec},
        }
        self.kube.create("batchjobs", body, namespace=self.ns[tenant])

    def wait(self, tenant: str, name: str, timeout: float = 90) -> dict[str, Any]:
        obj = self.kube.wait_for(
            "batchjobs",
            name,
            lambda o: ((o or {}).get("status") or {}).get("phase") in TERMINAL,
            timeout=timeout,
            namespace=self.ns[tenant],
        )
        assert obj is not None
        status: dict[str, Any] = obj["status"]
        return status

    def job(self, tenant: str, name: str) -> dict[str, Any] | None:
        return self.kube.get("jobs", name, namespace=self.ns[tenant])


def _refused(status: dict[str, Any], reason: str = "PolicyViolation") -> str:
    assert status["phase"] == "Failed", status
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == reason, failed
    message: str = status["message"]
    return message


def _tenant_hostname() -> str:
    """A name for the tenant-run simulator that is not a loopback *literal*: this machine's
    own host name (it resolves to loopback here, which the text-only policy cannot see;
    a real cluster's egress policy would, docs/security.md)."""
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, None)
    except OSError:
        pytest.skip(f"this machine's host name {name!r} does not resolve")
    return name


@pytest.fixture
def tenants(  # pytest injects fixtures by name
    kube_api: KubeApi,
    kubelet: KubeletHarness,
    run_kopf: RunKopf,
    seaweed: SeaweedServer,
    tenant_buckets: tuple[str, str],
    model_sim_factory: ModelSimFactory,
    tmp_path: Path,
) -> Iterator[Tenants]:
    suffix = secrets.token_hex(3)
    ns = {"a": kube_api.namespace, "b": f"tenancy-b-{suffix}", "c": f"tenancy-c-{suffix}"}
    bucket = {"a": tenant_buckets[0], "b": tenant_buckets[1]}
    for extra in (ns["b"], ns["c"]):
        kube_api.request("POST", "/api/v1/namespaces", {"metadata": {"name": extra}})
    routed = model_sim_factory(slots=8, models=[MODEL], api_key=PLATFORM_KEY)
    own = model_sim_factory(slots=8, models=[MODEL])
    routes = {
        "models": {
            MODEL: {
                "urls": [routed.base_url],
                "apiKeySecret": {"name": PLATFORM_KEY_SECRET, "key": "apiKey"},
            }
        }
    }
    for tenant, namespace in ns.items():
        access, secret = seaweed.scoped[bucket[tenant]] if tenant in bucket else ("x", "y")
        secrets_ = {
            S3_SECRET_NAME: {"accessKey": access, "secretKey": secret},
            PLATFORM_KEY_SECRET: {"apiKey": PLATFORM_KEY},
            "tenant-model-key": {"apiKey": TENANT_KEY},
        }
        for name, data in secrets_.items():
            kube_api.create(
                "secrets", {"metadata": {"name": name}, "stringData": data}, namespace=namespace
            )
        kube_api.create(
            "configmaps",
            {"metadata": {"name": ROUTING_CONFIGMAP}, "data": {"models.json": json.dumps(routes)}},
            namespace=namespace,
        )
    tenants_file = tmp_path / "tenants.json"
    tenants_file.write_text(
        json.dumps(
            {
                "tenants": [
                    {
                        "namespace": ns[t],
                        "storage": {
                            "bucket": bucket[t],
                            "prefix": PREFIX,
                            "credentialsSecret": S3_SECRET_NAME,
                        },
                        "caps": {"maxInFlight": 32, "maxParallelism": 2, "maxPriority": 10},
                        "allowedModelServerURLs": [_tenant_hostname()] if t == "a" else [],
                    }
                    for t in ("a", "b")
                ],
                "defaults": {"caps": {"maxRunningBatches": 4}},
            }
        )
    )
    routing_file = tmp_path / "models.json"
    routing_file.write_text(json.dumps(routes))
    env = operator_env(
        seaweed,
        "openbatch-default-unused",
        poll_interval_seconds="0.5",
        commit_interval_seconds="0.3",
        runner_grace_seconds="2",
        metrics_port="0",
        tenants_file=str(tenants_file),
        routing_file=str(routing_file),
        # The old global key: it must reach routed servers only, never a spec's server.
        model_server_api_key_secret=PLATFORM_KEY_SECRET,
    )
    harnesses = {
        t: KubeletHarness(kube_api.url, namespace=ns[t], workdir=tmp_path / f"kubelet-{t}").start()
        for t in ("b", "c")
    }
    state = Tenants(
        kube_api, seaweed, ns, bucket, routed, own, env, run_kopf, {"a": kubelet, **harnesses}
    )
    try:
        yield state
    finally:
        for harness in harnesses.values():
            harness.stop()
        for extra in (ns["b"], ns["c"]):
            _purge(kube_api, extra)


def _purge(kube: KubeApi, namespace: str) -> None:
    def purge(emulator: Any) -> None:
        emulator.purge_namespace(namespace)

    kube.emulator.call(purge)


def _input(t: Tenants, tenant: str, key: str) -> dict[str, Any]:
    return {"s3": {"bucket": t.bucket[tenant], "key": key}}


def test_storage_is_isolated_between_tenants(tenants: Tenants) -> None:
    t = tenants
    key_a = t.upload("a", f"{PREFIX}/in-a.jsonl", 30)
    key_b = t.upload("b", f"{PREFIX}/in-b.jsonl", 40)
    t.start_operator()
    # A names B's object: refused before any runner starts, nothing read.
    t.apply("a", "steal", input=_input(t, "b", key_b))
    # A names its own bucket outside its prefix, and a '..' escape.
    t.apply("a", "outside", input={"s3": {"bucket": t.bucket["a"], "key": "elsewhere.jsonl"}})
    t.apply("a", "dots", input={"s3": {"bucket": t.bucket["a"], "key": f"{PREFIX}/../x.jsonl"}})
    t.apply("a", "mine", input=_input(t, "a", key_a))
    t.apply("b", "theirs", input=_input(t, "b", key_b))
    t.apply("c", "unlisted", input=_input(t, "b", key_b))
    assert "outside this namespace's storage root" in _refused(t.wait("a", "steal"))
    assert "outside" in _refused(t.wait("a", "outside"))
    assert "'..'" in _refused(t.wait("a", "dots"))
    assert "not an OpenBatch tenant" in _refused(t.wait("c", "unlisted"))
    for tenant, name in (("a", "steal"), ("a", "outside"), ("a", "dots"), ("c", "unlisted")):
        assert t.job(tenant, f"{name}-runner") is None, name
    # Both tenants' own batches complete, results inside their own roots.
    for tenant, name, n in (("a", "mine", 30), ("b", "theirs", 40)):
        status = t.wait(tenant, name)
        assert status["phase"] == "Completed", status
        assert status["outputURI"].startswith(f"s3://{t.bucket[tenant]}/{PREFIX}/files/")
        client = t.seaweed.scoped_client(t.bucket[tenant])
        out_key = status["outputURI"].removeprefix(f"s3://{t.bucket[tenant]}/")
        out = parse_lines(client.get_object(t.bucket[tenant], out_key).read())
        assert_exactly_once({f"req-{i}" for i in range(n)}, out, [])
    # The runner pods reference only their own namespace's credentials Secret, and no Secret
    # holding the operator's credential exists in any tenant namespace.
    for tenant, name in (("a", "mine"), ("b", "theirs")):
        job = t.job(tenant, f"{name}-runner")
        assert job is not None
        env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        storage = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in env
            if e["name"].startswith("OPENBATCH_S3_") and "valueFrom" in e
        }
        assert storage == {S3_SECRET_NAME}
        assert not any(e.get("value") == t.seaweed.secret_key for e in env)
    for namespace in t.ns.values():
        for secret in t.kube.list_objects("secrets", namespace=namespace):
            values = {**(secret.get("stringData") or {}), **(secret.get("data") or {})}
            assert t.seaweed.secret_key not in json.dumps(values)
            assert t.seaweed.access_key not in json.dumps(values)


def test_a_tenant_credential_cannot_read_another_tenants_data(tenants: Tenants) -> None:
    """Even if asked (a runner that skipped the operator's checks), A's credential cannot
    read B's objects: the platform's scoping is the last line, and it holds."""
    t = tenants
    key_b = t.upload("b", f"{PREFIX}/secret-b.jsonl", 5)
    with pytest.raises(S3Error) as denied:
        t.seaweed.scoped_client(t.bucket["a"]).get_object(t.bucket["b"], key_b)
    assert denied.value.code == "AccessDenied"
    access, secret = t.seaweed.scoped[t.bucket["a"]]
    env = {
        **os.environ,
        "OPENBATCH_S3_ENDPOINT": t.seaweed.endpoint,
        "OPENBATCH_S3_ACCESS_KEY": access,
        "OPENBATCH_S3_SECRET_KEY": secret,
    }
    result = subprocess.run(  # the runner itself, run as a compromised pod of A would
        [
            str(OPENBATCH),
            "run",
            f"s3://{t.bucket['b']}/{key_b}",
            "--base-url",
            t.own.base_url,
            "--work-dir",
            f"s3://{t.bucket['a']}/{PREFIX}/stolen.work",
            "--output",
            f"s3://{t.bucket['a']}/{PREFIX}/stolen.jsonl",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode != 0, result.stdout
    assert "denied" in (result.stderr + result.stdout).lower(), result.stderr[-2000:]
    assert t.own.stats()["requests"] == 0
    names = [o.object_name for o in t.seaweed.client().list_objects(t.bucket["a"], recursive=True)]
    assert not any(n and n.endswith("stolen.jsonl") for n in names)


def test_model_server_keys_reach_only_their_own_servers(tenants: Tenants) -> None:
    t = tenants
    key = t.upload("a", f"{PREFIX}/keys.jsonl", 20)
    own_url = f"http://{_tenant_hostname()}:{t.own.port}/v1"
    t.start_operator()
    t.apply("a", "routed", input=_input(t, "a", key))
    t.apply("a", "own-server", input=_input(t, "a", key), modelServer={"url": own_url})
    for name in ("routed", "own-server"):
        status = t.wait("a", name)
        assert status["phase"] == "Completed", (name, status)
        assert status["requestCounts"]["completed"] == 20
    # The routed server demands the platform key: completing proves it was sent there.
    assert t.routed.stats()["authorization"] == {f"Bearer {PLATFORM_KEY}": 20}
    # The tenant-run server saw no key at all: neither the entry's nor the old global one.
    assert t.own.stats()["authorization"] == {"": 20}
    # With a key of its own, the tenant's server gets exactly that key.
    t.own.reset()
    t.apply(
        "a",
        "own-key",
        input=_input(t, "a", key),
        modelServer={
            "url": own_url,
            "apiKeySecretRef": {"name": "tenant-model-key", "key": "apiKey"},
        },
    )
    assert t.wait("a", "own-key")["phase"] == "Completed"
    assert t.own.stats()["authorization"] == {f"Bearer {TENANT_KEY}": 20}
    job = t.job("a", "own-key-runner")
    assert job is not None
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
    assert PLATFORM_KEY_SECRET not in refs


REFUSED_URLS = {
    "metadata-v4": ("http://169.254.169.254/latest/v1", "metadata"),
    "metadata-name": ("http://metadata.google.internal/v1", "metadata"),
    "metadata-v6": ("http://[fd00:ec2::254]/v1", "metadata"),
    "loopback": ("http://127.0.0.1:1/v1", "loopback"),
    "numeric-loopback": ("http://2130706433:1/v1", "non-canonical"),
    # The schema's pattern refuses userinfo (the CRD in a real cluster, the models here).
    "userinfo": ("http://user:pw@{host}:1/v1", "spec.modelServer.url"),
    "not-allowed": ("http://kubernetes.default.svc/v1", "not among"),
}


def test_refused_model_server_urls_fail_before_anything_runs(tenants: Tenants) -> None:
    t = tenants
    key = t.upload("a", f"{PREFIX}/url.jsonl", 3)
    t.start_operator()
    # The emulator runs no CEL (the CRD refuses the static cases in a real cluster); the
    # operator refuses them all the same.
    for name, (url, _) in REFUSED_URLS.items():
        server = {"url": url.format(host=_tenant_hostname())}
        t.apply("a", name, input=_input(t, "a", key), modelServer=server)
    for name, (_, why) in REFUSED_URLS.items():
        reason = "InvalidSpec" if name == "userinfo" else "PolicyViolation"
        assert why in _refused(t.wait("a", name), reason), name
        assert t.job("a", f"{name}-runner") is None
    assert t.own.stats()["requests"] == 0 and t.routed.stats()["requests"] == 0


def test_caps_are_refused_and_capacity_is_shared(tenants: Tenants) -> None:
    t = tenants
    key_a = t.upload("a", f"{PREFIX}/cap.jsonl", 40)
    key_b = t.upload("b", f"{PREFIX}/cap.jsonl", 40)
    t.routed.configure(service_time=0.02)
    t.start_operator(max_concurrent_batches="2")
    t.apply("a", "greedy-priority", input=_input(t, "a", key_a), priority=1000)
    t.apply("a", "greedy-shards", input=_input(t, "a", key_a), parallelism=3)
    assert "priority 1000 exceeds this namespace's cap of 10" in _refused(
        t.wait("a", "greedy-priority")
    )
    assert "parallelism 3 exceeds" in _refused(t.wait("a", "greedy-shards"))
    # A floods the queue first, B arrives later with fewer: both progress, and B's batches
    # are not stuck behind all of A's.
    for i in range(6):
        t.apply("a", f"flood-{i}", input=_input(t, "a", key_a), concurrency={"maxInFlight": 4})
    for i in range(2):
        t.apply("b", f"late-{i}", input=_input(t, "b", key_b), concurrency={"maxInFlight": 4})
    done = {("a", f"flood-{i}"): t.wait("a", f"flood-{i}", 180) for i in range(6)}
    done |= {("b", f"late-{i}"): t.wait("b", f"late-{i}", 180) for i in range(2)}
    assert {s["phase"] for s in done.values()} == {"Completed"}
    started = {key: t.started(*key) for key in done}
    late = [started["b", f"late-{i}"] for i in range(2)]
    # Oldest first would run all six of A's before B's; fair admission gives B the next
    # freed slot (it holds none) and alternates after that.
    assert min(late) < started["a", "flood-3"], started
    assert max(late) < started["a", "flood-5"], started
    # A sharded batch within the caps splits its ceiling: 2 shards x 16 = 32 in flight.
    t.apply(
        "a", "split", input=_input(t, "a", key_a), parallelism=2, concurrency={"maxInFlight": 32}
    )
    assert t.wait("a", "split")["phase"] == "Completed"
    job = t.job("a", "split-runner")
    assert job is not None
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--concurrency") + 1] == "16"
    # Above the namespace's cap of 32, maxInFlight is clamped: 4096 asked, 32 / 2 per shard.
    t.apply(
        "a",
        "clamped",
        input=_input(t, "a", key_a),
        parallelism=2,
        concurrency={"maxInFlight": 4096},
    )
    assert t.wait("a", "clamped")["phase"] == "Completed"
    job = t.job("a", "clamped-runner")
    assert job is not None
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--concurrency") + 1] == "16"
    assert args[args.index("--max-concurrency") + 1] == "16"
