"""Rendering the Helm chart with the real Helm library (helm-python-sdk), for tests and bench B8.

`render()` returns the parsed objects of one `helm template`: NOTES.txt is dropped (it is
text, not YAML), empty documents are skipped, and hook objects are kept (marked by their
`helm.sh/hook` annotation, see `is_hook`). The chart's `crds/` are not part of a render: Helm
exposes them only through `Chart.crds` (`chart_crds()`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "openbatch"
CI_DIR = CHART_DIR / "ci"
RELEASE = "ob"
NAMESPACE = "openbatch"
FULLNAME = f"{RELEASE}-openbatch"

Obj = dict[str, Any]


@functools.cache
def chart() -> helm.Chart:
    """The chart, loaded once per process (Helm charts are immutable and thread-safe)."""
    return helm.Chart.load(CHART_DIR)


def ci_files() -> list[Path]:
    return sorted(CI_DIR.glob("*.yaml"))


def ci_values(path: Path) -> Obj:
    values: Obj = yaml.safe_load(path.read_text()) or {}
    return values


def value_sets() -> dict[str, Obj]:
    """The default values and every documented combination in ci/, by name."""
    return {"default": {}, **{p.stem: ci_values(p) for p in ci_files()}}


def render_raw(
    values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE, release: str = RELEASE
) -> dict[str, str]:
    """Template path -> rendered text, exactly as Helm returns it (NOTES.txt included)."""
    return chart().render(dict(values or {}), name=release, namespace=namespace, is_install=True)


def parse(rendered: Mapping[str, str]) -> list[Obj]:
    objects: list[Obj] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def render(
    values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE, release: str = RELEASE
) -> list[Obj]:
    return parse(render_raw(values, namespace=namespace, release=release))


def notes(values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE) -> str:
    rendered = render_raw(values, namespace=namespace)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def chart_crds() -> list[Obj]:
    return [yaml.safe_load(crd["data"]) for crd in chart().crds]


def is_hook(obj: Obj) -> bool:
    return "helm.sh/hook" in ((obj.get("metadata") or {}).get("annotations") or {})


def find(objects: Iterable[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o
        for o in objects
        if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: Iterable[Obj], kind: str, name: str, namespace: str | None = None) -> Obj:
    found = [
        o
        for o in find(objects, kind, name)
        if namespace is None or o["metadata"].get("namespace") == namespace
    ]
    assert len(found) == 1, f"expected one {kind}/{name} in {namespace}, found {len(found)}"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    """The pod spec of a workload (Deployment, StatefulSet, Job)."""
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def container_env(container: Obj) -> dict[str, Obj]:
    """Env entries of a container by name (each the whole EnvVar: `value` or `valueFrom`)."""
    return {e["name"]: e for e in container.get("env") or []}


def tenants_file(objects: Iterable[Obj]) -> Obj:
    cm = one(objects, "ConfigMap", f"{FULLNAME}-tenants")
    result: Obj = json.loads(cm["data"]["tenants.json"])
    return result
