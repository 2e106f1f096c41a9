"""The Helm chart, rendered by the real Helm library: values, schema, CRDs, contracts, security.

Each value set (defaults and every `ci/*.yaml`) is rendered once per session and shared.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema  # type: ignore[import-untyped,unused-ignore]  # no stubs in the dev extra
import pytest
import yaml

from openbatch.locations import locations_of
from openbatch.resource import BatchJob
from openbatch_operator.resources import build_runner_job
from openbatch_operator.settings import OperatorSettings
from tests.chart import values_doc
from tests.chart.chart_support import (
    CHART_DIR,
    FULLNAME,
    NAMESPACE,
    REPO_ROOT,
    Obj,
    chart,
    chart_crds,
    container_env,
    find,
    is_hook,
    notes,
    one,
    pod_spec,
    render,
    render_raw,
    tenants_file,
    value_sets,
)
from tests.unit.test_crd import _apply_defaults, _to_jsonschema

VALUE_SETS = value_sets()
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# Settings the operator reads outside OperatorSettings (operator/openbatch_operator/__main__.py)
# and the tenancy file (being added with the tenancy issue).
OPERATOR_EXTRA_ENV = {
    "NAMESPACES",
    "LIVENESS",
    # Settings of the tenancy issue (operator/openbatch_operator/settings.py once merged).
    "TENANTS_FILE",
    "ROUTING_FILE",
    "ALLOW_UNLISTED_NAMESPACES",
}
SHIM_EXTRA_ENV = {"TENANTS_FILE"}  # the tenancy file (the tenancy issue)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: render(values) for name, values in VALUE_SETS.items()}


@pytest.fixture(scope="module")
def default(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered["default"]


def _workloads(objects: list[Obj]) -> Iterator[Obj]:
    return (o for o in objects if o["kind"] in WORKLOAD_KINDS)


def _secret_data(obj: Obj) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}


# ----- rendering, lint, schema --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_value_set_renders_objects_with_names_and_namespaces(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    objects = rendered[name]
    assert len(objects) >= 10
    for obj in objects:
        assert obj["metadata"]["name"], obj
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
        cluster_scoped = obj["kind"] in ("ClusterRole", "ClusterRoleBinding")
        assert cluster_scoped or obj["metadata"].get("namespace"), obj["metadata"]
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") == "openbatch", obj["metadata"]
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), "two objects with one kind, namespace and name"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART_DIR, VALUE_SETS[name], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


# Objects whose fields are each optional (unset: no cap): values.yaml may show a subset.
SPARSE = {".tenantDefaults.caps", ".defaultTenant.caps"}


def _schema_tree_differences(values: Any, schema: Obj, path: str = "") -> list[str]:
    if "properties" not in schema:
        return []
    if not isinstance(values, dict):
        return [f"{path or '<root>'}: an object in the schema, {type(values).__name__} in values"]
    problems = [f"{path}.{k}: in values.yaml only" for k in values if k not in schema["properties"]]
    if path not in SPARSE:
        problems += [
            f"{path}.{k}: in the schema only" for k in schema["properties"] if k not in values
        ]
    if schema.get("additionalProperties") is not False:
        problems.append(f"{path or '<root>'}: the schema must refuse unknown keys")
    for key, sub in schema["properties"].items():
        if key in values:
            problems += _schema_tree_differences(values[key], sub, f"{path}.{key}")
    return problems


def test_schema_and_values_have_the_same_keys() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert _schema_tree_differences(values, schema) == []
    assert chart().schema == schema
    chart().validate_schema(values)


def test_the_tree_comparison_catches_a_key_on_one_side_only() -> None:
    schema = {"properties": {"a": {"type": "string"}}, "additionalProperties": False}
    assert _schema_tree_differences({"a": "", "b": 1}, schema) == [".b: in values.yaml only"]
    assert _schema_tree_differences({}, schema) == [".a: in the schema only"]


def _leaves(values: Any, path: str = "") -> Iterator[str]:
    if isinstance(values, dict) and values:
        for key, sub in values.items():
            yield from _leaves(sub, f"{path}.{key}" if path else key)
    else:
        yield path


def test_every_value_is_documented() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    every = {k.path for k in values_doc.keys(text)}
    documented = {k.path for k in values_doc.keys(text) if k.comment}
    values = yaml.safe_load(text)
    assert set(_leaves(values)) <= every
    undocumented = [
        leaf
        for leaf in _leaves(values)
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]
    assert undocumented == []


def test_the_install_guide_has_the_generated_values_table() -> None:
    doc = values_doc.INSTALL_DOC.read_text()
    assert values_doc.BEGIN in doc and values_doc.END in doc
    assert doc == values_doc.expected_doc(doc), "run: python -m tests.chart.values_doc"


def test_the_chart_readme_mentions_every_top_level_value() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    missing = [key for key in values if f"`{key}" not in readme]
    assert missing == []


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"runner": {"maxConcurrentBatches": 0}}, "/runner/maxConcurrentBatches"),
    ({"storage": {"bucket": "Not_A_Bucket"}}, "/storage/bucket"),
    ({"shim": {"replica": 2}}, "'replica' not allowed"),
    ({"tenants": [{"namespace": "team-a"}]}, "missing property 'storage'"),
    (
        {
            "tenants": [
                {
                    "namespace": "Team_A",
                    "storage": {"bucket": "team-a", "credentialsSecret": "s3"},
                    "caps": {"maxInFlight": 1, "maxParallelism": 1, "maxPriority": 0},
                }
            ]
        },
        "/tenants/0/namespace",
    ),
    ({"routing": {"models": {"llama": ["vllm:8000/v1"]}}}, "/routing/models/llama/0"),
    ({"routing": {"models": {"llama": ["http://user:pw@vllm:8000/v1"]}}}, "/routing/models"),
    ({"securityContext": {"privileged": True}}, "/securityContext/privileged"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ({"shim": {"allowedCompletionWindows": ["one day"]}}, "/shim/allowedCompletionWindows/0"),
    ({"shim": {"downloadRedirect": {"seconds": 604801}}}, "/shim/downloadRedirect/seconds"),
    (
        {"shim": {"downloadRedirect": {"endpoint": "s3.example.com"}}},
        "/shim/downloadRedirect/endpoint",
    ),
    ({"minio": {"image": {"tag": "latest"}}}, "/minio/image/tag"),
    ({"storage": {"endpoint": "http://minio:9000/bucket"}}, "/storage/endpoint"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES)
def test_bad_values_are_rejected_with_the_key_named(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        render(values)
    assert where in str(caught.value)
    assert "values don't meet the specifications of the schema" in str(caught.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"minio": {"enabled": False}}, "storage.endpoint is required when minio.enabled=false"),
        (
            {"minio": {"enabled": False}, "storage": {"endpoint": "http://s3:9000"}},
            "external storage needs storage.existingSecret",
        ),
        (
            {
                "tenants": [
                    {
                        "namespace": "team-a",
                        "storage": {"bucket": "team-a", "credentialsSecret": "s3"},
                        "caps": {"maxInFlight": 1, "maxParallelism": 1, "maxPriority": 0},
                    }
                ]
                * 2
            },
            "namespace team-a is listed twice",
        ),
        ({"storage": {"accessKey": "only-half"}}, "storage.accessKey and storage.secretKey go"),
        (
            {"shim": {"replicas": 2, "podDisruptionBudget": {"enabled": True, "minAvailable": 2}}},
            "minAvailable (2) must be below shim.replicas (2)",
        ),
        (
            {
                "shim": {"apiKeys": {"existingSecret": "keys"}},
                "defaultTenant": {"apiKeys": ["sk-0123456789abcdef"]},
            },
            "shim.apiKeys.existingSecret replaces them",
        ),
        ({"shim": {"apiKeys": {"generate": False}}}, "the shim has no API keys"),
    ],
)
def test_inconsistent_values_fail_the_render_with_a_clear_message(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(values)


# ----- CRDs and examples --------------------------------------------------------------------


def test_chart_crds_are_the_top_level_crds() -> None:
    top = {p.name: p.read_bytes() for p in sorted((REPO_ROOT / "crds").glob("*.yaml"))}
    ours = {p.name: p.read_bytes() for p in sorted((CHART_DIR / "crds").iterdir())}
    assert ours == top
    assert top, "no CRDs found"
    # Helm sees exactly those files as CRDs (examples stay out: Helm would install them).
    seen = {c["filename"]: c["data"].encode() for c in chart().crds}
    assert seen == {f"openbatch/crds/{n}": data for n, data in top.items()}


def _crd_schema() -> Obj:
    (crd,) = chart_crds()
    assert crd["kind"] == "CustomResourceDefinition"
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema: Obj = version["schema"]["openAPIV3Schema"]
    return schema


EXAMPLES = sorted((REPO_ROOT / "crds" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_against_the_chart_crd(path: Path) -> None:
    root = _crd_schema()
    validator = jsonschema.Draft202012Validator(_to_jsonschema(root))
    example = yaml.safe_load(path.read_text())
    errors = [e.message for e in validator.iter_errors(_apply_defaults(root, example))]
    assert errors == []


def test_a_bad_batchjob_fails_the_chart_crd_schema() -> None:
    root = _crd_schema()
    validator = jsonschema.Draft202012Validator(_to_jsonschema(root))
    bad = yaml.safe_load(EXAMPLES[0].read_text())
    bad["spec"]["parallelism"] = 1000
    assert list(validator.iter_errors(_apply_defaults(root, bad)))


# ----- NOTES.txt ----------------------------------------------------------------------------


def test_notes_explain_the_first_steps() -> None:
    text = notes()
    assert f"port-forward svc/{FULLNAME}-shim 8000:8000" in text
    assert f"get secret {FULLNAME}-api-keys" in text
    assert "apiKeys" in text and "helm upgrade" in text
    assert "/files" in text and "/batches" in text and "get batchjobs" in text
    assert "`helm upgrade` does not update CRDs" in text
    assert "kubectl apply --server-side" in text


def test_notes_follow_the_options() -> None:
    ingress = notes(VALUE_SETS["clusterwide-monitoring"])
    assert "https://batch.example.com/v1" in ingress and "port-forward" not in ingress
    assert "llama3.2" in ingress
    no_shim = notes(VALUE_SETS["minimal-no-shim-no-netpol"])
    assert "shim is disabled" in no_shim and "NetworkPolicies are on" not in no_shim


# ----- operator contract --------------------------------------------------------------------


def _operator(objects: list[Obj]) -> Obj:
    deployment = one(objects, "Deployment", f"{FULLNAME}-operator")
    (container,) = pod_spec(deployment)["containers"]
    result: Obj = container
    return result


def _plain_env(container: Obj) -> dict[str, str]:
    return {k: e["value"] for k, e in container_env(container).items() if "value" in e}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_shim_env_names_real_settings(rendered: dict[str, list[Obj]], name: str) -> None:
    from openbatch_shim.settings import ShimSettings

    found = find(rendered[name], "Deployment", f"{FULLNAME}-shim")
    if not found:
        return
    (container,) = pod_spec(found[0])["containers"]
    env = _plain_env(container)
    fields = {f.upper() for f in ShimSettings.model_fields} | SHIM_EXTRA_ENV
    names = {k.removeprefix("OPENBATCH_SHIM_") for k in env if k.startswith("OPENBATCH_SHIM_")}
    assert names - fields == set()
    settings = {
        k.removeprefix("OPENBATCH_SHIM_").lower(): v
        for k, v in env.items()
        if k.startswith("OPENBATCH_SHIM_")
        and k.removeprefix("OPENBATCH_SHIM_")
        not in SHIM_EXTRA_ENV | {"API_KEYS_FILE", "MODELS_FILE"}
    }
    ShimSettings.model_validate(settings)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_operator_env_names_real_settings(rendered: dict[str, list[Obj]], name: str) -> None:
    env = _plain_env(_operator(rendered[name]))
    fields = {f.upper() for f in OperatorSettings.model_fields}
    unknown = {
        k.removeprefix("OPENBATCH_OPERATOR_")
        for k in env
        if k.startswith("OPENBATCH_OPERATOR_")
        and k.removeprefix("OPENBATCH_OPERATOR_") not in fields | OPERATOR_EXTRA_ENV
    }
    assert unknown == set()
    settings_env = {
        k.removeprefix("OPENBATCH_OPERATOR_").lower(): v
        for k, v in env.items()
        if k.startswith("OPENBATCH_OPERATOR_")
        and k.removeprefix("OPENBATCH_OPERATOR_") not in OPERATOR_EXTRA_ENV
    }
    OperatorSettings.model_validate(settings_env)  # every value parses


def test_operator_deployment_shape(default: list[Obj]) -> None:
    deployment = one(default, "Deployment", f"{FULLNAME}-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = _operator(default)
    assert container["image"] == "ghcr.io/openbatch/openbatch-operator:0.1.0"
    assert "command" not in container and "args" not in container  # the image's entrypoint
    env = container_env(container)
    assert env["OPENBATCH_OPERATOR_NAMESPACES"]["value"] == NAMESPACE
    assert env["OPENBATCH_OPERATOR_LIVENESS"]["value"] == "http://0.0.0.0:8080/healthz"
    assert env["OPENBATCH_OPERATOR_METRICS_PORT"]["value"] == "9090"
    assert env["OPENBATCH_OPERATOR_ROUTING_CONFIGMAP"]["value"] == f"{FULLNAME}-routing"
    assert env["OPENBATCH_OPERATOR_S3_SECRET_NAME"]["value"] == f"{FULLNAME}-runner-s3"
    assert env["OPENBATCH_OPERATOR_RUNNER_IMAGE"]["value"] == (
        "ghcr.io/openbatch/openbatch-runner:0.1.0"
    )
    minio = f"http://{FULLNAME}-minio.{NAMESPACE}.svc.cluster.local:9000"
    assert env["OPENBATCH_OPERATOR_S3_ENDPOINT"]["value"] == minio
    assert env["OPENBATCH_S3_ENDPOINT"]["value"] == minio
    for key in ("OPENBATCH_S3_ACCESS_KEY", "OPENBATCH_S3_SECRET_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == f"{FULLNAME}-s3"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["tenants"]
    assert env["OPENBATCH_OPERATOR_TENANTS_FILE"]["value"] == f"{mount}/tenants.json"
    service = one(default, "Service", f"{FULLNAME}-operator-metrics")
    assert service["spec"]["ports"][0]["port"] == 9090


def test_cluster_wide_mode_watches_every_namespace(rendered: dict[str, list[Obj]]) -> None:
    env = container_env(_operator(rendered["clusterwide-monitoring"]))
    assert env["OPENBATCH_OPERATOR_NAMESPACES"]["value"] == ""
    env = container_env(_operator(rendered["tenants-namespaced"]))
    assert env["OPENBATCH_OPERATOR_NAMESPACES"]["value"] == "team-a,team-b"


def test_the_runner_job_the_operator_builds_from_the_chart_settings(default: list[Obj]) -> None:
    """The operator's own builder, fed the chart's env: the runner pod it would create."""
    env = _plain_env(_operator(default))
    settings = OperatorSettings.model_validate(
        {
            k.removeprefix("OPENBATCH_OPERATOR_").lower(): v
            for k, v in env.items()
            if k.removeprefix("OPENBATCH_OPERATOR_") not in OPERATOR_EXTRA_ENV
        }
    )
    routed = REPO_ROOT / "crds" / "examples" / "batchjob-s3.yaml"  # no spec.modelServer
    job = BatchJob.model_validate(yaml.safe_load(routed.read_text()))
    job.metadata.namespace = NAMESPACE
    job.metadata.uid = "uid-1"
    now = datetime.now(UTC)
    where = locations_of(job, settings.storage_root)
    extra: dict[str, Any] = {}
    if "tenant" in inspect.signature(build_runner_job).parameters:
        # With tenancy the builder takes the namespace's tenancy, resolved from the chart's
        # tenants file the way the operator resolves it.
        tenancy: Any = importlib.import_module("openbatch.tenancy")
        config = tenancy.parse_tenancy(json.dumps(tenants_file(default)).encode())
        storage = tenancy.DefaultStorage(
            bucket=settings.bucket,
            prefix=settings.prefix,
            credentials_secret=settings.s3_secret_name,
        )
        tenant, refusal = tenancy.tenancy_for(config, NAMESPACE, default_storage=storage)
        assert refusal is None and tenant.credentials_secret == f"{FULLNAME}-runner-s3"
        extra["tenant"] = tenant
        where = locations_of(job, tenant.root)
    manifest = build_runner_job(job, where, settings, now + timedelta(hours=24), now, **extra)
    pod = manifest["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    secret_refs = {
        e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
    }
    assert secret_refs == {f"{FULLNAME}-runner-s3"}
    runner_secret = one(default, "Secret", f"{FULLNAME}-runner-s3")
    assert set(_secret_data(runner_secret)) == {"accessKey", "secretKey"}
    # The chart's runner NetworkPolicy selects exactly these pods.
    policy = one(default, "NetworkPolicy", f"{FULLNAME}-runner", NAMESPACE)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["routing"]["configMap"]["name"] == f"{FULLNAME}-routing"
    assert find(default, "ConfigMap", f"{FULLNAME}-routing")


# ----- shim contract ------------------------------------------------------------------------


def test_shim_deployment_shape(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["clusterwide-monitoring"]
    deployment = one(objects, "Deployment", f"{FULLNAME}-shim")
    assert deployment["spec"]["replicas"] == 3
    (container,) = pod_spec(deployment)["containers"]
    assert container["image"] == "ghcr.io/openbatch/openbatch-shim:0.1.0"
    env = _plain_env(container)
    assert env["OPENBATCH_SHIM_HOST"] == "0.0.0.0"  # inside the pod
    assert env["OPENBATCH_SHIM_PORT"] == "8000"
    assert env["OPENBATCH_SHIM_BACKEND"] == "kubernetes"
    assert env["OPENBATCH_SHIM_ALLOWED_COMPLETION_WINDOWS"] == "24h"
    assert env["OPENBATCH_SHIM_BUCKET"] == "openbatch"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["OPENBATCH_SHIM_API_KEYS_FILE"] == f"{mounts['api-keys']}/api-keys.json"
    assert env["OPENBATCH_SHIM_TENANTS_FILE"] == f"{mounts['tenants']}/tenants.json"
    assert env["OPENBATCH_SHIM_MODELS_FILE"] == f"{mounts['routing']}/models.json"
    assert env["OPENBATCH_SHIM_NAMESPACE"] == NAMESPACE
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    ingress = one(objects, "Ingress", f"{FULLNAME}-shim")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULLNAME}-shim", "port": {"name": "http"}}
    pdb = one(objects, "PodDisruptionBudget", f"{FULLNAME}-shim")
    assert pdb["spec"]["minAvailable"] == 2
    monitors = {o["metadata"]["name"] for o in find(objects, "ServiceMonitor")}
    assert monitors == {f"{FULLNAME}-shim", f"{FULLNAME}-operator"}


def test_download_redirect_is_off_unless_asked_for(rendered: dict[str, list[Obj]]) -> None:
    (container,) = pod_spec(one(rendered["default"], "Deployment", f"{FULLNAME}-shim"))[
        "containers"
    ]
    assert not [k for k in _plain_env(container) if "DOWNLOAD_REDIRECT" in k]
    values = {"shim": {"downloadRedirect": {"seconds": 900, "endpoint": "https://s3.example.com"}}}
    deployment = one(render(values), "Deployment", f"{FULLNAME}-shim")
    (container,) = pod_spec(deployment)["containers"]
    env = _plain_env(container)
    assert env["OPENBATCH_SHIM_DOWNLOAD_REDIRECT_SECONDS"] == "900"
    assert env["OPENBATCH_SHIM_DOWNLOAD_REDIRECT_ENDPOINT"] == "https://s3.example.com"


def test_disabling_the_shim_removes_all_of_it(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["minimal-no-shim-no-netpol"]
    assert not [o for o in objects if "-shim" in o["metadata"]["name"]]
    assert not find(objects, "NetworkPolicy")


def test_tenants_file_is_the_tenancy_contract(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["tenants-namespaced"]
    assert tenants_file(objects) == {
        "tenants": [
            {
                "namespace": "team-a",
                "storage": {
                    "bucket": "team-a",
                    "prefix": "openbatch",
                    "credentialsSecret": "openbatch-s3",
                },
                "caps": {
                    "maxInFlight": 256,
                    "maxParallelism": 4,
                    "maxPriority": 10,
                    "maxRunningBatches": 4,
                },
                "allowedModelServerURLs": ["*.team-a.svc.cluster.local"],
            },
            {
                # No allowedModelServerURLs: the defaults' list applies.
                "namespace": "team-b",
                "storage": {"bucket": "team-b", "prefix": "", "credentialsSecret": "openbatch-s3"},
                "caps": {"maxInFlight": 64, "maxParallelism": 1, "maxPriority": 0},
            },
        ],
        "defaults": {"caps": {"maxInFlight": 128}, "allowedModelServerURLs": []},
    }
    # Routing tables land in every tenant namespace and the release namespace (operator and
    # shim mount it); runner policies in every tenant namespace.
    for ns in ("team-a", "team-b", NAMESPACE):
        one(objects, "ConfigMap", f"{FULLNAME}-routing", ns)
    for ns in ("team-a", "team-b"):
        one(objects, "NetworkPolicy", f"{FULLNAME}-runner", ns)
    assert not find(objects, "NetworkPolicy", f"{FULLNAME}-runner")[2:]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_tenants_file_parses_with_the_operators_model(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    tenancy = pytest.importorskip("openbatch.tenancy", reason="tenancy is not in this tree yet")
    text = one(rendered[name], "ConfigMap", f"{FULLNAME}-tenants")["data"]["tenants.json"]
    config = tenancy.parse_tenancy(text.encode())
    assert [t.namespace for t in config.tenants]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_routing_table_parses_with_the_shared_model(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    from openbatch import routing

    cm = one(rendered[name], "ConfigMap", f"{FULLNAME}-routing", NAMESPACE)
    text = cm["data"]["models.json"]
    table = routing.parse_routing_table(text.encode())
    assert sorted(table.models) == sorted(VALUE_SETS[name].get("routing", {}).get("models", {}))


def test_the_default_tenant_is_the_release_namespace(default: list[Obj]) -> None:
    config = tenants_file(default)
    (tenant,) = config["tenants"]
    assert config["defaults"] == {"caps": {}, "allowedModelServerURLs": []}
    assert tenant["namespace"] == NAMESPACE
    assert tenant["caps"] == {"maxInFlight": 256, "maxParallelism": 4, "maxPriority": 10}
    assert tenant["storage"] == {
        "bucket": "openbatch",
        "prefix": "",
        "credentialsSecret": f"{FULLNAME}-runner-s3",
    }


def test_api_keys_map_keys_to_tenant_namespaces(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["tenants-namespaced"]
    keys = json.loads(_secret_data(one(objects, "Secret", f"{FULLNAME}-api-keys"))["api-keys.json"])
    assert keys.pop("sk-team-a-0123456789abcdef") == "team-a"
    ((generated, owner),) = keys.items()  # team-b listed none: one is generated
    assert owner == "team-b" and re.fullmatch(r"sk-ob-[A-Za-z0-9]{40}", generated)
    # No key leaks into the ConfigMap every pod can read.
    for cm in find(objects, "ConfigMap"):
        assert "sk-team-a" not in json.dumps(cm)


def test_an_existing_api_keys_secret_replaces_the_generated_one(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["minio-off-external-s3"]
    assert not find(objects, "Secret", f"{FULLNAME}-api-keys")
    deployment = one(objects, "Deployment", f"{FULLNAME}-shim")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "openbatch-api-keys"


def test_routing_table_is_rendered_as_models_json(rendered: dict[str, list[Obj]]) -> None:
    cm = one(rendered["tenants-namespaced"], "ConfigMap", f"{FULLNAME}-routing", "team-a")
    table = json.loads(cm["data"]["models.json"])
    assert table["models"]["llama-3-8b"] == [
        "http://vllm.models.svc.cluster.local:8000/v1",
        "http://vllm-2.models.svc.cluster.local:8000/v1",
    ]
    assert table["models"]["qwen2.5-7b"]["apiKeySecret"] == {"name": "sglang-key", "key": "apiKey"}
    operator = _operator(rendered["tenants-namespaced"])
    mounts = {m["name"]: m["mountPath"] for m in operator["volumeMounts"]}
    routing_file = container_env(operator)["OPENBATCH_OPERATOR_ROUTING_FILE"]["value"]
    assert routing_file == f"{mounts['routing']}/models.json"


# ----- storage ------------------------------------------------------------------------------


def test_minio_install_has_statefulset_pvc_secrets_and_setup_hook(default: list[Obj]) -> None:
    sts = one(default, "StatefulSet", f"{FULLNAME}-minio")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    (container,) = pod_spec(sts)["containers"]
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.[0-9TZ-]+", container["image"])
    assert set(_secret_data(one(default, "Secret", f"{FULLNAME}-minio"))) == {
        "rootUser",
        "rootPassword",
    }
    job = one(default, "Job", f"{FULLNAME}-minio-setup")
    assert is_hook(job)
    (setup_container,) = pod_spec(job)["containers"]
    assert container_env(setup_container)["BUCKETS"]["value"] == "openbatch"
    setup = one(default, "ConfigMap", f"{FULLNAME}-minio-setup")
    runner_policy = json.loads(setup["data"]["runner-policy.json"])
    resources = [r for s in runner_policy["Statement"] for r in s["Resource"]]
    assert resources == ["arn:aws:s3:::openbatch", "arn:aws:s3:::openbatch/*"]


def test_generated_credentials_differ(default: list[Obj]) -> None:
    app = _secret_data(one(default, "Secret", f"{FULLNAME}-s3"))
    runner = _secret_data(one(default, "Secret", f"{FULLNAME}-runner-s3"))
    assert app["accessKey"] != runner["accessKey"] and app["secretKey"] != runner["secretKey"]
    assert len(app["secretKey"]) == 40


def test_external_storage_uses_existing_secrets(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["minio-off-external-s3"]
    assert not [o for o in objects if "minio" in o["metadata"]["name"]]
    assert not find(objects, "Secret", f"{FULLNAME}-s3")
    env = container_env(_operator(objects))
    assert env["OPENBATCH_S3_ENDPOINT"]["value"] == "https://s3.eu-west-1.amazonaws.com"
    assert env["OPENBATCH_S3_REGION"]["value"] == "eu-west-1"
    assert env["OPENBATCH_OPERATOR_S3_SECRET_NAME"]["value"] == "openbatch-s3-runner"
    assert env["OPENBATCH_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        "openbatch-s3-platform"
    )


# ----- pod security -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_pod_is_restricted(rendered: dict[str, list[Obj]], name: str) -> None:
    workloads = list(_workloads(rendered[name]))
    assert workloads
    for workload in workloads:
        spec = pod_spec(workload)
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, where
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), where
        assert all("hostPath" not in v for v in spec.get("volumes") or []), where
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True and sc["privileged"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert {"cpu", "memory"} <= set(resources["limits"]), where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, where  # the one writable place


def test_only_the_operator_and_shim_get_a_service_account_token(default: list[Obj]) -> None:
    tokens = {
        w["metadata"]["name"]: pod_spec(w).get("automountServiceAccountToken")
        for w in _workloads(default)
    }
    assert tokens == {
        f"{FULLNAME}-operator": True,
        f"{FULLNAME}-shim": True,
        f"{FULLNAME}-minio": False,
        f"{FULLNAME}-minio-setup": False,
    }


def test_images_default_to_the_app_version() -> None:
    app_version = chart().metadata["appVersion"]
    text = json.dumps(render_raw())
    for image in ("openbatch-operator", "openbatch-runner", "openbatch-shim"):
        assert f"ghcr.io/openbatch/{image}:{app_version}" in text
    custom = render({"operator": {"image": {"tag": "0.2.0-rc1"}}})
    assert _operator(custom)["image"] == "ghcr.io/openbatch/openbatch-operator:0.2.0-rc1"


def test_minio_setup_creates_every_tenant_bucket(rendered: dict[str, list[Obj]]) -> None:
    job = one(rendered["tenants-namespaced"], "Job", f"{FULLNAME}-minio-setup")
    (container,) = pod_spec(job)["containers"]
    assert container_env(container)["BUCKETS"]["value"] == "openbatch team-a team-b"
    setup = one(rendered["tenants-namespaced"], "ConfigMap", f"{FULLNAME}-minio-setup")
    app = json.loads(setup["data"]["app-policy.json"])
    (statement,) = app["Statement"]
    assert statement["Resource"] == [
        f"arn:aws:s3:::{b}{suffix}"
        for b in ("openbatch", "team-a", "team-b")
        for suffix in ("", "/*")
    ]
