"""The hand-written CRD agrees with `openbatch.resource`, and the examples are valid BatchJobs.

Agreement is checked both ways, node by node: a field, bound, enum or default present on one
side only fails. Instances are validated with `jsonschema` after translating the few
Kubernetes-specific schema features (`nullable`, pruning of unknown fields) and applying the
CRD's defaults the way the API server does (prune, default, validate).

CEL rules (`x-kubernetes-validations`) cannot run here: the CEL evaluator (`cel-python`) is
not a project dependency. Their presence, targets and messages are checked instead; the
schema-level `oneOf`s next to the one-of rules let jsonschema catch those cases too.
"""

import copy
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]  # no stubs in the dev extra
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from openbatch.endpoints import Endpoint
from openbatch.resource import (
    API_VERSION,
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    VERSION,
    BatchJob,
    BatchJobSpec,
    BatchJobStatus,
    Condition,
    ConditionReason,
    ConditionStatus,
    ConditionType,
    ErrorItem,
    Phase,
    RequestCounts,
    format_progress,
    format_time,
    parse_completion_window,
)
from tests.docs_support import block_with

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "batchjobs.openbatch.dev.yaml"
EXAMPLES = sorted((REPO / "crds" / "examples").glob("*.yaml"))

Json = dict[str, Any]


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_MISSING: Any = _Absent()
# Keywords compared verbatim between the CRD and the model's JSON schema.
_COMPARED = (
    *("minimum", "maximum", "minLength", "maxLength", "maxItems", "maxProperties"),
    *("pattern", "enum"),
)
_JUNCTORS = ("oneOf", "anyOf", "allOf", "not")


def _crd() -> Json:
    data: Json = yaml.safe_load(CRD_PATH.read_text())
    return data


def _version() -> Json:
    (version,) = _crd()["spec"]["versions"]
    assert isinstance(version, dict)
    return version


def _root() -> Json:
    root: Json = _version()["schema"]["openAPIV3Schema"]
    return root


def _load(path: Path) -> Json:
    data: Json = yaml.safe_load(path.read_text())
    return data


# ------------------------------------------------------------------ schema plumbing


def _model_schema(model: type[BaseModel]) -> Json:
    """The model's JSON schema with `$ref`s inlined and `X | None` folded into `nullable`."""
    raw = model.model_json_schema(by_alias=True)
    defs: Json = raw.pop("$defs", {})

    def norm(node: Json) -> Json:
        node = dict(node)
        node.pop("title", None)
        node.pop("description", None)
        if "$ref" in node:
            target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
            node = {**norm(target), **node}  # siblings (default, …) win over the target
        if "anyOf" in node:
            branches = [b for b in node["anyOf"] if b != {"type": "null"}]
            if len(branches) == 1 and len(node["anyOf"]) == 2:
                rest = {k: v for k, v in node.items() if k != "anyOf"}
                node = {**norm(branches[0]), **rest, "nullable": True}
        for key in ("items", "additionalProperties", "propertyNames"):
            if isinstance(node.get(key), dict):
                node[key] = norm(node[key])
        if "properties" in node:
            node["properties"] = {k: norm(v) for k, v in node["properties"].items()}
        return node

    return norm(raw)


def _apply_defaults(schema: Json, value: Any) -> Any:
    """Fill in defaults the way the API server does: absent fields, then recursively."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = _apply_defaults(sub, value[name])
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        value = {k: _apply_defaults(schema["additionalProperties"], v) for k, v in value.items()}
    elif isinstance(value, list) and "items" in schema:
        value = [_apply_defaults(schema["items"], v) for v in value]
    return value


def _to_jsonschema(node: Json) -> Json:
    """A CRD schema node as plain JSON Schema.

    `nullable: true` becomes a `null` type; objects with declared properties get
    `additionalProperties: false`, which is what pruning plus kubectl's strict field
    validation make of an unknown field.
    """
    out: Json = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: _to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _to_jsonschema(value)
        elif key in ("oneOf", "anyOf", "allOf"):
            out[key] = [_to_jsonschema(v) for v in value]
        elif key == "nullable" or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    if "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


_FORMATS = jsonschema.FormatChecker(formats=())


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
        return False
    return datetime.fromisoformat(value).tzinfo is not None


_FORMATS.checks("date-time", raises=ValueError)(_is_date_time)


def _schema_errors(obj: Json) -> list[str]:
    """Why the API server's schema check would refuse `obj` (after defaulting), if at all."""
    root = _root()
    validator = jsonschema.Draft202012Validator(_to_jsonschema(root), format_checker=_FORMATS)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(_apply_defaults(root, obj))
    ]


def _walk(node: Json, path: str = "") -> Iterator[tuple[str, Json]]:
    """Every schema node a value can be checked against (junctor branches excluded)."""
    yield path or "<root>", node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _rules(node: Json) -> list[str]:
    return [str(v["rule"]) for v in node.get("x-kubernetes-validations", [])]


# ------------------------------------------------------------------ CRD ↔ models


def _differences(crd: Json, model: Json, path: str) -> list[str]:
    """Where a CRD node and the model's JSON-schema node disagree, recursively.

    Defaults are compared after the CRD's nested defaults are applied (`default: {}` on an
    object means "all its fields' defaults"). Nullability is checked one way: whatever the
    CRD lets through, the model must accept.
    """
    found: list[str] = []
    if crd.get("type") != model.get("type"):
        found.append(f"{path}: type {crd.get('type')!r} != model {model.get('type')!r}")
    for key in _COMPARED:
        if crd.get(key, _MISSING) != model.get(key, _MISSING):
            found.append(f"{path}: {key} {crd.get(key)!r} != model {model.get(key)!r}")
    if (crd.get("format") == "date-time") != (model.get("format") == "date-time"):
        found.append(f"{path}: format {crd.get('format')!r} != model {model.get('format')!r}")
    if crd.get("nullable") and not model.get("nullable"):
        found.append(f"{path}: the CRD allows null, the model does not")
    crd_default = _apply_defaults(crd, crd["default"]) if "default" in crd else _MISSING
    model_default = model.get("default", _MISSING)
    if model_default is None:  # `X | None = None`: absence, not a default
        model_default = _MISSING
    if crd_default != model_default:
        found.append(f"{path}: default {crd_default!r} != model {model_default!r}")
    key_limit = model.get("propertyNames", {}).get("maxLength")  # CRDs have no propertyNames
    if key_limit is not None and f"self.all(k, size(k) <= {key_limit})" not in _rules(crd):
        found.append(f"{path}: the model limits keys to {key_limit}; no CEL rule does")
    crd_props, model_props = crd.get("properties", {}), model.get("properties", {})
    if set(crd_props) != set(model_props):
        found.append(
            f"{path}: only in CRD {sorted(set(crd_props) - set(model_props))}, "
            f"only in model {sorted(set(model_props) - set(crd_props))}"
        )
    if set(crd.get("required", [])) != set(model.get("required", [])):
        found.append(
            f"{path}: required {sorted(crd.get('required', []))} "
            f"!= model {sorted(model.get('required', []))}"
        )
    for name in set(crd_props) & set(model_props):
        found += _differences(crd_props[name], model_props[name], f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        crd_sub, model_sub = crd.get(key), model.get(key)
        if isinstance(crd_sub, dict) or isinstance(model_sub, dict):
            if not (isinstance(crd_sub, dict) and isinstance(model_sub, dict)):
                found.append(f"{path}: {key} {crd_sub!r} != model {model_sub!r}")
            else:
                found += _differences(
                    crd_sub, model_sub, f"{path}{'[]' if key == 'items' else '{}'}"
                )
    return found


@pytest.mark.parametrize(
    ("field", "model"), [("spec", BatchJobSpec), ("status", BatchJobStatus)], ids=["spec", "status"]
)
def test_crd_schema_matches_model(field: str, model: type[BaseModel]) -> None:
    found = _differences(_root()["properties"][field], _model_schema(model), field)
    assert not found, "CRD and model disagree:\n" + "\n".join(found)


def test_comparison_catches_a_field_on_one_side_only() -> None:
    """The check above is not vacuous: one extra field or bound makes it fail."""
    spec = copy.deepcopy(_root()["properties"]["spec"])
    spec["properties"]["extra"] = {"type": "string", "maxLength": 3, "description": "x"}
    spec["properties"]["parallelism"]["maximum"] = 65
    found = _differences(spec, _model_schema(BatchJobSpec), "spec")
    assert any("only in CRD ['extra']" in f for f in found)
    assert any("parallelism: maximum 65 != model 64" in f for f in found)


def test_top_level_properties_match_the_object_model() -> None:
    assert set(_root()["properties"]) == {f.alias for f in BatchJob.model_fields.values()}
    assert _root()["required"] == ["spec"]


def test_names_version_and_subresources() -> None:
    crd = _crd()
    assert crd["metadata"]["name"] == CRD_NAME == "batchjobs.openbatch.dev"
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (KIND, PLURAL, "batchjob")
    assert names["shortNames"] == [SHORT_NAME] and names["categories"] == ["openbatch"]
    version = _version()
    assert f"{GROUP}/{version['name']}" == API_VERSION and version["name"] == VERSION
    assert version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns_point_at_existing_fields() -> None:
    columns = _version()["additionalPrinterColumns"]
    assert [c["name"] for c in columns][:4] == ["Phase", "Progress", "Model", "Age"]
    assert columns[3] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    for column in columns[:3] + columns[4:]:
        node = _root()
        for part in column["jsonPath"].lstrip(".").split("."):
            node = node["properties"][part]
        assert node["type"] == column["type"] == "string", column


def test_every_property_has_a_description() -> None:
    missing = [
        path for path, node in _walk(_root()) if not str(node.get("description", "")).strip()
    ]
    assert not missing, f"no description (kubectl explain shows nothing): {missing}"


def test_schema_is_structural_and_every_field_is_bounded() -> None:
    problems: list[str] = []
    for path, node in _walk(_root()):
        kind = node.get("type")
        if kind is None:
            problems.append(f"{path}: no type (not a structural schema)")
        for forbidden in ("x-kubernetes-preserve-unknown-fields", "$ref", "patternProperties"):
            if forbidden in node:
                problems.append(f"{path}: {forbidden}")
        for junctor in _JUNCTORS:
            for branch in node.get(junctor, []):
                if set(branch) - {"required"}:
                    problems.append(f"{path}: {junctor} branch sets more than `required`")
                undeclared = set(branch.get("required", [])) - set(node.get("properties", {}))
                if undeclared:
                    problems.append(f"{path}: {junctor} names undeclared {sorted(undeclared)}")
        if path in ("<root>", ".metadata", ".apiVersion", ".kind"):
            continue  # the API server owns and bounds these
        bounded_string = {"maxLength", "enum"} & set(node) or node.get("format") == "date-time"
        if kind == "string" and not bounded_string:
            problems.append(f"{path}: string without maxLength or enum")
        if kind == "integer" and "maximum" not in node and node.get("format") != "int64":
            problems.append(f"{path}: integer without maximum or int64 format")
        if kind == "array" and "maxItems" not in node:
            problems.append(f"{path}: array without maxItems")
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            problems.append(f"{path}: map without maxProperties")
    assert not problems, "\n".join(problems)


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    conditions = _root()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["properties"]["type"]["enum"] == [t.value for t in ConditionType]


# ------------------------------------------------------------------ CEL rules


def test_spec_immutability_rule_covers_every_field_but_cancel() -> None:
    spec = _root()["properties"]["spec"]
    (rule,) = [r for r in _rules(spec) if "oldSelf" in r]
    for name in spec["properties"]:
        mentioned = bool(re.search(rf"(?<![A-Za-z])self\.{name}\b", rule)) and bool(
            re.search(rf"\boldSelf\.{name}\b", rule)
        )
        assert mentioned == (name != "cancel"), f"immutability rule and spec.{name}"
    for optional in set(spec["properties"]) - set(spec["required"]):
        if "default" not in spec["properties"][optional]:  # may be absent: presence must match
            assert f"has(self.{optional}) == has(oldSelf.{optional})" in rule, optional


def test_cancel_can_only_go_from_false_to_true() -> None:
    cancel = _root()["properties"]["spec"]["properties"]["cancel"]
    assert _rules(cancel) == ["!oldSelf || self"]
    assert cancel["default"] is False


@pytest.mark.parametrize(
    ("field", "options"), [("input", ("fileID", "s3")), ("modelServer", ("url", "serviceRef"))]
)
def test_one_of_rules_exist_as_cel_and_as_schema(field: str, options: tuple[str, str]) -> None:
    node = _root()["properties"]["spec"]["properties"][field]
    assert set(options) <= set(node["properties"])
    first, second = options
    assert f"has(self.{first}) != has(self.{second})" in _rules(node)
    assert node["oneOf"] == [{"required": [first]}, {"required": [second]}]


def test_every_rule_has_a_message_and_the_window_is_capped() -> None:
    nodes = [node for _, node in _walk(_root()) if "x-kubernetes-validations" in node]
    # spec, input, completionWindow, modelServer, modelServer.url, metadata, cancel
    assert len(nodes) == 7
    for node in nodes:
        for rule in node["x-kubernetes-validations"]:
            assert rule["message"].strip()
    window = _root()["properties"]["spec"]["properties"]["completionWindow"]
    assert _rules(window) == ["duration(self) <= duration('168h')"]


# ------------------------------------------------------------------ examples


def test_the_expected_examples_exist() -> None:
    assert [p.name for p in EXAMPLES] == [
        "batchjob-file.yaml",
        "batchjob-s3.yaml",
        "batchjob-service.yaml",
        "batchjob-sharded.yaml",
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid_and_parses(path: Path) -> None:
    manifest = _load(path)
    assert _schema_errors(manifest) == []
    job = BatchJob.model_validate(manifest)
    defaulted = BatchJob.model_validate(_apply_defaults(_root(), manifest))
    assert defaulted.spec == job.spec  # the API server's defaults are the model's defaults
    assert job.status == BatchJobStatus()
    assert job.spec.completion_window == manifest["spec"].get("completionWindow", "24h")
    written = job.to_api()  # what the shim would send: valid too, and nothing set to null
    assert _schema_errors(written) == []
    assert "modelServer" in written["spec"] or "modelServer" not in manifest["spec"]
    assert len(written["spec"]["input"]) == 1


def test_examples_cover_what_they_promise() -> None:
    by_name = {p.name: BatchJob.model_validate(_load(p)).spec for p in EXAMPLES}
    s3 = by_name["batchjob-s3.yaml"]
    assert s3.input.s3 is not None and s3.endpoint is Endpoint.CHAT_COMPLETIONS
    assert s3.completion_window == "24h" and s3.model_server is None
    file = by_name["batchjob-file.yaml"]
    assert file.input.file_id and file.model_server and file.model_server.url and file.metadata
    assert file.concurrency.max_in_flight != 64
    assert by_name["batchjob-sharded.yaml"].parallelism == 3
    assert by_name["batchjob-sharded.yaml"].concurrency.mode == "polite"
    service = by_name["batchjob-service.yaml"].model_server
    assert service is not None and service.service_ref is not None
    assert service.api_key_secret_ref is not None


def _edited(name: str, **spec: Any) -> Json:
    manifest = _load(REPO / "crds" / "examples" / name)
    for key, value in spec.items():
        if value is None:
            manifest["spec"].pop(key, None)
        else:
            manifest["spec"][key] = value
    return manifest


BAD_MANIFESTS: dict[str, Json] = {
    "bad endpoint": _edited("batchjob-s3.yaml", endpoint="/v1/moderations"),
    "both input kinds": _edited(
        "batchjob-s3.yaml", input={"fileID": "file-abc", "s3": {"bucket": "abc", "key": "k"}}
    ),
    "no input kind": _edited("batchjob-s3.yaml", input={}),
    "parallelism 0": _edited("batchjob-sharded.yaml", parallelism=0),
    "parallelism 65": _edited("batchjob-sharded.yaml", parallelism=65),
    "17 metadata pairs": _edited("batchjob-file.yaml", metadata={f"k{i}": "v" for i in range(17)}),
    "metadata value too long": _edited("batchjob-file.yaml", metadata={"k": "v" * 513}),
    "window in days": _edited("batchjob-s3.yaml", completionWindow="1d"),
    "window zero": _edited("batchjob-s3.yaml", completionWindow="0h"),
    "url and serviceRef": _edited(
        "batchjob-file.yaml",
        modelServer={"url": "http://x:8000/v1", "serviceRef": {"name": "x", "port": 80}},
    ),
    "url not http": _edited("batchjob-file.yaml", modelServer={"url": "ftp://x/v1"}),
    "url with userinfo": _edited(
        "batchjob-file.yaml", modelServer={"url": "http://user:pw@vllm:8000/v1"}
    ),
    "key ref without key": _edited(
        "batchjob-file.yaml",
        modelServer={"serviceRef": {"name": "x", "port": 80}, "apiKeySecretRef": {"name": "k"}},
    ),
    "bad file id": _edited("batchjob-file.yaml", input={"fileID": "upload-1"}),
    "bucket uppercase": _edited("batchjob-s3.yaml", input={"s3": {"bucket": "Bad", "key": "k"}}),
    "maxInFlight 0": _edited("batchjob-file.yaml", concurrency={"maxInFlight": 0}),
    "priority too high": _edited("batchjob-s3.yaml", priority=1001),
    "no endpoint": _edited("batchjob-s3.yaml", endpoint=None),
}


@pytest.mark.parametrize("manifest", BAD_MANIFESTS.values(), ids=BAD_MANIFESTS.keys())
def test_bad_manifest_fails_schema_and_model(manifest: Json) -> None:
    assert _schema_errors(manifest), "the CRD schema accepted it"
    with pytest.raises(ValidationError):
        BatchJob.model_validate(manifest)


def test_unknown_spec_field_is_refused_by_the_schema() -> None:
    # The API server prunes (or, with strict field validation, refuses) unknown fields; the
    # model ignores them so an operator older than its CRD keeps working.
    manifest = _edited("batchjob-s3.yaml", maxInFlight=5)
    assert _schema_errors(manifest)
    assert BatchJob.model_validate(manifest).spec.concurrency.max_in_flight == 64


def test_rules_only_cel_enforces_are_enforced_by_the_model() -> None:
    """The schema cannot express these; CEL does in the cluster, the model does in Python."""
    long_key = _edited("batchjob-file.yaml", metadata={"k" * 65: "v"})
    too_long_window = _edited("batchjob-s3.yaml", completionWindow="169h")
    for manifest in (long_key, too_long_window):
        assert _schema_errors(manifest) == []
        with pytest.raises(ValidationError):
            BatchJob.model_validate(manifest)


# ------------------------------------------------------------------ status


def _full_status_job() -> BatchJob:
    """A BatchJob with every status field set, as a busy operator would leave it."""
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    spec = BatchJob.model_validate(_load(EXAMPLES[0])).spec
    status = BatchJobStatus(
        observed_generation=1,
        phase=Phase.FAILED,
        conditions=[
            Condition(
                type=ConditionType.ADMITTED,
                status=ConditionStatus.TRUE,
                reason=ConditionReason.ADMITTED,
                message="",
                last_transition_time=now,
                observed_generation=1,
            ),
            Condition(
                type=ConditionType.FAILED,
                status=ConditionStatus.TRUE,
                reason=ConditionReason.INVALID_INPUT,
                message="2 lines failed validation",
                last_transition_time=now + timedelta(seconds=3),
            ),
        ],
        progress="0/0",
        errors=[
            ErrorItem(code="invalid_json_line", message="This line is not parseable.", line=2),
            ErrorItem(code="invalid_request", message="m", param="body.model"),
        ],
        error_count=2,
        model="tiny",
        batch_id="batch_abc",
        output_file_id="file-out",
        error_file_id="file-err",
        output_uri="s3://openbatch/files/team-a/file-out",
        error_uri="s3://openbatch/files/team-a/file-err",
        runner_job_name="batch-abc-runner",
        finalize_job_name="batch-abc-finalize",
        in_progress_time=now,
        finalizing_time=now,
        completed_time=now,
        failed_time=now,
        expired_time=now,
        cancelling_time=now,
        cancelled_time=now,
        expires_time=now + timedelta(hours=24),
        message="input failed validation",
    )
    return BatchJob(
        metadata=BatchJob.model_validate(_load(EXAMPLES[0])).metadata, spec=spec, status=status
    )


def test_a_full_status_serializes_to_a_valid_object_and_back() -> None:
    job = _full_status_job()
    data = job.to_api()
    status_schema = _root()["properties"]["status"]
    assert set(data["status"]) == set(status_schema["properties"]), "set every field above"
    assert data["status"]["failedTime"] == "2026-03-01T12:00:00Z"
    assert data["status"]["conditions"][0]["lastTransitionTime"] == "2026-03-01T12:00:00Z"
    assert data["spec"]["input"] == {"fileID": "file-9kQ2xYb7LmN4pR8sT1vW3z"}
    assert _schema_errors(data) == []
    assert BatchJob.model_validate(data) == job
    assert job.status.condition(ConditionType.FAILED) == job.status.conditions[1]
    assert job.status.condition(ConditionType.RUNNING) is None


def test_null_timestamps_and_error_fields_are_allowed() -> None:
    data = _full_status_job().to_api()
    data["status"]["cancelledTime"] = None
    data["status"]["errors"][0]["param"] = None
    assert _schema_errors(data) == []
    BatchJob.model_validate(data)


def test_status_times_need_a_zone_and_are_written_in_utc() -> None:
    data = _full_status_job().to_api()
    data["status"]["failedTime"] = "2026-03-01T12:00:00"
    assert _schema_errors(data)
    with pytest.raises(ValidationError):
        BatchJob.model_validate(data)
    later = datetime(2026, 3, 1, 16, 0, 0, 500000, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(later) == "2026-03-01T14:00:00Z"


@pytest.mark.parametrize(
    ("counts", "text"),
    [(RequestCounts(), "0/0"), (RequestCounts(total=500, completed=100, failed=20), "120/500")],
)
def test_progress_text_fits_the_progress_column(counts: RequestCounts, text: str) -> None:
    assert format_progress(counts) == text
    pattern = _root()["properties"]["status"]["properties"]["progress"]["pattern"]
    assert re.fullmatch(pattern, text)


# ------------------------------------------------------------------ completion window


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("1s", timedelta(seconds=1)),
        ("90m", timedelta(minutes=90)),
        ("3600s", timedelta(hours=1)),
        ("168h", timedelta(hours=168)),
        ("10080m", timedelta(hours=168)),
        ("604800s", timedelta(hours=168)),
    ],
)
def test_parse_completion_window(text: str, expected: timedelta) -> None:
    assert parse_completion_window(text) == expected
    assert re.fullmatch(_window_pattern(), text)


def _window_pattern() -> str:
    pattern: str = _root()["properties"]["spec"]["properties"]["completionWindow"]["pattern"]
    return pattern


@pytest.mark.parametrize("text", ["", "24", "24H", "1d", "0h", "024h", "1.5h", " 24h", "1234567s"])
def test_completion_window_format_errors(text: str) -> None:
    with pytest.raises(ValueError, match="whole number"):
        parse_completion_window(text)
    assert not re.fullmatch(_window_pattern(), text)  # the CRD refuses the same texts


@pytest.mark.parametrize("text", ["169h", "10081m", "604801s", "999999h"])
def test_completion_window_longer_than_a_week(text: str) -> None:
    # These match the CRD pattern; its CEL rule `duration(self) <= duration('168h')` refuses them.
    assert re.fullmatch(_window_pattern(), text)
    with pytest.raises(ValueError, match="168h"):
        parse_completion_window(text)


# ------------------------------------------------------------------ tenancy rules


def _url_rule() -> str:
    url = _root()["properties"]["spec"]["properties"]["modelServer"]["properties"]["url"]
    (rule,) = _rules(url)
    return rule


def _cel_host_regex() -> str:
    found = re.search(r"matches\('(.*)'\)", _url_rule())
    assert found, _url_rule()
    return found.group(1)


REFUSED_HOSTS = [
    "localhost",
    "api.localhost",
    "127.0.0.1",
    "127.1.2.3",
    "169.254.169.254",
    "169.254.0.1",
    "metadata.google.internal",
    "metadata.google.internal.",
    "0.0.0.0",
    "2130706433",
    "0x7f000001",
    "::1",
    "fe80::1",
    "fd00:ec2::254",
    "::ffff:127.0.0.1",
]
ALLOWED_HOSTS = ["vllm.models.svc.cluster.local", "10.0.0.7", "fd00::2", "sim-127.example"]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_cel_url_rule_refuses_what_the_policy_always_refuses(host: str) -> None:
    """The CEL rule (RE2 syntax; this regex means the same in Python) and
    `openbatch.url_policy.always_refused` agree on every static case."""
    from openbatch.url_policy import always_refused

    assert re.fullmatch(_cel_host_regex(), host.lower())
    bracketed = f"[{host}]" if ":" in host else host
    assert always_refused(f"http://{bracketed}:8000/v1") is not None


@pytest.mark.parametrize("host", ALLOWED_HOSTS)
def test_cel_url_rule_lets_ordinary_hosts_through(host: str) -> None:
    from openbatch.url_policy import always_refused

    assert not re.fullmatch(_cel_host_regex(), host)
    bracketed = f"[{host}]" if ":" in host else host
    assert always_refused(f"http://{bracketed}:8000/v1") is None


def test_parallelism_may_not_exceed_max_in_flight_rule() -> None:
    spec = _root()["properties"]["spec"]
    assert "self.parallelism <= self.concurrency.maxInFlight" in _rules(spec)


def test_the_operator_docs_batchjob_is_valid_and_parses() -> None:
    """docs/operator.md's annotated BatchJob, as written (its comments list alternatives)."""
    manifest = yaml.safe_load(block_with("docs/operator.md", "kind: BatchJob", "yaml"))
    assert _schema_errors(manifest) == []
    spec = BatchJob.model_validate(manifest).spec
    assert spec.concurrency.mode == "polite" and spec.model_server is not None
    assert spec.model_server.service_ref is not None and spec.model_server.api_key_secret_ref


def test_the_operator_docs_kubectl_get_shows_the_printer_columns() -> None:
    header = block_with("docs/operator.md", "$ kubectl get bj").splitlines()[1].split()
    columns = _version()["additionalPrinterColumns"]
    shown = [c["name"].upper() for c in columns if not c.get("priority")]
    assert header == ["NAME", *shown]
