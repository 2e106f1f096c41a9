"""A Kubernetes API server for tests: kmock 0.8's emulator with the gaps kopf and kubectl hit.

Why a subclass and not kmock as is: TESTING.md lists what kmock 0.8 gets wrong for a real
operator (namespace listing, resourceVersions, 422 on JSON-patch `test`, watch replay,
selectors, list kinds). This module keeps kmock's HTTP server, its request log
(`list(emulator)`, `emulator.objects`) and its DSL for fault injection
(`emulator["patch", kmock.resource("batch/v1/jobs")] << 500` is served before the emulation),
and replaces the storage semantics with an apiserver-like store:

- routing: core `/api/v1/...` and `/apis/<group>/<version>/...`, including
  `/api/v1/namespaces[/<name>[/status]]`, `?watch=true`, `?dryRun=All`, the `status`
  subresource, and `pods/<name>/log` when a kubelet (`pod_log_provider`) is attached;
- bodies: JSON; kubectl's typed commands (`create namespace|configmap|secret`, deletes of
  built-ins) send protobuf and never fall back to JSON, so those few types (and DeleteOptions)
  are decoded from protobuf; responses are always JSON;
- discovery: `/api`, `/apis`, `/api/v1`, `/apis/<g>[/<v>]` (legacy, non-aggregated), `/version`,
  `/healthz`; `/openapi/v2|v3` answer 404 (so kubectl needs `--validate=false`);
- writes: every write takes the next value of one global, monotonically increasing
  `resourceVersion`; CREATE adds `uid`, `creationTimestamp`, `generation: 1`, takes the namespace
  from the URL, expands `generateName`, validates names and label values (422), refuses
  duplicates (409) and writes into missing (404) or terminating (403) namespaces;
  `metadata.generation` grows only when something outside `metadata`/`status` changes;
  a no-op write changes nothing (no new resourceVersion, no event);
- PATCH: `application/merge-patch+json` (RFC 7386), `application/json-patch+json` (RFC 6902; a
  failed `test` is 422 Unprocessable Entity, as kopf expects), and
  `application/strategic-merge-patch+json` as a merge patch that also understands the common
  directives (`$patch`, `$setElementOrder/...`, `$deleteFromPrimitiveList/...`, `$retainKeys`)
  and merges lists of objects by the usual keys (`name`, `uid`, `type`, `mountPath`,
  `containerPort`); server-side apply (`application/apply-patch+yaml`) answers 415.
  PUT replaces (with the optimistic `resourceVersion` check, 409 on mismatch);
- status subresource: for resources that have one, the main endpoint keeps the stored
  `.status` (on create too: status is dropped, as the apiserver does), and
  `PATCH|PUT .../<name>/status` changes only `.status`;
- DELETE: objects with finalizers get `deletionTimestamp` (and stay until a write empties
  `metadata.finalizers`); preconditions (`uid`, `resourceVersion`) are honoured;
  `deletecollection` (DELETE on a list URL, with selectors) works; deleting a Namespace marks it
  Terminating, deletes everything in it and removes it when it is empty;
- garbage collection: when an object goes, its dependents (by `ownerReferences[].uid`) are
  deleted once none of their owners exist; a periodic sweep also deletes objects whose owners
  never existed or went away (this is where Jobs owned by a deleted BatchJob disappear);
  `propagationPolicy: Orphan` (or `orphanDependents: true`) strips the owner reference instead;
- reads: lists carry `kind: <Kind>List`, `apiVersion`, `metadata.resourceVersion`, and honour
  `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`), `fieldSelector` (any dotted
  path, `=`/`==`/`!=`), and `limit`/`continue`;
- watches: `?resourceVersion=N` streams only events newer than N (no replay; 410 Gone when N is
  older than the retained event log), no resourceVersion or `0` starts with synthetic ADDED
  events, `sendInitialEvents=true` ends the initial events with the `k8s.io/initial-events-end`
  bookmark, `timeoutSeconds` ends the stream, selectors and a name filter apply to events;
- tables: `Accept: application/json;as=Table;g=meta.k8s.io;v=v1` (what `kubectl get` sends)
  gets a `meta.k8s.io/v1` Table with the resource's printer columns (custom resources take
  theirs from the constructor or from their CRD's `additionalPrinterColumns`), also for watches
  (`kubectl get -w`);
- CustomResourceDefinitions: the constructor's custom resources are served and also exist as CRD
  objects, `crds=` (e.g. the repository's crds/*.yaml via `load_crds`) are stored as written and
  served; creating or updating a CRD through the API serves its versions (Established at once),
  deleting it stops serving them and deletes their objects;
- test helpers: `GET /_emulator/watches` lists open watch streams (resource, namespace, user
  agent, start time: how a test knows kopf is listening), `purge_namespace()` forgets a test's
  namespace whatever its finalizers;
- built-in defaults that operators observe: Namespace `status.phase: Active`, Pod
  `status.phase: Pending`, Secret `stringData` folded into base64 `data`, and the Job defaults
  (`completions`, `parallelism`, `backoffLimit`, `completionMode`, `suspend`, selector and
  `controller-uid`/`job-name` template labels).

Not emulated (design tests knowing this):
- no controllers: nothing creates Pods for Jobs, schedules or runs Pods (the kubelet harness in
  tests/fakes/kubelet.py does that), no Namespace finalization beyond deleting the contents, no
  endpoints, no events of its own;
- Foreground deletion is treated as Background; the legacy Orphan default of `batch/v1` Jobs
  deleted without a propagation policy is not emulated (dependents are deleted): pass
  `propagationPolicy` explicitly, as kubectl does;
- no schema validation, defaulting, pruning or CEL rules for custom resources (the CRD's
  `openAPIV3Schema` is ignored), no validation of built-in objects beyond names and labels,
  no admission webhooks, no RBAC, authentication or impersonation (any token is accepted);
- no server-side apply and no `managedFields`; strategic merge patch knows only the merge keys
  listed above (lists elsewhere are replaced) and no per-field `patchStrategy`;
- one storage per group/version/plural: a CRD with several versions stores each version apart
  (no conversion);
- no aggregated discovery (kubectl falls back to the legacy documents), no OpenAPI documents
  (so no `kubectl explain`, and apply/create need `--validate=false`), protobuf only for the
  request bodies named above, no `exec`, `attach`, `portforward`, `scale`, `eviction`
  subresources, no `kubectl logs -f` (the log is a snapshot);
- watch events are filtered on the object's new state: an object that stops matching a label
  selector does not produce a synthetic DELETED event; no periodic BOOKMARK events;
- `limit`/`continue` pages are not a consistent snapshot across pages;
- kmock records every request in memory (`list(emulator)`); a long session holds them all.

Reactions added with kmock's DSL take precedence over the emulation and change no state.
The emulator runs inside an aiohttp server on 127.0.0.1; `EmulatorThread` runs it on its own
event loop in a background thread so synchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import random
import re
import threading
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import jsonpatch  # kmock's own dependency
import kmock
import yaml
import yarl

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

JsonDict = dict[str, Any]

EVENT_LOG_SIZE = 10_000
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")
SERVER_VERSION = {
    "major": "1",
    "minor": "37",
    "gitVersion": "v1.37.0+openbatch-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what the apiserver uses for generateName
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
# Strategic-merge-patch merge keys by list field name: a pragmatic subset of the built-in schemas.
_SMP_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "conditions": "type",
    "ports": "containerPort",
    "hostAliases": "ip",
}
_SMP_PRIMITIVE_MERGE = {"finalizers"}


# --------------------------------------------------------------------------------------------
# Resource declarations
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PrinterColumn:
    """One column of `kubectl get` output, as in a CRD's `additionalPrinterColumns`."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    """What discovery says about one group/version/plural, and how the store treats it."""

    group: str
    version: str
    plural: str
    kind: str
    short_names: tuple[str, ...] = ()
    namespaced: bool = True
    singular: str = ""
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    printer_columns: tuple[PrinterColumn, ...] = ()
    # False for built-ins: their CRD objects would be a lie.
    custom: bool = False
    # The apiserver answers an immediate DELETE with the object for some resources (custom
    # resources, pods, services) and with a `Status` for the others.
    returns_deleted_object: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    @property
    def qualified(self) -> str:
        """How the apiserver names the resource in messages: `jobs.batch`, `pods`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    def ref(self) -> kmock.resource:
        return kmock.resource(group=self.group, version=self.version, plural=self.plural)

    @classmethod
    def from_crd(cls, crd: Mapping[str, Any]) -> list[ResourceSpec]:
        """The served versions of a CustomResourceDefinition object (apiextensions.k8s.io/v1)."""
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        result: list[ResourceSpec] = []
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            columns = tuple(
                PrinterColumn(
                    name=str(col.get("name", "")),
                    json_path=str(col.get("jsonPath", "")),
                    type=str(col.get("type", "string")),
                    description=str(col.get("description", "")),
                    priority=int(col.get("priority", 0)),
                    format=str(col.get("format", "")),
                )
                for col in version.get("additionalPrinterColumns") or []
            )
            result.append(
                cls(
                    group=str(spec.get("group", "")),
                    version=str(version.get("name", "")),
                    plural=str(names.get("plural", "")),
                    kind=str(names.get("kind", "")),
                    short_names=tuple(names.get("shortNames") or ()),
                    singular=str(names.get("singular", "")),
                    categories=tuple(names.get("categories") or ()),
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    status_subresource="status" in (version.get("subresources") or {}),
                    printer_columns=columns,
                    custom=True,
                    returns_deleted_object=True,
                )
            )
        return result

    def to_crd(self) -> JsonDict:
        """A CustomResourceDefinition object that would serve this resource."""
        version: JsonDict = {
            "name": self.version,
            "served": True,
            "storage": True,
            "schema": {
                "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            },
        }
        if self.status_subresource:
            version["subresources"] = {"status": {}}
        if self.printer_columns:
            version["additionalPrinterColumns"] = [
                {
                    "name": col.name,
                    "jsonPath": col.json_path,
                    "type": col.type,
                    **({"description": col.description} if col.description else {}),
                    **({"priority": col.priority} if col.priority else {}),
                    **({"format": col.format} if col.format else {}),
                }
                for col in self.printer_columns
            ]
        names: JsonDict = {
            "plural": self.plural,
            "singular": self.singular_name,
            "kind": self.kind,
            "listKind": f"{self.kind}List",
        }
        if self.short_names:
            names["shortNames"] = list(self.short_names)
        if self.categories:
            names["categories"] = list(self.categories)
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{self.plural}.{self.group}"},
            "spec": {
                "group": self.group,
                "names": names,
                "scope": "Namespaced" if self.namespaced else "Cluster",
                "versions": [version],
            },
        }


def load_crds(directory: Path) -> list[JsonDict]:
    """The CustomResourceDefinition documents in `directory/*.yaml` (not recursive)."""
    result: list[JsonDict] = []
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                result.append(document)
    return result


_AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

BATCHJOB_COLUMNS: tuple[PrinterColumn, ...] = (
    PrinterColumn("Phase", ".status.phase"),
    PrinterColumn("Progress", ".status.progress"),
    PrinterColumn("Model", ".status.model"),
    _AGE,
)
BATCHJOB = ResourceSpec(
    group="openbatch.dev",
    version="v1alpha1",
    plural="batchjobs",
    kind="BatchJob",
    singular="batchjob",
    short_names=("bj",),
    namespaced=True,
    status_subresource=True,
    printer_columns=BATCHJOB_COLUMNS,
    custom=True,
    returns_deleted_object=True,
)

BUILTIN_RESOURCES: tuple[ResourceSpec, ...] = (
    ResourceSpec(
        "",
        "v1",
        "namespaces",
        "Namespace",
        ("ns",),
        namespaced=False,
        status_subresource=True,
        printer_columns=(PrinterColumn("Status", ".status.phase"), _AGE),
    ),
    ResourceSpec(
        "",
        "v1",
        "pods",
        "Pod",
        ("po",),
        categories=("all",),
        status_subresource=True,
        printer_columns=(
            PrinterColumn("Status", ".status.phase"),
            PrinterColumn("Exit", ".status.containerStatuses[0].state.terminated.exitCode"),
            _AGE,
        ),
        returns_deleted_object=True,
    ),
    ResourceSpec("", "v1", "configmaps", "ConfigMap", ("cm",)),
    ResourceSpec("", "v1", "secrets", "Secret", printer_columns=(PrinterColumn("Type", ".type"),)),
    ResourceSpec(
        "",
        "v1",
        "events",
        "Event",
        ("ev",),
        printer_columns=(
            PrinterColumn("Type", ".type"),
            PrinterColumn("Reason", ".reason"),
            PrinterColumn("Object", ".involvedObject.name"),
            PrinterColumn("Message", ".message"),
        ),
    ),
    ResourceSpec(
        "", "v1", "services", "Service", ("svc",), categories=("all",), returns_deleted_object=True
    ),
    ResourceSpec(
        "batch",
        "v1",
        "jobs",
        "Job",
        categories=("all",),
        status_subresource=True,
        printer_columns=(
            PrinterColumn("Active", ".status.active", "integer"),
            PrinterColumn("Succeeded", ".status.succeeded", "integer"),
            PrinterColumn("Failed", ".status.failed", "integer"),
            _AGE,
        ),
    ),
    ResourceSpec("events.k8s.io", "v1", "events", "Event", ("ev",)),
    ResourceSpec("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceSpec(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        ("crd", "crds"),
        namespaced=False,
        status_subresource=True,
    ),
)
_NAMESPACES = ("", "v1", "namespaces")
_CRDS = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error the apiserver would answer with a `Status` object."""

    def __init__(
        self, code: int, reason: str, message: str, details: JsonDict | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> JsonDict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def _not_found(spec: ResourceSpec, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{spec.qualified} "{name}" not found',
        {"name": name, "group": spec.group, "kind": spec.plural},
    )


def _conflict(spec: ResourceSpec, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {spec.qualified} "{name}": {why}',
        {"name": name, "group": spec.group, "kind": spec.plural},
    )


def _invalid(spec: ResourceSpec, name: str, causes: list[str]) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        f'{spec.kind} "{name}" is invalid: {"; ".join(causes)}',
        {"name": name, "group": spec.group, "kind": spec.kind},
    )


def now_rfc3339() -> str:
    """Seconds precision and `Z`, the way the apiserver writes timestamps."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def human_age(seconds: float) -> str:  # noqa: PLR0911  # a table of cases
    """kubectl's duration.HumanDuration, which the apiserver uses for Age cells."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = s // 86400
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


_MISSING = object()


def json_path(obj: Any, path: str) -> Any:
    """Evaluate the JSONPath subset printer columns use: `.a.b`, `[0]`, `[?(@.k=="v")]`."""
    tokens = re.findall(
        r"\[\?\(@\.([\w.-]+)\s*==\s*[\"']?([^\"')]*)[\"']?\)\]|\[(\d+)\]|\.?([^.\[]+)", path
    )
    current: Any = obj
    for flt_key, flt_val, index, key in tokens:
        if current is _MISSING or current is None:
            return None
        if flt_key:
            items = current if isinstance(current, list) else []
            current = next(
                (i for i in items if isinstance(i, dict) and str(i.get(flt_key)) == flt_val),
                _MISSING,
            )
        elif index:
            idx = int(index)
            current = current[idx] if isinstance(current, list) and idx < len(current) else _MISSING
        elif key:
            current = current.get(key, _MISSING) if isinstance(current, dict) else _MISSING
    return None if current is _MISSING else current


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, `null` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """A merge patch that understands the common strategic-merge directives and merge keys."""
    if isinstance(patch, list):
        return _smp_list(target, patch, field)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [v for v in result.get(name) or [] if v not in value]
        elif key.startswith("$"):
            continue
        elif value is None:
            result.pop(key, None)
        else:
            merged = strategic_merge_patch(result.get(key), value, key)
            if merged is None and isinstance(value, dict) and value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                result[key] = merged
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(target: Any, patch: list[Any], field: str) -> list[Any]:
    old = list(target) if isinstance(target, list) else []
    if field in _SMP_PRIMITIVE_MERGE:
        return old + [v for v in patch if v not in old]
    key = _SMP_MERGE_KEYS.get(field)
    if key is None or not all(isinstance(v, dict) and key in v for v in patch):
        return [strategic_merge_patch(None, v, "") for v in patch if not _is_delete_directive(v)]
    result = [copy.deepcopy(v) for v in old]
    for item in patch:
        position = next(
            (i for i, v in enumerate(result) if isinstance(v, dict) and v.get(key) == item[key]),
            None,
        )
        if _is_delete_directive(item):
            if position is not None:
                del result[position]
        elif position is None:
            result.append(strategic_merge_patch(None, item, ""))
        else:
            result[position] = strategic_merge_patch(result[position], item, "")
    return result


def _is_delete_directive(value: Any) -> bool:
    return isinstance(value, dict) and value.get("$patch") == "delete"


@dataclasses.dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case _:
                return not present


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """Parse `a=b,c!=d,e in (f,g),h notin (i),j,!k` (set-based and equality-based selectors)."""
    result: list[LabelRequirement] = []
    pattern = re.compile(
        r"\s*(?:(?P<not>!)\s*(?P<nkey>[^,=!\s()]+)"
        r"|(?P<skey>[^,=!\s()]+)\s+(?P<sop>in|notin)\s*\((?P<vals>[^)]*)\)"
        r"|(?P<ekey>[^,=!\s()]+)\s*(?P<eop>==|=|!=)\s*(?P<eval>[^,\s()]*)"
        r"|(?P<xkey>[^,=!\s()]+))\s*(?:,|$)"
    )
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = pattern.match(text, pos)
        if not match or match.end() == pos:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {text[pos:]!r}")
        pos = match.end()
        if match["nkey"]:
            result.append(LabelRequirement(match["nkey"], "!"))
        elif match["skey"]:
            values = frozenset(v.strip() for v in match["vals"].split(",") if v.strip())
            result.append(LabelRequirement(match["skey"], match["sop"], values))
        elif match["ekey"]:
            op = "=" if match["eop"] in ("=", "==") else "!="
            result.append(LabelRequirement(match["ekey"], op, frozenset({match["eval"]})))
        else:
            result.append(LabelRequirement(match["xkey"], "exists"))
    return result


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    """Parse `metadata.name=x,status.phase!=Running` into (path, equal?, value) triples."""
    result: list[tuple[str, bool, str]] = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        match = re.fullmatch(r"([^=!]+?)\s*(==|=|!=)\s*(.*)", term)
        if not match:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        result.append((match[1], match[2] != "!=", match[3]))
    return result


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclasses.dataclass(frozen=True)
class Selectors:
    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[tuple[str, bool, str], ...] = ()
    name: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str], name: str | None = None) -> Selectors:
        return cls(
            labels=tuple(parse_label_selector(params.get("labelSelector", ""))),
            fields=tuple(parse_field_selector(params.get("fieldSelector", ""))),
            name=name,
        )

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.name is not None and meta.get("name") != self.name:
            return False
        labels = meta.get("labels") or {}
        if not all(req.matches(labels) for req in self.labels):
            return False
        return all((_field_value(obj, path) == value) == eq for path, eq, value in self.fields)


# kubectl's typed commands (`create namespace|configmap|secret`, deletes of built-ins) send
# protobuf bodies and do not fall back to JSON on 415: decode the few types they send.
_PB_SCHEMAS: dict[str, dict[int, tuple[str, str]]] = {
    "ObjectMeta": {
        1: ("name", "str"),
        2: ("generateName", "str"),
        3: ("namespace", "str"),
        5: ("uid", "str"),
        6: ("resourceVersion", "str"),
        7: ("generation", "int"),
        11: ("labels", "map"),
        12: ("annotations", "map"),
        13: ("ownerReferences", "OwnerReference[]"),
        14: ("finalizers", "str[]"),
    },
    "OwnerReference": {
        1: ("kind", "str"),
        3: ("name", "str"),
        4: ("uid", "str"),
        5: ("apiVersion", "str"),
        6: ("controller", "bool"),
        7: ("blockOwnerDeletion", "bool"),
    },
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec")},
    "NamespaceSpec": {1: ("finalizers", "str[]")},
    "ConfigMap": {
        1: ("metadata", "ObjectMeta"),
        2: ("data", "map"),
        3: ("binaryData", "map_b64"),
        4: ("immutable", "bool"),
    },
    "Secret": {
        1: ("metadata", "ObjectMeta"),
        2: ("data", "map_b64"),
        3: ("type", "str"),
        4: ("stringData", "map"),
        5: ("immutable", "bool"),
    },
    "DeleteOptions": {
        1: ("gracePeriodSeconds", "int"),
        2: ("preconditions", "Preconditions"),
        3: ("orphanDependents", "bool"),
        4: ("propagationPolicy", "str"),
        5: ("dryRun", "str[]"),
    },
    "Preconditions": {1: ("uid", "str"), 2: ("resourceVersion", "str")},
}


def _pb_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _pb_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    pos = 0
    while pos < len(data):
        key, pos = _pb_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _pb_varint(data, pos)
        elif wire == 2:
            length, pos = _pb_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _pb_message(data: bytes, schema_name: str) -> JsonDict:
    schema = _PB_SCHEMAS[schema_name]
    result: JsonDict = {}
    for number, value in _pb_fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        if kind in ("map", "map_b64") and isinstance(value, bytes):
            entry = dict(_pb_fields(value))
            raw_key, raw_value = entry.get(1, b""), entry.get(2, b"")
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            item_bytes = raw_value if isinstance(raw_value, bytes) else b""
            result.setdefault(name, {})[key] = (
                base64.b64encode(item_bytes).decode() if kind == "map_b64" else item_bytes.decode()
            )
        elif kind.endswith("[]"):
            item_kind = kind[:-2]
            item = (
                value.decode()
                if item_kind == "str" and isinstance(value, bytes)
                else _pb_message(value, item_kind)
                if isinstance(value, bytes)
                else value
            )
            result.setdefault(name, []).append(item)
        elif kind == "str" and isinstance(value, bytes):
            if value:  # Go leaves unset strings empty; JSON omits them
                result[name] = value.decode()
        elif kind in ("int", "bool") and isinstance(value, int):
            result[name] = bool(value) if kind == "bool" else value
        elif isinstance(value, bytes):
            result[name] = _pb_message(value, kind)
    return result


def decode_protobuf(body: bytes) -> JsonDict:
    """Decode a `k8s\\x00`-framed protobuf body of a type in `_PB_SCHEMAS` into JSON form."""
    if not body.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf envelope")
    envelope = dict(_pb_fields(body[4:]))
    type_meta_raw, raw = envelope.get(1, b""), envelope.get(2, b"")
    if not isinstance(type_meta_raw, bytes) or not isinstance(raw, bytes):
        raise ValueError("malformed protobuf envelope")
    type_meta = dict(_pb_fields(type_meta_raw))
    api_version, kind = (
        v.decode() if isinstance(v, bytes) else "" for v in (type_meta.get(1), type_meta.get(2))
    )
    if kind not in _PB_SCHEMAS:
        raise KeyError(kind)
    return {"apiVersion": api_version, "kind": kind, **_pb_message(raw, kind)}


@dataclasses.dataclass(frozen=True)
class ParsedPath:
    """A Kubernetes API path, parsed the way the apiserver does (namespaces included)."""

    group: str
    version: str
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_api_path(path: str) -> ParsedPath | None:
    """Parse `/api/v1/...` and `/apis/<g>/<v>/...`; None for discovery and non-API paths."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return ParsedPath(group, version, plural, namespace, name, subresource)


def _validate_metadata(spec: ResourceSpec, obj: Mapping[str, Any]) -> None:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    causes: list[str] = []
    label_like = spec.key in (_NAMESPACES, ("", "v1", "services"), ("batch", "v1", "jobs"))
    max_len = 63 if label_like else 253
    regex = _DNS_LABEL if label_like else _DNS_SUBDOMAIN
    if not name:
        causes.append("metadata.name: Required value: name or generateName is required")
    elif len(name) > max_len or not regex.match(name):
        causes.append(f"metadata.name: Invalid value: {name!r}: must be a lowercase RFC 1123 name")
    for key, value in (meta.get("labels") or {}).items():
        label_name = str(key).rsplit("/", 1)[-1]
        if not isinstance(value, str):
            causes.append(f"metadata.labels: Invalid value: {value!r}: must be a string")
        elif len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(f"metadata.labels: Invalid value: {value!r}: invalid label value")
        if len(label_name) > 63 or not _LABEL_NAME.match(label_name):
            causes.append(f"metadata.labels: Invalid value: {key!r}: invalid label key")
    for key, value in (meta.get("annotations") or {}).items():
        if not isinstance(value, str):
            causes.append(f"metadata.annotations: Invalid value: {key!r}: must be a string")
    if causes:
        raise _invalid(spec, name, causes)


def _strip_status_changes(old: Mapping[str, Any], new: JsonDict) -> JsonDict:
    if "status" in old:
        new["status"] = copy.deepcopy(old["status"])
    else:
        new.pop("status", None)
    return new


def _spec_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    ignored = {"metadata", "status"}
    keys = (set(old) | set(new)) - ignored
    return any(old.get(k) != new.get(k) for k in keys)


@dataclasses.dataclass
class _Event:
    rv: int
    key: tuple[str, str, str]
    type: str
    obj: JsonDict


@dataclasses.dataclass
class _Watch:
    """An open watch stream, as `GET /_emulator/watches` reports it (to see who watches what)."""

    resource: str
    namespace: str | None
    params: dict[str, str]
    user_agent: str
    started: float


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with an apiserver-like store, discovery, watches and tables.

    `custom_resources` are served and exist as (synthetic) CRD objects; `crds` are
    CustomResourceDefinition objects (e.g. `load_crds(repo / "crds")`) stored as given and
    served; more can be added at run time by creating CRDs through the API. `gc_interval` is
    how often the owner-reference sweep runs (0 disables the sweep; cascading on deletion stays).
    """

    def __init__(
        self,
        custom_resources: Sequence[ResourceSpec] = (BATCHJOB,),
        *,
        crds: Sequence[Mapping[str, Any]] = (),
        gc_interval: float = 0.5,
        event_log_size: int = EVENT_LOG_SIZE,
        history_limit: int = 20,
    ) -> None:
        super().__init__()
        self._specs: dict[tuple[str, str, str], ResourceSpec] = {}
        self._rv = 0
        self._events: list[_Event] = []
        self._trimmed_rv = 0  # events with rv <= this are no longer retained
        self._event_log_size = event_log_size
        self._history_limit = history_limit
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._uids: dict[str, tuple[tuple[str, str, str], str | None, str]] = {}
        self._watches: dict[int, _Watch] = {}
        self._gc_interval = gc_interval
        self._gc_task: asyncio.Task[None] | None = None
        self._gc_active = False
        self._gc_pending = False
        # Set by whoever runs pods (the kubelet harness): (namespace, pod) -> log text or None.
        self.pod_log_provider: Callable[[str, str], str | None] | None = None
        for spec in BUILTIN_RESOURCES:
            self.register(spec)
        for spec in custom_resources:
            self.register(spec)
            self._seed_crd(spec)
        for crd in crds:
            name = str((crd.get("metadata") or {}).get("name", ""))
            existing = self._live(_CRDS, None, name)
            if existing is not None:
                self._commit(self._specs[_CRDS], None, copy.deepcopy(existing), "DELETED")
            self._seed(_CRDS, copy.deepcopy(dict(crd)))
            self._establish_crd(name)
        self._seed(_NAMESPACES, {"metadata": {"name": "default"}})

    def __attrs_post_init__(self) -> None:
        """Register none of kmock's fallbacks: the emulation below serves unmatched requests."""

    # ----- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> KubeEmulator:
        await super().__aenter__()
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        if self._gc_interval > 0:
            self._gc_task = asyncio.create_task(self._gc_loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close_streams()
        if self._gc_task is not None:
            self._gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc_task
        await super().__aexit__(exc_type, exc_value, traceback)

    def close_streams(self) -> None:
        """End every open watch stream (before the server stops, so it stops quickly)."""
        self._closing.set()
        self._notify()

    # ----- registry ---------------------------------------------------------------------------

    def register(self, spec: ResourceSpec) -> None:
        """Serve a resource (discovery, CRUD, watch)."""
        self._specs[spec.key] = spec
        self.resources[spec.ref()] = kmock.ResourceInfo(
            kind=spec.kind,
            singular=spec.singular_name,
            namespaced=spec.namespaced,
            shortnames=spec.short_names,
            categories=spec.categories,
            verbs=ALL_VERBS,
            subresources=("status",) if spec.status_subresource else (),
        )

    def unregister(self, spec: ResourceSpec) -> None:
        self._specs.pop(spec.key, None)
        with contextlib.suppress(KeyError):
            del self.resources[spec.ref()]

    @property
    def specs(self) -> list[ResourceSpec]:
        return list(self._specs.values())

    def find_spec(self, resource: str) -> ResourceSpec:
        """Find a served resource by plural, short name, kind, `plural.group` or `g/v/plural`."""
        wanted = resource.lower()
        for spec in self._specs.values():
            names = {
                spec.plural,
                spec.kind.lower(),
                spec.singular_name,
                *spec.short_names,
                f"{spec.plural}.{spec.group}",
                f"{spec.api_version}/{spec.plural}",
            }
            if wanted in names:
                return spec
        raise KeyError(resource)

    def _seed(self, key: tuple[str, str, str], obj: JsonDict) -> None:
        spec = self._specs[key]
        prepared = self._prepare_create(spec, None, obj)
        self._commit(spec, None, prepared, "ADDED")

    def _seed_crd(self, spec: ResourceSpec) -> None:
        crd = spec.to_crd()
        name = crd["metadata"]["name"]
        if self._live(_CRDS, None, name) is None:
            self._seed(_CRDS, crd)
        self._establish_crd(name)

    # ----- store primitives -------------------------------------------------------------------

    def _obj_key(
        self, key: tuple[str, str, str], namespace: str | None, name: str
    ) -> tuple[kmock.resource, str | None, str]:
        return (kmock.resource(group=key[0], version=key[1], plural=key[2]), namespace, name)

    def _live(self, key: tuple[str, str, str], namespace: str | None, name: str) -> JsonDict | None:
        okey = self._obj_key(key, namespace, name)
        if okey not in self.objects:
            return None
        obj = self.objects[okey]
        if obj.deleted:
            return None
        raw: JsonDict = obj.raw
        return raw

    def iter_objects(
        self, key: tuple[str, str, str], namespace: str | None = None
    ) -> Iterator[JsonDict]:
        """Live objects of one resource (all namespaces when `namespace` is None)."""
        for (res, ns, _), obj in list(self.objects.items()):
            if (res.group, res.version, res.plural) != key or obj.deleted:
                continue
            if namespace is not None and ns != namespace:
                continue
            raw: JsonDict = obj.raw
            yield raw

    def get_object(self, resource: str, namespace: str | None, name: str) -> JsonDict | None:
        """A deep copy of a live object, or None (call on the emulator's loop)."""
        spec = self.find_spec(resource)
        obj = self._live(spec.key, namespace if spec.namespaced else None, name)
        return copy.deepcopy(obj) if obj is not None else None

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _commit(
        self, spec: ResourceSpec, namespace: str | None, new: JsonDict, event: str
    ) -> JsonDict:
        """Store a new version (or a deletion, `event == "DELETED"`) and publish the event."""
        meta = new.setdefault("metadata", {})
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        okey = self._obj_key(spec.key, namespace, meta["name"])
        if event == "ADDED" and okey in self.objects:
            self.objects[okey].create(new)
        elif event == "ADDED":
            self.objects[okey] = new
        elif event == "MODIFIED":
            self.objects[okey].create(new)
        else:
            # kmock's soft deletion only marks; keep its last version equal to what was deleted.
            self.objects[okey].create(new)
            self.objects[okey].delete()
        history = self.objects[okey].history
        keep = 2 if event == "DELETED" else self._history_limit
        while len(history) > keep:
            del history[0]
        uid = meta.get("uid")
        if uid:
            if event == "DELETED":
                self._uids.pop(uid, None)
            else:
                self._uids[uid] = (spec.key, namespace, meta["name"])
        self._events.append(_Event(rv, spec.key, event, copy.deepcopy(new)))
        if len(self._events) > self._event_log_size:
            drop = len(self._events) - self._event_log_size
            self._trimmed_rv = self._events[drop - 1].rv
            del self._events[:drop]
        self._notify()
        return new

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ----- write logic (pure-ish: compute, then commit) ---------------------------------------

    def _check_namespace(self, spec: ResourceSpec, namespace: str | None) -> None:
        if not spec.namespaced:
            return
        if namespace is None:
            raise ApiError(400, "BadRequest", "the namespace of the object is required")
        ns = self._live(_NAMESPACES, None, namespace)
        if ns is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {namespace} "
                "because it is being terminated",
                {"name": namespace, "kind": "namespaces"},
            )

    def _prepare_create(self, spec: ResourceSpec, namespace: str | None, body: Any) -> JsonDict:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request must be a JSON object")
        obj: JsonDict = copy.deepcopy(body)
        if obj.get("apiVersion", spec.api_version) != spec.api_version:
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({obj['apiVersion']}) does not match the expected "
                f"API version ({spec.api_version})",
            )
        if obj.get("kind", spec.kind) != spec.kind:
            raise ApiError(
                400,
                "BadRequest",
                f"the kind in the data ({obj['kind']}) does not match the expected kind "
                f"({spec.kind})",
            )
        obj = {"apiVersion": spec.api_version, "kind": spec.kind, **obj}
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if spec.namespaced:
            body_ns = meta.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request",
                )
            namespace = namespace or body_ns
            self._check_namespace(spec, namespace)
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            for _ in range(100):
                suffix = "".join(random.choices(_NAME_CHARS, k=5))
                candidate = f"{meta['generateName']}{suffix}"
                if self._live(spec.key, namespace, candidate) is None:
                    meta["name"] = candidate
                    break
        _validate_metadata(spec, obj)
        if self._live(spec.key, namespace, meta["name"]) is not None:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{spec.qualified} "{meta["name"]}" already exists',
                {"name": meta["name"], "group": spec.group, "kind": spec.plural},
            )
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        if spec.status_subresource:
            obj.pop("status", None)
        self._apply_defaults(spec, obj)
        return obj

    def _apply_defaults(self, spec: ResourceSpec, obj: JsonDict) -> None:
        """The few server-side defaults that operators observe."""
        if spec.key == _NAMESPACES:
            obj["status"] = {"phase": "Active"}
        elif spec.key == ("", "v1", "pods"):
            obj["status"] = {"phase": "Pending"}
        elif spec.key == ("", "v1", "secrets"):
            self._fold_string_data(obj)
        elif spec.key == ("batch", "v1", "jobs"):
            self._default_job(obj)

    @staticmethod
    def _fold_string_data(obj: JsonDict) -> None:
        string_data = obj.pop("stringData", None)
        obj.setdefault("type", "Opaque")
        if isinstance(string_data, dict):
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()

    @staticmethod
    def _default_job(obj: JsonDict) -> None:
        spec = obj.setdefault("spec", {})
        if spec.get("completions") is None and (
            spec.get("parallelism") is None or spec.get("completionMode") == "Indexed"
        ):
            spec["completions"] = 1
        if spec.get("parallelism") is None:
            spec["parallelism"] = 1
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("manualSelector", False)
        uid = obj["metadata"]["uid"]
        name = obj["metadata"]["name"]
        labels = {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        template = spec.setdefault("template", {})
        template_meta = template.setdefault("metadata", {})
        template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}

    def _prepare_update(
        self,
        spec: ResourceSpec,
        old: JsonDict,
        new: Any,
        subresource: str | None,
        check_rv: str | None,
    ) -> JsonDict:
        """Apply the status-subresource split, immutables, preconditions and generation."""
        name = old["metadata"]["name"]
        if not isinstance(new, dict):
            raise _invalid(spec, name, ["the result of the update must be an object"])
        new = dict(copy.deepcopy(new))
        if check_rv and check_rv != old["metadata"]["resourceVersion"]:
            raise _conflict(
                spec,
                name,
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
            )
        if subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        if spec.status_subresource:
            new = _strip_status_changes(old, new)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise _invalid(spec, name, ["metadata: Required value"])
        old_meta = old["metadata"]
        for field in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise ApiError(
                    422,
                    "Invalid",
                    f"metadata.finalizers: Forbidden: no new finalizers can be added if the "
                    f"object is being deleted, found new finalizers {sorted(added)}",
                )
        new["apiVersion"] = spec.api_version
        new["kind"] = spec.kind
        _validate_metadata(spec, new)
        if spec.key == ("", "v1", "secrets"):
            self._fold_string_data(new)
        if _spec_changed(old, new):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        updated: JsonDict = new
        return updated

    def _write_update(self, spec: ResourceSpec, old: JsonDict, new: JsonDict) -> JsonDict:
        """Commit an update; an emptied finalizer list on a deleted object removes it."""
        meta = new["metadata"]
        namespace = meta.get("namespace") if spec.namespaced else None
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            meta.pop("finalizers", None)
            return self._remove(spec, namespace, new)
        if new == old:
            return copy.deepcopy(old)
        return copy.deepcopy(self._commit(spec, namespace, new, "MODIFIED"))

    def _remove(self, spec: ResourceSpec, namespace: str | None, obj: JsonDict) -> JsonDict:
        """Remove an object for good, then let the garbage collector and namespaces react."""
        final = copy.deepcopy(self._commit(spec, namespace, copy.deepcopy(obj), "DELETED"))
        if spec.key == _CRDS:
            self._drop_crd(final)
        self._collect_garbage()
        if namespace is not None:
            self._maybe_finish_namespace(namespace)
        return final

    def delete_object(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        options: Mapping[str, Any] | None = None,
    ) -> JsonDict:
        """DELETE semantics: finalizers postpone, preconditions conflict, dependents follow."""
        options = options or {}
        obj = self._live(spec.key, namespace, name)
        if obj is None:
            raise _not_found(spec, name)
        preconditions = options.get("preconditions") or {}
        meta = obj["metadata"]
        if preconditions.get("uid") and preconditions["uid"] != meta.get("uid"):
            raise _conflict(spec, name, "Precondition failed: UID in precondition does not match")
        rv = preconditions.get("resourceVersion")
        if rv and rv != meta.get("resourceVersion"):
            raise _conflict(
                spec, name, "Precondition failed: ResourceVersion in precondition does not match"
            )
        policy = options.get("propagationPolicy")
        if policy == "Orphan" or options.get("orphanDependents") is True:
            self._orphan_dependents(str(meta.get("uid")))
        if spec.key == _NAMESPACES:
            return self._delete_namespace(obj)
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return copy.deepcopy(obj)
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return copy.deepcopy(self._commit(spec, namespace, new, "MODIFIED"))
        return self._remove(spec, namespace, obj)

    def _delete_namespace(self, ns_obj: JsonDict) -> JsonDict:
        name = ns_obj["metadata"]["name"]
        spec = self._specs[_NAMESPACES]
        if not ns_obj["metadata"].get("deletionTimestamp"):
            new = copy.deepcopy(ns_obj)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["status"] = {"phase": "Terminating"}
            ns_obj = self._commit(spec, None, new, "MODIFIED")
        for other in list(self._specs.values()):
            if not other.namespaced:
                continue
            for obj in list(self.iter_objects(other.key, name)):
                with contextlib.suppress(ApiError):
                    self.delete_object(other, name, obj["metadata"]["name"])
        result = copy.deepcopy(ns_obj)
        self._maybe_finish_namespace(name)
        return result

    def _maybe_finish_namespace(self, namespace: str) -> None:
        ns = self._live(_NAMESPACES, None, namespace)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        for spec in self._specs.values():
            if spec.namespaced and next(self.iter_objects(spec.key, namespace), None) is not None:
                return
        self._commit(self._specs[_NAMESPACES], None, copy.deepcopy(ns), "DELETED")

    def purge_namespace(self, namespace: str) -> None:
        """Remove a namespace and everything in it now, finalizers or not, and forget their
        histories (test cleanup: keeps a session-long emulator small)."""
        for spec in list(self._specs.values()):
            if not spec.namespaced:
                continue
            for obj in list(self.iter_objects(spec.key, namespace)):
                self._commit(spec, namespace, copy.deepcopy(obj), "DELETED")
        ns = self._live(_NAMESPACES, None, namespace)
        if ns is not None:
            self._commit(self._specs[_NAMESPACES], None, copy.deepcopy(ns), "DELETED")
        for key in [k for k in self.objects if k[1] == namespace]:
            del self.objects[key]
        ns_key = self._obj_key(_NAMESPACES, None, namespace)
        if ns_key in self.objects:
            del self.objects[ns_key]
        self._collect_garbage()

    def _orphan_dependents(self, owner_uid: str) -> None:
        for spec in list(self._specs.values()):
            for obj in list(self.iter_objects(spec.key)):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == owner_uid for ref in refs):
                    new = copy.deepcopy(obj)
                    kept = [ref for ref in refs if ref.get("uid") != owner_uid]
                    if kept:
                        new["metadata"]["ownerReferences"] = kept
                    else:
                        new["metadata"].pop("ownerReferences")
                    ns = obj["metadata"].get("namespace") if spec.namespaced else None
                    self._commit(spec, ns, new, "MODIFIED")

    def _collect_garbage(self) -> None:
        """Delete objects none of whose owners exist; drop dangling refs when some still do.

        Deletions cascade (a deleted owner removes its dependents, which may own others): a
        call made while a sweep runs only asks that sweep for one more pass.
        """
        if self._gc_active:
            self._gc_pending = True
            return
        self._gc_active = True
        try:
            while True:
                self._gc_pending = False
                if not self._gc_pass() and not self._gc_pending:
                    return
        finally:
            self._gc_active = False

    def _gc_pass(self) -> bool:
        changed = False
        for (res, ns, name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            meta = obj.raw.get("metadata") or {}
            refs = meta.get("ownerReferences") or []
            spec = self._specs.get((str(res.group), str(res.version), str(res.plural)))
            if not refs or spec is None:
                continue
            alive = [ref for ref in refs if ref.get("uid") in self._uids]
            if not alive:
                if not meta.get("deletionTimestamp"):
                    with contextlib.suppress(ApiError):
                        self.delete_object(spec, ns, name)
                        changed = True
            elif len(alive) < len(refs):
                new = copy.deepcopy(obj.raw)
                new["metadata"]["ownerReferences"] = alive
                self._commit(spec, ns, new, "MODIFIED")
                changed = True
        return changed

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self._gc_interval)
            try:
                self._collect_garbage()
            except Exception:
                _log.exception("garbage collection sweep failed")

    # ----- CRDs -------------------------------------------------------------------------------

    def _establish_crd(self, name: str) -> None:
        crd = self._live(_CRDS, None, name)
        if crd is None:
            return
        for spec in ResourceSpec.from_crd(crd):
            if spec.key not in self._specs or self._specs[spec.key].custom:
                self.register(spec)
        names = (crd.get("spec") or {}).get("names") or {}
        new = copy.deepcopy(crd)
        new["status"] = {
            "acceptedNames": names,
            "storedVersions": [
                v.get("name") for v in (crd.get("spec") or {}).get("versions") or []
            ],
            "conditions": [
                {
                    "type": cond,
                    "status": "True",
                    "reason": reason,
                    "message": "",
                    "lastTransitionTime": now_rfc3339(),
                }
                for cond, reason in (
                    ("NamesAccepted", "NoConflicts"),
                    ("Established", "InitialNamesAccepted"),
                )
            ],
        }
        if new != crd:
            self._commit(self._specs[_CRDS], None, new, "MODIFIED")

    def _drop_crd(self, crd: Mapping[str, Any]) -> None:
        for spec in ResourceSpec.from_crd(crd):
            current = self._specs.get(spec.key)
            if current is None or not current.custom:
                continue
            for obj in list(self.iter_objects(spec.key)):
                ns = obj["metadata"].get("namespace") if spec.namespaced else None
                self._commit(spec, ns, copy.deepcopy(obj), "DELETED")
            self.unregister(spec)

    # ----- HTTP entry point -------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """kmock's entry point, with a path parser that understands `/api/v1/namespaces`."""
        body = await raw.read()
        data: Any = None
        if "protobuf" in (raw.content_type or ""):
            with contextlib.suppress(ValueError, KeyError, IndexError):
                data = decode_protobuf(body)
        else:
            with contextlib.suppress(ValueError):
                data = json.loads(body) if body else None
        parsed = parse_api_path(raw.path)
        method = raw.method.upper()
        action: kmock.action | None = None
        if parsed is not None:
            if method == "GET" and raw.query.get("watch") in ("true", "1"):
                action = kmock.action.WATCH
            elif method == "GET":
                action = kmock.action.FETCH if parsed.name else kmock.action.LIST
            elif method == "POST" and not parsed.name:
                action = kmock.action.CREATE
            elif method in ("PATCH", "PUT") and parsed.name:
                action = kmock.action.UPDATE
            elif method == "DELETE" and parsed.name:
                action = kmock.action.DELETE
        request = kmock.Request(
            id=len(self._requests),
            raw_request=raw,
            url=raw.url,
            method=raw.method,
            params=dict(raw.query),
            headers=dict(raw.headers),
            cookies=dict(raw.cookies),
            data=data,
            body=body,
            text=body.decode(errors="replace"),
            action=action,
            resource=(
                kmock.resource(group=parsed.group, version=parsed.version, plural=parsed.plural)
                if parsed is not None
                else None
            ),
            namespace=parsed.namespace if parsed else None,
            name=parsed.name if parsed else None,
            subresource=parsed.subresource if parsed else None,
        )
        self._requests.append(request)
        try:
            response: aiohttp.web.StreamResponse = await self._handle(request)
        except ApiError as e:
            return aiohttp.web.json_response(e.status(), status=e.code)
        except Exception as e:
            _log.exception("emulator failed on %s %s", raw.method, raw.path_qs)
            return aiohttp.web.json_response(
                ApiError(500, "InternalError", f"emulator error: {e!r}").status(), status=500
            )
        return response

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """User reactions (kmock's DSL) first; everything else is emulated."""
        if self._payloads:
            with contextlib.suppress(NotImplementedError):
                result: aiohttp.web.StreamResponse = await kmock.RawHandler._handle(self, request)
                return result
        return await self._emulate(request)

    async def _emulate(  # noqa: PLR0911  # one branch per verb
        self, request: kmock.Request
    ) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        path = raw.path.rstrip("/") or "/"
        method = raw.method.upper()
        if method == "GET":
            document = self._discovery(path, raw)
            if document is not None:
                return aiohttp.web.json_response(document)
        if path in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.Response(text="ok")
        if path == "/_emulator/watches":
            return aiohttp.web.json_response(
                [dataclasses.asdict(w) for w in self._watches.values()]
            )
        if ("protobuf" in (raw.content_type or "") and request.data is None) or "cbor" in (
            raw.content_type or ""
        ):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json (got {raw.content_type!r})",
            )
        parsed = parse_api_path(path)
        if parsed is None or parsed.plural is None:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        spec = self._specs.get((parsed.group, parsed.version, parsed.plural))
        if spec is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if parsed.namespace is not None and not spec.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = parsed.namespace if spec.namespaced else None
        if spec.key == ("", "v1", "pods") and parsed.subresource == "log" and method == "GET":
            return self._serve_log(namespace, parsed.name or "")
        if parsed.subresource is not None and (
            parsed.subresource != "status" or not spec.status_subresource
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        params = dict(raw.query)
        dry_run = "dryRun" in params
        if request.action == kmock.action.WATCH:
            return await self._stream_watch(raw, spec, namespace, parsed.name, params)
        if method == "GET" and parsed.name is None:
            return self._respond(raw, self._list(spec, namespace, params), spec)
        if method == "GET":
            obj = self._live(spec.key, namespace, parsed.name) if parsed.name else None
            if obj is None:
                raise _not_found(spec, parsed.name or "")
            return self._respond(raw, copy.deepcopy(obj), spec)
        if method == "POST" and parsed.name is None:
            prepared = self._prepare_create(spec, namespace, request.data)
            if dry_run:
                return self._respond(raw, prepared, spec, status=201)
            created = copy.deepcopy(
                self._commit(spec, prepared["metadata"].get("namespace"), prepared, "ADDED")
            )
            if spec.key == _CRDS:
                self._establish_crd(created["metadata"]["name"])
                created = copy.deepcopy(self._live(_CRDS, None, created["metadata"]["name"]) or {})
            return self._respond(raw, created, spec, status=201)
        if method in ("PATCH", "PUT") and parsed.name is not None:
            old = self._live(spec.key, namespace, parsed.name)
            if old is None:
                raise _not_found(spec, parsed.name)
            new = self._compute_write(spec, old, request, parsed.subresource)
            if dry_run:
                return self._respond(raw, new, spec)
            updated = self._write_update(spec, old, new)
            if spec.key == _CRDS and parsed.subresource is None:
                self._establish_crd(parsed.name)
            return self._respond(raw, updated, spec)
        if method == "DELETE" and parsed.name is not None:
            options = request.data if isinstance(request.data, dict) else {}
            options = {**options, **self._delete_params(params)}
            if dry_run:
                obj = self._live(spec.key, namespace, parsed.name)
                if obj is None:
                    raise _not_found(spec, parsed.name)
                return self._respond(raw, copy.deepcopy(obj), spec)
            result = self.delete_object(spec, namespace, parsed.name, options)
            gone = self._live(spec.key, namespace, parsed.name) is None
            if gone and not spec.returns_deleted_object:
                status = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": parsed.name,
                        "group": spec.group,
                        "kind": spec.plural,
                        "uid": result["metadata"].get("uid"),
                    },
                }
                return aiohttp.web.json_response(status)
            return self._respond(raw, result, spec)
        if method == "DELETE":
            return self._respond(raw, self._delete_collection(spec, namespace, params), spec)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {path}")

    def _serve_log(self, namespace: str | None, name: str) -> aiohttp.web.Response:
        """`pods/<name>/log` from whoever runs pods (the kubelet harness), if anyone does."""
        spec = self._specs[("", "v1", "pods")]
        if self._live(spec.key, namespace, name) is None:
            raise _not_found(spec, name)
        provider = self.pod_log_provider
        text = provider(namespace or "", name) if provider is not None else None
        if text is None:
            raise ApiError(
                400,
                "BadRequest",
                f'container logs of pod "{name}" are not available (no kubelet runs it)',
            )
        return aiohttp.web.Response(text=text, content_type="text/plain")

    @staticmethod
    def _delete_params(params: Mapping[str, str]) -> JsonDict:
        result: JsonDict = {}
        if "propagationPolicy" in params:
            result["propagationPolicy"] = params["propagationPolicy"]
        if params.get("orphanDependents") in ("true", "false"):
            result["orphanDependents"] = params["orphanDependents"] == "true"
        return result

    def _compute_write(
        self,
        spec: ResourceSpec,
        old: JsonDict,
        request: kmock.Request,
        subresource: str | None,
    ) -> JsonDict:
        raw = request._raw_request
        assert raw is not None
        name = old["metadata"]["name"]
        if request.body and request.data is None:
            raise ApiError(400, "BadRequest", "the request body is not valid JSON")
        body = request.data
        check_rv: str | None = None
        if raw.method.upper() == "PUT":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body of the request must be a JSON object")
            check_rv = (body.get("metadata") or {}).get("resourceVersion") or None
            new = copy.deepcopy(body)
            new.setdefault("metadata", {})
            return self._prepare_update(spec, old, new, subresource, check_rv)
        content_type = (raw.content_type or "").lower()
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                new = jsonpatch.apply_patch(old, body, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise _invalid(spec, name, [f"the JSON patch failed: {e}"]) from e
            except (TypeError, KeyError, ValueError) as e:
                raise ApiError(400, "BadRequest", f"invalid JSON patch: {e!r}") from e
        elif content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            check_rv = (body.get("metadata") or {}).get("resourceVersion") or None
            if content_type == "application/merge-patch+json":
                new = merge_patch(old, body)
            else:
                new = strategic_merge_patch(old, body)
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json-patch+json, application/merge-patch+json, "
                f"application/strategic-merge-patch+json (got {content_type!r})",
            )
        if isinstance(new, dict) and isinstance(new.get("metadata"), dict):
            patched_rv = new["metadata"].get("resourceVersion")
            if patched_rv != old["metadata"]["resourceVersion"] and check_rv is None:
                check_rv = patched_rv
        return self._prepare_update(spec, old, new, subresource, check_rv)

    def _delete_collection(
        self, spec: ResourceSpec, namespace: str | None, params: Mapping[str, str]
    ) -> JsonDict:
        selectors = Selectors.from_params(params)
        deleted = []
        for obj in list(self.iter_objects(spec.key, namespace)):
            if selectors.matches(obj):
                ns = obj["metadata"].get("namespace") if spec.namespaced else None
                with contextlib.suppress(ApiError):
                    deleted.append(self.delete_object(spec, ns, obj["metadata"]["name"], params))
        return self._list_document(spec, deleted)

    # ----- reads ------------------------------------------------------------------------------

    def _list_document(self, spec: ResourceSpec, items: list[JsonDict]) -> JsonDict:
        return {
            "kind": f"{spec.kind}List",
            "apiVersion": spec.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def _list(
        self, spec: ResourceSpec, namespace: str | None, params: Mapping[str, str]
    ) -> JsonDict:
        selectors = Selectors.from_params(params)
        items = sorted(
            (
                copy.deepcopy(o)
                for o in self.iter_objects(spec.key, namespace)
                if selectors.matches(o)
            ),
            key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]),
        )
        start = params.get("continue")
        if start:
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(start.encode())))
            except ValueError as e:
                raise ApiError(410, "Expired", "the provided continue parameter is invalid") from e
            items = [
                o
                for o in items
                if (o["metadata"].get("namespace") or "", o["metadata"]["name"]) > after
            ]
        document = self._list_document(spec, items)
        limit = int(params.get("limit", "0") or 0)
        if limit > 0 and len(items) > limit:
            document["items"] = items[:limit]
            last = items[limit - 1]["metadata"]
            token = json.dumps([last.get("namespace") or "", last["name"]])
            document["metadata"]["continue"] = base64.urlsafe_b64encode(token.encode()).decode()
            document["metadata"]["remainingItemCount"] = len(items) - limit
        return document

    def _respond(
        self,
        raw: aiohttp.web.BaseRequest,
        document: JsonDict,
        spec: ResourceSpec,
        status: int = 200,
    ) -> aiohttp.web.Response:
        if "as=Table" in raw.headers.get("Accept", ""):
            document = self._table(spec, document, raw.query.get("includeObject", "Metadata"))
        return aiohttp.web.json_response(document, status=status)

    def _table(self, spec: ResourceSpec, document: JsonDict, include: str) -> JsonDict:
        """Convert an object or a list into a meta.k8s.io/v1 Table, as `kubectl get` asks."""
        columns = (PrinterColumn("Name", ".metadata.name", format="name"),) + (
            spec.printer_columns or (_AGE,)
        )
        is_list = document.get("kind", "").endswith("List") and "items" in document
        items = document["items"] if is_list else [document]
        now = datetime.datetime.now(datetime.UTC)
        rows = []
        for item in items:
            cells: list[Any] = []
            for col in columns:
                value = json_path(item, col.json_path)
                if col.type == "date" and isinstance(value, str):
                    with contextlib.suppress(ValueError):
                        value = human_age((now - parse_rfc3339(value)).total_seconds())
                cells.append(value if value is not None else ("<none>" if col.priority else ""))
            row: JsonDict = {"cells": cells}
            if include == "Object":
                row["object"] = item
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": item.get("metadata", {}),
                }
            rows.append(row)
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {
                "resourceVersion": document.get("metadata", {}).get("resourceVersion", ""),
                **(
                    {"continue": document["metadata"]["continue"]}
                    if is_list and "continue" in document.get("metadata", {})
                    else {}
                ),
            },
            "columnDefinitions": [
                {
                    "name": col.name,
                    "type": "string" if col.type == "date" else col.type,
                    "format": col.format,
                    "description": col.description or col.json_path,
                    "priority": col.priority,
                }
                for col in columns
            ],
            "rows": rows,
        }

    async def _stream_watch(
        self,
        raw: aiohttp.web.BaseRequest,
        spec: ResourceSpec,
        namespace: str | None,
        name: str | None,
        params: dict[str, str],
    ) -> aiohttp.web.StreamResponse:
        selectors = Selectors.from_params(params, name)
        rv_param = params.get("resourceVersion", "")
        send_initial = params.get("sendInitialEvents") == "true"
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        as_table = "as=Table" in raw.headers.get("Accept", "")
        include = params.get("includeObject", "Metadata")
        if rv_param not in ("", "0"):
            try:
                cursor = int(rv_param)
            except ValueError as e:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv_param!r}") from e
        else:
            cursor = self._rv

        response = aiohttp.web.StreamResponse(
            status=200, headers={"Content-Type": "application/json"}
        )
        response.enable_chunked_encoding()
        await response.prepare(raw)

        def render(event_type: str, obj: JsonDict) -> bytes:
            if as_table and event_type not in {"ERROR", "BOOKMARK"}:
                obj = self._table(spec, obj, include)
            return json.dumps({"type": event_type, "object": obj}).encode() + b"\n"

        watch_id = id(response)
        self._watches[watch_id] = _Watch(
            resource=f"{spec.api_version}/{spec.plural}",
            namespace=namespace,
            params=dict(params),
            user_agent=raw.headers.get("User-Agent", ""),
            started=time.time(),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        try:
            if rv_param in ("", "0") or send_initial:
                cursor = self._rv
                for obj in list(self.iter_objects(spec.key, namespace)):
                    if selectors.matches(obj):
                        await response.write(render("ADDED", copy.deepcopy(obj)))
                if send_initial:
                    bookmark = {
                        "kind": spec.kind,
                        "apiVersion": spec.api_version,
                        "metadata": {
                            "resourceVersion": str(cursor),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    }
                    await response.write(render("BOOKMARK", bookmark))
            elif cursor < self._trimmed_rv:
                gone = ApiError(
                    410, "Expired", f"too old resource version: {cursor} ({self._trimmed_rv})"
                ).status()
                await response.write(render("ERROR", gone))
                return response
            while not self._closing.is_set():
                changed = self._changed
                start = bisect.bisect_right(self._events, cursor, key=lambda e: e.rv)
                pending = self._events[start:]
                for event in pending:
                    cursor = event.rv
                    if event.key != spec.key:
                        continue
                    if (
                        namespace is not None
                        and event.obj["metadata"].get("namespace") != namespace
                    ):
                        continue
                    if selectors.matches(event.obj):
                        await response.write(render(event.type, event.obj))
                if pending:
                    continue
                wait = 1.0
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        break
                if raw.transport is None or raw.transport.is_closing():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        finally:
            self._watches.pop(watch_id, None)
        with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    # ----- discovery --------------------------------------------------------------------------

    def _discovery(  # noqa: PLR0911  # one branch per document
        self, path: str, raw: aiohttp.web.BaseRequest
    ) -> JsonDict | None:
        if path == "/version":
            return dict(SERVER_VERSION)
        if path == "/":
            paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/livez", "/readyz"}
            for spec in self._specs.values():
                if spec.group:
                    paths |= {f"/apis/{spec.group}", f"/apis/{spec.group}/{spec.version}"}
            return {"paths": sorted(paths)}
        if path == "/api":
            host = f"{raw.host}"
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
            }
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group_document(g) for g in self._groups()],
            }
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "api":
            return self._resource_list("", parts[1])
        if len(parts) == 2 and parts[0] == "apis":
            if parts[1] not in self._groups():
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            document = self._group_document(parts[1])
            document["kind"] = "APIGroup"
            document["apiVersion"] = "v1"
            return document
        if len(parts) == 3 and parts[0] == "apis":
            return self._resource_list(parts[1], parts[2])
        return None

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for spec in self._specs.values():
            if spec.group:
                versions = groups.setdefault(spec.group, [])
                if spec.version not in versions:
                    versions.append(spec.version)
        return groups

    def _group_document(self, group: str) -> JsonDict:
        versions = self._groups()[group]
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _resource_list(self, group: str, version: str) -> JsonDict:
        specs = [s for s in self._specs.values() if (s.group, s.version) == (group, version)]
        if not specs:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resources: list[JsonDict] = []
        for spec in specs:
            resources.append(
                {
                    "name": spec.plural,
                    "singularName": spec.singular_name,
                    "namespaced": spec.namespaced,
                    "kind": spec.kind,
                    "verbs": list(ALL_VERBS),
                    **({"shortNames": list(spec.short_names)} if spec.short_names else {}),
                    **({"categories": list(spec.categories)} if spec.categories else {}),
                }
            )
            if spec.key == ("", "v1", "pods"):
                resources.append(
                    {
                        "name": "pods/log",
                        "singularName": "",
                        "namespaced": True,
                        "kind": "Pod",
                        "verbs": ["get"],
                    }
                )
            if spec.status_subresource:
                resources.append(
                    {
                        "name": f"{spec.plural}/status",
                        "singularName": "",
                        "namespaced": spec.namespaced,
                        "kind": spec.kind,
                        "verbs": list(SUBRESOURCE_VERBS),
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }


# --------------------------------------------------------------------------------------------
# Running it for synchronous tests
# --------------------------------------------------------------------------------------------


class EmulatorThread:
    """Run a `KubeEmulator` behind an HTTP server on 127.0.0.1, on its own loop and thread.

    `call(fn)` runs `fn(emulator)` on the emulator's loop (the store is not thread-safe), e.g.
    `thread.call(lambda emu: emu.get_object("bj", "ns", "x"))`.
    """

    def __init__(
        self,
        custom_resources: Sequence[ResourceSpec] = (BATCHJOB,),
        *,
        crds: Sequence[Mapping[str, Any]] = (),
        host: str = "127.0.0.1",
        port: int | None = None,
        gc_interval: float = 0.5,
    ) -> None:
        self._custom_resources = tuple(custom_resources)
        self._crds = [copy.deepcopy(dict(crd)) for crd in crds]
        self._host = host
        self._port = port
        self._gc_interval = gc_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._url: str | None = None
        self._emulator: KubeEmulator | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the emulator is not running")
        return self._url

    @property
    def emulator(self) -> KubeEmulator:
        """The handler itself: touch its state only through `call()`."""
        if self._emulator is None:
            raise RuntimeError("the emulator is not running")
        return self._emulator

    def start(self, timeout: float = 10.0) -> str:
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the Kubernetes emulator did not start")
        if self._error is not None:
            raise RuntimeError("the Kubernetes emulator failed to start") from self._error
        return self.url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        emulator = KubeEmulator(
            self._custom_resources, crds=self._crds, gc_interval=self._gc_interval
        )
        async with emulator, kmock.Server(emulator, host=self._host, port=self._port) as server:
            self._emulator = emulator
            url = yarl.URL(str(server.url))
            self._url = str(url.with_path("")).rstrip("/")
            self._ready.set()
            await self._stopping.wait()
            emulator.close_streams()
            await asyncio.sleep(0)

    def call(self, fn: Callable[[KubeEmulator], _T], timeout: float = 10.0) -> _T:
        """Run `fn(emulator)` on the emulator's loop and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the emulator is not running")

        async def invoke() -> _T:
            return fn(self.emulator)

        return asyncio.run_coroutine_threadsafe(invoke(), loop).result(timeout)

    def submit(self, coro_fn: Callable[[KubeEmulator], Awaitable[_T]], timeout: float = 10.0) -> _T:
        """Await `coro_fn(emulator)` on the emulator's loop and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the emulator is not running")

        async def invoke() -> _T:
            return await coro_fn(self.emulator)

        return asyncio.run_coroutine_threadsafe(invoke(), loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
        self._url = None

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
