"""docs/install.md and the chart README as written: every command and values block renders
what the text says (release and namespace from the commands themselves)."""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import sys
from typing import Any, cast

import pytest
import yaml

from tests.chart.chart_support import Obj, container_env, find, one, pod_spec, render
from tests.docs_support import block_with, blocks, shell_lines
from tests.runner_support import REPO_ROOT

INSTALL = "docs/install.md"


def _helm_install(line: str) -> tuple[str, str, dict[str, Any]]:
    """(release, namespace, values) of a `helm install RELEASE charts/openbatch ...` line."""
    args = shlex.split(line)
    assert args[:2] == ["helm", "install"] and args[3] == "charts/openbatch", args
    namespace, values = "default", cast(dict[str, Any], {})
    for i, arg in enumerate(args):
        if arg == "--namespace":
            namespace = args[i + 1]
        if arg == "--set-json":
            path, _, raw = args[i + 1].partition("=")
            node = values
            *parents, leaf = path.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = json.loads(raw)
    return args[2], namespace, values


def _installs() -> list[str]:
    """Every `helm install` in the guide and the chart README."""
    found = []
    for doc in (INSTALL, "charts/openbatch/README.md"):
        for block in blocks(doc, "sh"):
            found += [ln for ln in shell_lines(block) if ln.startswith("helm install")]
    return found


def test_the_install_commands_are_found() -> None:
    # The guide's install, its kind walkthrough and the chart README: three places.
    assert len(_installs()) == 3


@pytest.mark.parametrize("line", _installs())
def test_every_helm_install_renders_its_routing_table(line: str) -> None:
    release, namespace, values = _helm_install(line)
    assert (release, namespace) == ("openbatch", "openbatch")  # what the other steps assume
    objects = render(values, release=release, namespace=namespace)
    routing = json.loads(one(objects, "ConfigMap", "openbatch-routing")["data"]["models.json"])
    assert routing["models"].keys() == values["routing"]["models"].keys()


def _api_keys(objects: list[Obj]) -> bytes:
    secret = one(objects, "Secret", "openbatch-api-keys")
    data = secret.get("data") or {}
    if "api-keys.json" in data:
        return base64.b64decode(data["api-keys.json"])
    return str(secret["stringData"]["api-keys.json"]).encode()


@pytest.mark.parametrize(
    "steps",
    [shell_lines(b) for b in blocks(INSTALL, "sh") if "port-forward svc/" in b],
    ids=["first-steps", "kind-walkthrough"],
)
def test_first_steps_name_what_the_install_creates_and_read_a_key(steps: list[str]) -> None:
    # The block's own install when it has one (the walkthrough), else the guide's first.
    own = [ln for ln in steps if ln.startswith("helm install")]
    first = [ln for ln in shell_lines(blocks(INSTALL, "sh")[0]) if ln.startswith("helm")]
    release, namespace, values = _helm_install((own or first)[0])
    objects = render(values, release=release, namespace=namespace)
    steps = steps[next(i for i, s in enumerate(steps) if "port-forward" in s) :]
    forward = shlex.split(steps[0])
    assert forward[1:3] == ["-n", namespace] and forward[3] == "port-forward"
    service = one(objects, "Service", forward[4].removeprefix("svc/"), namespace)
    assert str(service["spec"]["ports"][0]["port"]) == forward[5].split(":")[1]
    # `kubectl get secret openbatch-api-keys -o jsonpath=... | base64 -d | python3 -c ...`:
    # the secret and key exist, and the one-liner prints a key the shim accepts.
    key_line = next(s for s in steps if "get secret" in s)
    assert "openbatch-api-keys" in key_line and "api-keys\\.json" in key_line
    one_liner = key_line.split("python3 -c ", 1)[1].rstrip(")")
    printed = subprocess.run(
        [sys.executable, "-c", shlex.split(one_liner)[0]],
        input=_api_keys(objects),
        capture_output=True,
        check=True,
    ).stdout.decode()
    keys = json.loads(_api_keys(objects))
    assert printed.strip() in keys and keys[printed.strip()] == namespace


def test_upgrade_and_uninstall_name_the_installed_release() -> None:
    upgrade = shell_lines(block_with(INSTALL, "helm upgrade", "sh"))
    crd = shlex.split(upgrade[0])
    assert crd[:3] == ["kubectl", "apply", "--server-side"]
    chart_crd = (REPO_ROOT / crd[-1]).read_text()
    assert chart_crd == (REPO_ROOT / "crds" / "batchjobs.openbatch.dev.yaml").read_text()
    up = shlex.split(upgrade[1])
    assert up[:4] == ["helm", "upgrade", "openbatch", "charts/openbatch"]
    assert up[up.index("--namespace") + 1] == "openbatch" and "--reuse-values" in up
    (uninstall,) = shell_lines(block_with(INSTALL, "helm uninstall", "sh"))
    assert shlex.split(uninstall) == ["helm", "uninstall", "openbatch", "--namespace", "openbatch"]


def _values(needle: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(block_with(INSTALL, needle, "yaml"))
    return loaded


def test_the_tenants_block_renders_a_tenant_namespace() -> None:
    values = _values("tenants:")
    objects = render(values, release="openbatch", namespace="openbatch")
    (tenant,) = values["tenants"]
    namespace = tenant["namespace"]
    for kind in ("Role", "RoleBinding"):
        assert find([o for o in objects if o["metadata"].get("namespace") == namespace], kind)
    one(objects, "ConfigMap", "openbatch-routing", namespace)
    one(objects, "NetworkPolicy", "openbatch-runner", namespace)
    tenants = json.loads(one(objects, "ConfigMap", "openbatch-tenants")["data"]["tenants.json"])
    (entry,) = [t for t in tenants["tenants"] if t["namespace"] == namespace]
    assert entry["storage"] == tenant["storage"] and entry["caps"] == tenant["caps"]
    assert "apiKeys" not in json.dumps(tenants)  # "API keys left out"
    keys = json.loads(_api_keys(objects))
    assert keys[tenant["apiKeys"][0]] == namespace


def test_the_tenant_policy_grants_exactly_the_tenants_root() -> None:
    tenant = _values("tenants:")["tenants"][0]
    bucket, prefix = tenant["storage"]["bucket"], tenant["storage"]["prefix"]
    script = block_with(INSTALL, "mc admin policy create", "sh")
    policy = json.loads(script.split("<<'EOF'\n", 1)[1].split("\nEOF", 1)[0])
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/{prefix}/*"}
    secret = shlex.split(next(ln for ln in shell_lines(script) if "create secret" in ln))
    assert secret[1:3] == ["-n", tenant["namespace"]]
    assert secret[secret.index("generic") + 1] == tenant["storage"]["credentialsSecret"]
    literals = [a.split("=")[1] for a in secret if a.startswith("--from-literal=")]
    assert literals == ["accessKey", "secretKey"]


def test_the_routing_block_opens_each_servers_port_to_the_runners() -> None:
    values = _values("routing:")
    objects = render(values, release="openbatch", namespace="openbatch")
    routing = json.loads(one(objects, "ConfigMap", "openbatch-routing")["data"]["models.json"])
    assert routing["models"] == values["routing"]["models"]
    policy = one(objects, "NetworkPolicy", "openbatch-runner", "openbatch")
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports") or []}
    assert {8000, 30000, 11434} <= ports


def test_the_external_s3_block_drops_minio_and_points_at_the_bucket() -> None:
    values = _values("existingSecret: openbatch-s3-platform")
    objects = render(values, release="openbatch", namespace="openbatch")
    assert not find(objects, "StatefulSet")
    operator = pod_spec(one(objects, "Deployment", "openbatch-operator"))["containers"][0]
    env = container_env(operator)
    assert env["OPENBATCH_S3_ENDPOINT"]["value"] == values["storage"]["endpoint"]
    secrets = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in env.values()
        if "secretKeyRef" in (e.get("valueFrom") or {})
    }
    assert values["storage"]["existingSecret"] in secrets
