"""RBAC and NetworkPolicies of the chart: exact rules, per mode, and the scanners' verdicts.

RBAC is asserted rule by rule (no wildcards, no Secrets anywhere, no ClusterRole that could
read Secrets: trivy KSV-0041). Every built-in object passes `kubernetes-validate --strict`,
and `trivy config` finds nothing HIGH or CRITICAL in any value set.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no py.typed
import pytest
import yaml

from tests.chart.chart_support import (
    CHART_DIR,
    FULLNAME,
    NAMESPACE,
    Obj,
    chart_crds,
    find,
    one,
    render,
    value_sets,
)

VALUE_SETS = value_sets()
KUBE_VERSION = "1.33.0"  # the oldest minor the chart is validated for here (Chart.yaml: >=1.29)
TRIVY = Path(sys.executable).parent / "trivy"

# apiVersion of each built-in kind the chart may render: current, non-deprecated versions.
API_VERSIONS = {
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "ServiceAccount": "v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "Job": "batch/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Ingress": "networking.k8s.io/v1",
    "PodDisruptionBudget": "policy/v1",
}
CUSTOM_KINDS = {"ServiceMonitor": "monitoring.coreos.com/v1"}

Rule = tuple[str, str, tuple[str, ...]]  # (apiGroup, resource, verbs)

OPERATOR_NAMESPACED: set[Rule] = {
    ("openbatch.dev", "batchjobs", ("get", "list", "watch", "patch")),
    ("openbatch.dev", "batchjobs/status", ("get", "patch")),
    ("batch", "jobs", ("get", "list", "watch", "create")),
    ("", "pods", ("get", "list", "watch")),  # pods that cannot start (issue 8, section 6)
    ("", "events", ("create", "patch")),
    ("events.k8s.io", "events", ("create", "patch")),
}
OPERATOR_DISCOVERY: set[Rule] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", ("get", "list", "watch")),
}
NAMESPACES_READ: set[Rule] = {("", "namespaces", ("get", "list", "watch"))}
SHIM: set[Rule] = {("openbatch.dev", "batchjobs", ("create", "get", "list", "watch", "patch"))}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: render(values) for name, values in VALUE_SETS.items()}


def _rules(role: Obj) -> set[Rule]:
    result: set[Rule] = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames etc.
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.add((group, resource, tuple(rule["verbs"])))
    return result


def _roles(objects: list[Obj]) -> dict[tuple[str, str | None, str], set[Rule]]:
    return {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): _rules(o)
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
    }


# ----- RBAC ---------------------------------------------------------------------------------


def test_rbac_of_the_default_install(rendered: dict[str, list[Obj]]) -> None:
    assert _roles(rendered["default"]) == {
        ("Role", NAMESPACE, f"{FULLNAME}-operator"): OPERATOR_NAMESPACED,
        ("ClusterRole", None, f"{FULLNAME}-operator-discovery"): OPERATOR_DISCOVERY
        | NAMESPACES_READ,
        ("Role", NAMESPACE, f"{FULLNAME}-shim"): SHIM,
    }


def test_rbac_with_tenants_is_one_role_per_tenant_namespace(
    rendered: dict[str, list[Obj]],
) -> None:
    expected: dict[tuple[str, str | None, str], set[Rule]] = {
        ("ClusterRole", None, f"{FULLNAME}-operator-discovery"): OPERATOR_DISCOVERY
        | NAMESPACES_READ,
    }
    for ns in ("team-a", "team-b"):
        expected[("Role", ns, f"{FULLNAME}-operator")] = OPERATOR_NAMESPACED
        expected[("Role", ns, f"{FULLNAME}-shim")] = SHIM
    assert _roles(rendered["tenants-namespaced"]) == expected


def test_rbac_cluster_wide(rendered: dict[str, list[Obj]]) -> None:
    assert _roles(rendered["clusterwide-monitoring"]) == {
        ("ClusterRole", None, f"{FULLNAME}-operator"): OPERATOR_NAMESPACED | OPERATOR_DISCOVERY,
        # The shim stays namespaced: it serves only the tenants it has keys for.
        ("Role", NAMESPACE, f"{FULLNAME}-shim"): SHIM,
    }


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_bindings_point_at_the_roles_and_service_accounts(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    objects = rendered[name]
    roles = {(k, ns, n) for k, ns, n in _roles(objects)}
    accounts = {o["metadata"]["name"] for o in find(objects, "ServiceAccount")}
    for binding in find(objects, "RoleBinding") + find(objects, "ClusterRoleBinding"):
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], ns, ref["name"]) in roles, binding["metadata"]
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount" and subject["namespace"] == NAMESPACE
        assert subject["name"] in accounts


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_no_wildcards_no_secrets_no_configmaps(rendered: dict[str, list[Obj]], name: str) -> None:
    for (kind, _, role_name), rules in _roles(rendered[name]).items():
        for group, resource, verbs in rules:
            assert "*" not in (group, resource, *verbs), (role_name, group, resource)
            assert resource not in ("secrets", "configmaps", "pods/exec"), (kind, role_name)
            assert not {"delete", "deletecollection", "update", "escalate", "bind"} & set(verbs)


def test_every_rbac_rule_in_the_templates_has_a_comment() -> None:
    for path in sorted((CHART_DIR / "templates").rglob("rbac.yaml")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("- apiGroups:"):
                above = lines[i - 1].strip()
                assert above.startswith("#"), f"{path.name}:{i + 1} has no comment"


# ----- NetworkPolicies ----------------------------------------------------------------------


def _peers(policy: Obj, direction: str = "egress") -> list[tuple[str, Any]]:
    """(what, ports) per rule: the peer labels in short form."""
    result: list[tuple[str, Any]] = []
    for rule in policy["spec"].get(direction) or []:
        peers = rule.get("to" if direction == "egress" else "from") or [{"any": True}]
        ports = sorted((p["protocol"], p["port"]) for p in rule.get("ports") or [])
        for peer in peers:
            result.append((json.dumps(peer, sort_keys=True), ports))
    return result


DNS_PEER = json.dumps(
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    },
    sort_keys=True,
)
DNS_PORTS = [("TCP", 53), ("UDP", 53)]
MINIO_PEER = json.dumps(
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "openbatch",
                "app.kubernetes.io/instance": "ob",
                "app.kubernetes.io/component": "minio",
            }
        },
    },
    sort_keys=True,
)
ANY = json.dumps({"any": True})
API_PORTS = [("TCP", 443), ("TCP", 6443)]


def _ns_peer(namespace: str) -> str:
    return json.dumps(
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        sort_keys=True,
    )


def test_runner_egress_is_dns_storage_and_routed_servers_only(
    rendered: dict[str, list[Obj]],
) -> None:
    default = one(rendered["default"], "NetworkPolicy", f"{FULLNAME}-runner", NAMESPACE)
    assert default["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert default["spec"]["ingress"] == []
    assert _peers(default) == [(DNS_PEER, DNS_PORTS), (MINIO_PEER, [("TCP", 9000)])]
    for ns in ("team-a", "team-b"):
        policy = one(rendered["tenants-namespaced"], "NetworkPolicy", f"{FULLNAME}-runner", ns)
        assert sorted(_peers(policy)) == sorted(
            [
                (DNS_PEER, DNS_PORTS),
                (MINIO_PEER, [("TCP", 9000)]),
                (_ns_peer("models"), [("TCP", 8000)]),  # two URLs, one rule
                (_ns_peer("team-a"), [("TCP", 30000)]),
            ]
        )


def test_operator_and_shim_reach_only_dns_api_server_and_storage(
    rendered: dict[str, list[Obj]],
) -> None:
    for component, port in (("operator", 9090), ("shim", 8000)):
        policy = one(rendered["default"], "NetworkPolicy", f"{FULLNAME}-{component}")
        assert _peers(policy) == [
            (DNS_PEER, DNS_PORTS),
            (ANY, API_PORTS),
            (MINIO_PEER, [("TCP", 9000)]),
        ]
        assert (ANY, [("TCP", port)]) in _peers(policy, "ingress")
    external = one(rendered["minio-off-external-s3"], "NetworkPolicy", f"{FULLNAME}-shim")
    assert _peers(external) == [
        (DNS_PEER, DNS_PORTS),
        (json.dumps({"ipBlock": {"cidr": "10.96.0.1/32"}}), [("TCP", 443), ("TCP", 6443)]),
        (json.dumps({"ipBlock": {"cidr": "52.218.0.0/17"}}), [("TCP", 443)]),
    ]


def test_minio_accepts_only_openbatch_pods(rendered: dict[str, list[Obj]]) -> None:
    policy = one(rendered["tenants-namespaced"], "NetworkPolicy", f"{FULLNAME}-minio")
    assert policy["spec"]["egress"] == []
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9000}]
    components = [
        p["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
        for p in rule["from"]
        if "namespaceSelector" not in p
    ]
    assert components == ["operator", "shim", "minio-setup"]
    (runners,) = [p for p in rule["from"] if "namespaceSelector" in p]
    (expression,) = runners["namespaceSelector"]["matchExpressions"]
    assert expression["values"] == ["team-a", "team-b"]
    assert runners["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "openbatch-runner"


def test_every_openbatch_pod_is_selected_by_a_policy(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["default"]
    selectors = [p["spec"]["podSelector"]["matchLabels"] for p in find(objects, "NetworkPolicy")]
    for workload in [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(s.items() <= labels.items() for s in selectors), workload["metadata"]["name"]


# ----- validators and scanners --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_built_in_objects_pass_kubernetes_validate_strict(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    for obj in rendered[name]:
        kind = obj["kind"]
        if kind in CUSTOM_KINDS:
            assert obj["apiVersion"] == CUSTOM_KINDS[kind]
            continue
        # kubernetes-validate treats removed versions as "no schema": check them here.
        assert obj["apiVersion"] == API_VERSIONS[kind], (kind, obj["apiVersion"])
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_kubernetes_validate_catches_an_unknown_field(rendered: dict[str, list[Obj]]) -> None:
    deployment = one(rendered["default"], "Deployment", f"{FULLNAME}-operator")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


def _trivy(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            str(TRIVY),
            "config",
            "--skip-check-update",
            "--quiet",
            "--format",
            "json",
            "--cache-dir",
            str(directory / ".trivy-cache"),
            str(directory / "manifests"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    return [m for r in report.get("Results") or [] for m in r.get("Misconfigurations") or []]


def test_trivy_finds_nothing_high_or_critical(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    """One trivy run over every value set (each in its own file), release namespace set."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for name, objects in rendered.items():
        (manifests / f"{name}.yaml").write_text(yaml.safe_dump_all(objects))
    findings = _trivy(tmp_path)
    severe = [
        f"{m['Severity']} {m['ID']}: {m['Message']}"
        for m in findings
        if m["Severity"] in ("HIGH", "CRITICAL")
    ]
    assert severe == []
    # What remains is understood: the operator must create Jobs (KSV-0048), and the images
    # live on ghcr.io / quay.io, outside trivy's built-in list of trusted registries (KSV-0125).
    assert {m["ID"] for m in findings} <= {"KSV-0048", "KSV-0125"}, findings


def test_trivy_would_flag_a_cluster_role_reading_secrets(tmp_path: Path) -> None:
    """The scanner is really looking: a ClusterRole that reads Secrets is CRITICAL."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "reads-secrets"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    }
    (manifests / "bad.yaml").write_text(yaml.safe_dump(role))
    ids = {m["ID"] for m in _trivy(tmp_path) if m["Severity"] == "CRITICAL"}
    assert "KSV-0041" in ids


def test_trivy_findings_are_namespaced() -> None:
    """Objects carry the release namespace, so trivy adds no 'default namespace' findings."""
    for obj in render():
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert re.fullmatch(r"[a-z0-9-]+", obj["metadata"]["namespace"])
            assert obj["metadata"]["namespace"] != "default"


def test_routed_peers_from_urls_of_every_shape() -> None:
    urls = ["http://10.0.0.5:8000/v1", "http://vllm:8000/v1", "https://llm.models.svc/v1"]
    objects = render({"routing": {"models": {"a": urls}}})
    policy = one(objects, "NetworkPolicy", f"{FULLNAME}-runner", NAMESPACE)
    assert _peers(policy)[2:] == [
        (json.dumps({"ipBlock": {"cidr": "10.0.0.5/32"}}), [("TCP", 8000)]),
        (_ns_peer(NAMESPACE), [("TCP", 8000)]),  # a bare Service name: the release namespace
        (_ns_peer("models"), [("TCP", 443)]),
    ]


def test_the_chart_crd_passes_kubernetes_validate_strict() -> None:
    (crd,) = chart_crds()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)
