"""The test cluster itself: emulated API + kubectl + kubernetes client + kopf + kubelet harness.

These tests prove the parts the operator's end-to-end tests stand on, so a failure there points
here first. Run alone with `pytest -p tests.fixtures.kube tests/component/test_kube_cluster.py`
until the plugin is listed in tests/conftest.py.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.kubelet import KubeletHarness
from tests.fixtures.kube import ApiError, KubeApi, RunKopf, job_condition

BATCHJOB_YAML = """\
apiVersion: openbatch.dev/v1alpha1
kind: BatchJob
metadata:
  name: {name}
  labels: {{team: a}}
spec:
  endpoint: /v1/chat/completions
  input: {{s3: {{bucket: b, key: in.jsonl}}}}
"""


def batchjob(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "openbatch.dev/v1alpha1",
        "kind": "BatchJob",
        "metadata": {"name": name},
        "spec": {"endpoint": "/v1/chat/completions", **spec},
    }


def as_dict(value: object) -> dict[str, Any]:
    """The custom-objects API returns `object`; it is a JSON object."""
    assert isinstance(value, dict)
    return value


def python_job(name: str, code: str, **spec: Any) -> dict[str, Any]:
    """A Job whose only container runs `python -c code` (this interpreter)."""
    container = spec.pop("container", {})
    pod_spec = spec.pop("pod_spec", {})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "python:3.11",
                            "command": [sys.executable, "-c", textwrap.dedent(code)],
                            **container,
                        }
                    ],
                    **pod_spec,
                }
            },
            **spec,
        },
    }


def wait_condition(
    kube_api: KubeApi, job: str, ctype: str, timeout: float = 20.0
) -> dict[str, Any]:
    obj = kube_api.wait_for(
        "jobs", job, lambda j: job_condition(j, ctype) is not None, timeout=timeout
    )
    assert obj is not None
    return obj


# ----- (a) kubectl -------------------------------------------------------------------------------


def test_kubectl_crud_on_batchjobs(kube_api: KubeApi, tmp_path: Path) -> None:
    manifest = tmp_path / "bj.yaml"
    manifest.write_text(BATCHJOB_YAML.format(name="first"))

    assert "created" in kube_api.kubectl("apply", "-f", str(manifest)).stdout
    assert "unchanged" in kube_api.kubectl("apply", "-f", str(manifest)).stdout
    obj = kube_api.get("batchjobs", "first")
    assert obj is not None
    assert obj["metadata"]["namespace"] == kube_api.namespace
    assert obj["metadata"]["generation"] == 1

    # The printer columns come from the server's Table; status is written via /status.
    kube_api.patch(
        "batchjobs",
        "first",
        {"status": {"phase": "InProgress", "model": "tiny"}},
        subresource="status",
    )
    table = kube_api.kubectl("get", "bj").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "MODEL", "AGE"]
    assert table[1].split()[:3] == ["first", "InProgress", "tiny"]

    kube_api.kubectl("patch", "bj", "first", "--type=merge", "-p", '{"spec":{"cancel":true}}')
    listed = json.loads(kube_api.kubectl("get", "bj", "-o", "json").stdout)
    assert [item["spec"].get("cancel") for item in listed["items"]] == [True]
    single = json.loads(kube_api.kubectl("get", "batchjob", "first", "-o", "json").stdout)
    assert single["metadata"]["generation"] == 2  # spec changed; the status write did not bump it
    assert single["status"]["phase"] == "InProgress"  # a main-resource patch keeps the status
    assert kube_api.kubectl("get", "bj", "-l", "team=a", "-o", "name").stdout.split() == [
        "batchjob.openbatch.dev/first"
    ]
    assert kube_api.kubectl("get", "bj", "-l", "team=b", "-o", "name").stdout.split() == []

    kube_api.kubectl("create", "secret", "generic", "creds", "--from-literal=key=s3cr3t")
    assert kube_api.get("secrets", "creds") is not None

    assert "deleted" in kube_api.kubectl("delete", "bj", "first").stdout
    assert kube_api.get("batchjobs", "first") is None
    missing = kube_api.kubectl("get", "bj", "first", check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr or "not found" in missing.stderr


# ----- (b) the kubernetes client -----------------------------------------------------------------


def test_python_client_crud_and_watch_from_resource_version(kube_api: KubeApi) -> None:
    import kubernetes.client
    import kubernetes.watch

    ns = kube_api.namespace
    group, version, plural = "openbatch.dev", "v1alpha1", "batchjobs"
    with kube_api.client() as api:
        custom = kubernetes.client.CustomObjectsApi(api)
        core = kubernetes.client.CoreV1Api(api)

        created = as_dict(
            custom.create_namespaced_custom_object(group, version, ns, plural, batchjob("w"))
        )
        assert created["metadata"]["uid"]
        assert created["metadata"]["creationTimestamp"].endswith("Z")
        rv_after_create = created["metadata"]["resourceVersion"]

        with pytest.raises(kubernetes.client.ApiException) as conflict:
            custom.create_namespaced_custom_object(group, version, ns, plural, batchjob("w"))
        assert conflict.value.status == 409

        patched = as_dict(
            custom.patch_namespaced_custom_object(
                group, version, ns, plural, "w", {"spec": {"priority": 5}}
            )
        )
        assert int(patched["metadata"]["resourceVersion"]) > int(rv_after_create)
        assert patched["metadata"]["generation"] == 2
        status = as_dict(
            custom.patch_namespaced_custom_object_status(
                group,
                version,
                ns,
                plural,
                "w",
                {"status": {"phase": "Validating"}, "spec": {"priority": 9}},
            )
        )
        assert status["status"] == {"phase": "Validating"}
        assert status["spec"]["priority"] == 5  # /status ignores everything but .status
        assert status["metadata"]["generation"] == 2

        listing = as_dict(custom.list_namespaced_custom_object(group, version, ns, plural))
        assert listing["kind"] == "BatchJobList"
        assert listing["apiVersion"] == "openbatch.dev/v1alpha1"

        # A watch from the create's resourceVersion replays only what came after it.
        watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        events = [
            (event["type"], event["object"]["metadata"]["resourceVersion"])
            for event in watch.stream(  # type: ignore[no-untyped-call]
                custom.list_namespaced_custom_object,
                group,
                version,
                ns,
                plural,
                resource_version=rv_after_create,
                timeout_seconds=1,
            )
        ]
        assert [kind for kind, _ in events] == ["MODIFIED", "MODIFIED"]
        assert all(int(rv) > int(rv_after_create) for _, rv in events)

        # Built-ins: generateName, label selectors, typed models.
        meta = kubernetes.client.V1ObjectMeta
        core.create_namespaced_config_map(
            ns,
            kubernetes.client.V1ConfigMap(
                metadata=meta(generate_name="cfg-", labels={"app": "x", "tier": "db"}),
                data={"k": "v"},
            ),
        )
        core.create_namespaced_config_map(
            ns, kubernetes.client.V1ConfigMap(metadata=meta(name="other", labels={"app": "y"}))
        )

        def names(selector: str) -> list[str]:
            items = core.list_namespaced_config_map(ns, label_selector=selector).items
            return sorted(str(c.metadata.name if c.metadata else "") for c in items)

        (generated,) = names("app=x,tier=db")
        assert generated.startswith("cfg-") and len(generated) == len("cfg-") + 5
        assert names("app in (x,y)") == sorted([generated, "other"])
        assert names("app!=x") == ["other"]
        assert names("!tier") == ["other"]

        with pytest.raises(kubernetes.client.ApiException) as gone:
            custom.delete_namespaced_custom_object(group, version, ns, plural, "nope")
        assert gone.value.status == 404
        custom.delete_namespaced_custom_object(group, version, ns, plural, "w")
        assert kube_api.get("batchjobs", "w") is None


def test_finalizers_json_patch_test_and_owner_gc(kube_api: KubeApi) -> None:
    """What kopf relies on: a failed JSON-patch `test` is 422; finalizers hold deletion."""
    obj = kube_api.create("batchjobs", batchjob("f"))
    stale = obj["metadata"]["resourceVersion"]
    kube_api.patch("batchjobs", "f", {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(ApiError) as failed:
        kube_api.patch(
            "batchjobs",
            "f",
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": stale},
                {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
            ],
            content_type="application/json-patch+json",
        )
    assert failed.value.status == 422
    kube_api.patch("batchjobs", "f", {"metadata": {"finalizers": ["x/y"]}})

    # A Job owned by the BatchJob survives while the owner is only marked for deletion.
    owner_ref = {
        "apiVersion": "openbatch.dev/v1alpha1",
        "kind": "BatchJob",
        "name": "f",
        "uid": obj["metadata"]["uid"],
    }
    job = python_job("child", "pass")
    job["metadata"]["ownerReferences"] = [owner_ref]
    kube_api.create("jobs", job)
    kube_api.delete("batchjobs", "f")
    marked = kube_api.get("batchjobs", "f")
    assert marked is not None and marked["metadata"]["deletionTimestamp"]
    assert kube_api.get("jobs", "child") is not None
    kube_api.patch("batchjobs", "f", {"metadata": {"finalizers": None}})
    assert kube_api.get("batchjobs", "f") is None
    kube_api.wait_for("jobs", "child", lambda j: j is None, timeout=5)


# ----- (c) kopf ----------------------------------------------------------------------------------

OPERATOR = """
import kopf

@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    settings.persistence.finalizer = "openbatch.dev/test-finalizer"
    settings.posting.level = 0

@kopf.on.create("openbatch.dev", "v1alpha1", "batchjobs")
def created(patch, name, logger, **_):
    logger.info(f"CREATE HANDLER {name}")
    patch.status["phase"] = "Seen"

@kopf.on.resume("openbatch.dev", "v1alpha1", "batchjobs")
def resumed(patch, status, name, logger, **_):
    logger.info(f"RESUME HANDLER {name}")
    patch.status["resumes"] = (status.get("resumes") or 0) + 1

@kopf.on.delete("openbatch.dev", "v1alpha1", "batchjobs")
def deleted(name, logger, **_):
    logger.info(f"DELETE HANDLER {name}")
"""


def test_kopf_operator_create_restart_delete(
    kube_api: KubeApi, run_kopf: RunKopf, tmp_path: Path
) -> None:
    operator = tmp_path / "operator.py"
    operator.write_text(OPERATOR)
    kopf = run_kopf(operator, resource="batchjobs")

    kube_api.create("batchjobs", batchjob("k"))
    seen = kube_api.wait_for(
        "batchjobs", "k", lambda o: ((o or {}).get("status") or {}).get("phase") == "Seen"
    )
    assert seen is not None
    assert seen["metadata"]["finalizers"] == ["openbatch.dev/test-finalizer"]
    assert kopf.logs().count("CREATE HANDLER k") == 1

    # SIGKILL mid-life: kopf's annotations persist, so the restart resumes instead of re-creating.
    kopf.restart(kill=True)
    resumed = kube_api.wait_for(
        "batchjobs", "k", lambda o: ((o or {}).get("status") or {}).get("resumes") == 1
    )
    assert resumed is not None and resumed["status"]["phase"] == "Seen"
    assert kopf.logs().count("CREATE HANDLER k") == 1

    kube_api.kubectl("delete", "bj", "k", "--timeout=20s")
    assert kube_api.get("batchjobs", "k") is None
    assert "DELETE HANDLER k" in kopf.logs()
    assert "Traceback" not in kopf.logs()


# ----- (d) the kubelet harness --------------------------------------------------------------------


def test_job_success_and_pod_objects(kube_api: KubeApi, kubelet: KubeletHarness) -> None:
    started = time.time()
    kube_api.create("jobs", python_job("ok", "print('hello from the pod')"))
    job = wait_condition(kube_api, "ok", "Complete")
    assert job["status"]["succeeded"] == 1
    assert job["status"]["completionTime"]
    (pod,) = kubelet.pods("ok")
    assert pod.exit_code == 0
    assert kubelet.process_started_at(pod.name) >= started
    assert kubelet.logs(pod.name) == "hello from the pod\n"
    assert kubelet.jobs_seen() == ["ok"]

    obj = kube_api.get("pods", pod.name)
    assert obj is not None
    assert obj["status"]["phase"] == "Succeeded"
    assert obj["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert obj["metadata"]["labels"]["job-name"] == "ok"
    assert obj["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert not obj["metadata"].get("finalizers")  # the tracking finalizer goes once counted
    assert kube_api.kubectl("logs", pod.name).stdout == "hello from the pod\n"


def test_job_backoff_limit(kube_api: KubeApi, kubelet: KubeletHarness) -> None:
    kube_api.create("jobs", python_job("fails", "raise SystemExit(1)", backoffLimit=2))
    job = wait_condition(kube_api, "fails", "Failed")
    assert job_condition(job, "Failed")["reason"] == "BackoffLimitExceeded"  # type: ignore[index]
    assert job["status"]["failed"] == 3
    pods = kubelet.pods("fails")
    assert len(pods) == 3
    assert len({p.name for p in pods}) == 3
    assert all(p.exit_code == 1 for p in pods)


def test_pod_failure_policy_fail_job(kube_api: KubeApi, kubelet: KubeletHarness) -> None:
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}}]}
    kube_api.create("jobs", python_job("policy", "raise SystemExit(3)", podFailurePolicy=policy))
    job = wait_condition(kube_api, "policy", "Failed")
    assert job_condition(job, "Failed")["reason"] == "PodFailurePolicy"  # type: ignore[index]
    assert job_condition(job, "FailureTarget") is not None
    assert len(kubelet.pods("policy")) == 1


def test_indexed_job(kube_api: KubeApi, kubelet: KubeletHarness) -> None:
    code = "import os, sys; print('index', os.environ['JOB_COMPLETION_INDEX'], sys.argv[1])"
    container = {"args": ["$(JOB_COMPLETION_INDEX)/3"]}  # expanded, as the operator relies on
    kube_api.create(
        "jobs",
        python_job(
            "idx",
            code,
            container=container,
            completionMode="Indexed",
            completions=3,
            parallelism=3,
        ),
    )
    job = wait_condition(kube_api, "idx", "Complete")
    assert job["status"]["completedIndexes"] == "0-2"
    assert job["status"]["succeeded"] == 3
    pods = kubelet.pods("idx")
    assert sorted(p.index for p in pods if p.index is not None) == [0, 1, 2]
    for pod in pods:
        assert pod.name.startswith(f"idx-{pod.index}-")
        assert pod.env["JOB_COMPLETION_INDEX"] == str(pod.index)
        assert kubelet.logs(pod.name) == f"index {pod.index} {pod.index}/3\n"


def test_env_from_secret_configmap_and_volume(kube_api: KubeApi, kubelet: KubeletHarness) -> None:
    kube_api.create(
        "secrets", {"metadata": {"name": "s3"}, "stringData": {"access": "AK", "secret": "SK"}}
    )
    kube_api.create(
        "configmaps", {"metadata": {"name": "routes"}, "data": {"routes.yaml": "tiny: http://x\n"}}
    )
    code = """
        import os, sys
        env = os.environ
        print(env['S3_ACCESS'], env['S3_SECRET'], env['POD'], env['X_access'])
        print(open(sys.argv[1]).read().strip(), os.environ['TMPDIR'] != '/tmp')
    """
    container = {
        "args": ["/etc/openbatch/routes.yaml"],
        "env": [
            {"name": "S3_ACCESS", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "access"}}},
            {"name": "S3_SECRET", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "envFrom": [{"secretRef": {"name": "s3"}, "prefix": "X_"}],
        "volumeMounts": [{"name": "routes", "mountPath": "/etc/openbatch"}],
    }
    pod_spec = {"volumes": [{"name": "routes", "configMap": {"name": "routes"}}]}
    kube_api.create("jobs", python_job("env", code, container=container, pod_spec=pod_spec))
    wait_condition(kube_api, "env", "Complete")
    (pod,) = kubelet.pods("env")
    assert kubelet.logs(pod.name).splitlines() == [f"AK SK {pod.name} AK", "tiny: http://x True"]


def test_missing_secret_keeps_pod_pending_until_created(
    kube_api: KubeApi, kubelet: KubeletHarness
) -> None:
    container = {
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "late", "key": "t"}}}]
    }
    kube_api.create(
        "jobs", python_job("late", "import os; print(os.environ['T'])", container=container)
    )
    kubelet.wait_for(lambda h: bool(h.pods("late")), timeout=10)
    (pod,) = kubelet.pods("late")
    waiting = kube_api.wait_for(
        "pods",
        pod.name,
        lambda p: (
            "waiting"
            in (((p or {}).get("status") or {}).get("containerStatuses") or [{}])[0].get(
                "state", {}
            )
        ),
    )
    assert waiting is not None
    assert (
        waiting["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
        == "CreateContainerConfigError"
    )
    kube_api.create("secrets", {"metadata": {"name": "late"}, "stringData": {"t": "now"}})
    wait_condition(kube_api, "late", "Complete")
    assert kubelet.logs(pod.name) == "now\n"


def test_kill_pod_mid_run_starts_a_replacement(
    kube_api: KubeApi, kubelet: KubeletHarness, tmp_path: Path
) -> None:
    marker = tmp_path / "first-run"
    code = f"""
        import pathlib, time
        marker = pathlib.Path({str(marker)!r})
        if not marker.exists():
            marker.touch()
            time.sleep(60)
    """
    kube_api.create("jobs", python_job("victim", code))
    first = kubelet.wait_for_pod_running("victim", timeout=10)
    kubelet.wait_for(lambda _: marker.exists(), timeout=10)
    kubelet.kill_pod(first)
    job = wait_condition(kube_api, "victim", "Complete")
    assert job["status"]["failed"] == 1 and job["status"]["succeeded"] == 1
    pods = {p.name: p for p in kubelet.pods("victim")}
    assert len(pods) == 2
    assert pods[first].exit_code == 128 + signal.SIGKILL
    (second,) = [p for p in pods.values() if p.name != first]
    first_finished = pods[first].finished_at
    assert second.started_at is not None and first_finished is not None
    assert second.started_at >= first_finished  # the replacement starts only after the old exit


def test_active_deadline(kube_api: KubeApi, kubelet: KubeletHarness) -> None:
    kube_api.create(
        "jobs", python_job("slow", "import time; time.sleep(60)", activeDeadlineSeconds=1)
    )
    job = wait_condition(kube_api, "slow", "Failed", timeout=15)
    assert job_condition(job, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]
    (pod,) = kubelet.pods("slow")
    assert pod.exit_code == 128 + signal.SIGTERM


def test_deleting_the_job_sigterms_the_process(
    kube_api: KubeApi, kubelet: KubeletHarness, tmp_path: Path
) -> None:
    flag = tmp_path / "sigterm"
    code = f"""
        import pathlib, signal, sys, time
        def stop(*_):
            pathlib.Path({str(flag)!r}).write_text("got SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(60)
    """
    kube_api.create("jobs", python_job("doomed", code))
    pod_name = kubelet.wait_for_pod_running("doomed", timeout=10)
    kubelet.wait_for(lambda h: h.logs(pod_name) == "ready\n", timeout=10)
    kube_api.kubectl("delete", "job", "doomed")
    kubelet.wait_for(lambda h: h.pods("doomed")[0].exit_code is not None, timeout=10)
    assert flag.read_text() == "got SIGTERM"
    kube_api.wait_for("pods", pod_name, lambda p: p is None, timeout=10)


def test_harness_api_is_thread_safe_to_poll(kube_api: KubeApi, kubelet: KubeletHarness) -> None:
    """Benchmarks poll the harness from other threads while Jobs run."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def poll() -> None:
        try:
            while not stop.is_set():
                for pod in kubelet.pods():
                    kubelet.logs(pod.name)
        except BaseException as e:
            errors.append(e)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        kube_api.create("jobs", python_job("many", "print(1)", completions=4, parallelism=2))
        wait_condition(kube_api, "many", "Complete")
    finally:
        stop.set()
        poller.join()
    assert not errors
    assert len(kubelet.pods("many")) == 4


WIDGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"""


def test_crd_applied_through_the_api_is_served(kube_api: KubeApi) -> None:
    kube_api.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    crd = kube_api.get("crd", "widgets.example.com")
    assert crd is not None
    assert job_condition(crd, "Established") is not None
    try:
        widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
        kube_api.kubectl("apply", "-f", "-", input=json.dumps({**widget, "spec": {"size": 3}}))
        assert kube_api.kubectl("get", "wd").stdout.split() == ["NAME", "SIZE", "w", "3"]
        # The repository's CRD is served as written (its priority-1 column shows with -o wide).
        kube_api.create("batchjobs", batchjob("wide"))
        header = kube_api.kubectl("get", "bj", "-o", "wide").stdout.splitlines()[0].split()
        assert header == ["NAME", "PHASE", "PROGRESS", "MODEL", "AGE", "ENDPOINT"]
    finally:
        kube_api.kubectl("delete", "crd", "widgets.example.com")
    assert kube_api.get("crd", "widgets.example.com") is None
    status, _ = kube_api.request(
        "GET", f"/apis/example.com/v1/namespaces/{kube_api.namespace}/widgets", check=False
    )
    assert status == 404


def test_pod_deleted_while_running_is_replaced(
    kube_api: KubeApi, kubelet: KubeletHarness, tmp_path: Path
) -> None:
    marker = tmp_path / "first-run"
    code = f"""
        import pathlib, time
        marker = pathlib.Path({str(marker)!r})
        if not marker.exists():
            marker.touch()
            time.sleep(60)
    """
    kube_api.create("jobs", python_job("evicted", code))
    first = kubelet.wait_for_pod_running("evicted", timeout=10)
    kube_api.kubectl("delete", "pod", first, "--wait=false")
    job = wait_condition(kube_api, "evicted", "Complete")
    assert job["status"]["failed"] == 1 and job["status"]["succeeded"] == 1
    assert kube_api.get("pods", first) is None  # terminated, counted, then really deleted
    assert {p.name: p.exit_code for p in kubelet.pods("evicted")}[first] == 128 + signal.SIGTERM


def test_restart_policy_on_failure_restarts_in_place(
    kube_api: KubeApi, kubelet: KubeletHarness, tmp_path: Path
) -> None:
    marker = tmp_path / "failed-once"
    code = f"""
        import pathlib
        marker = pathlib.Path({str(marker)!r})
        if not marker.exists():
            marker.touch()
            raise SystemExit(1)
    """
    job = python_job("again", code, backoffLimit=1, pod_spec={"restartPolicy": "OnFailure"})
    kube_api.create("jobs", job)
    wait_condition(kube_api, "again", "Complete")
    (pod,) = kubelet.pods("again")
    assert pod.restarts == 1 and pod.exit_code == 0


def test_suspend_resume_and_ttl(kube_api: KubeApi, kubelet: KubeletHarness) -> None:
    kube_api.create(
        "jobs", python_job("later", "print('ran')", suspend=True, ttlSecondsAfterFinished=0)
    )
    wait_condition(kube_api, "later", "Suspended")
    assert kubelet.pods("later") == []
    kube_api.patch("jobs", "later", {"spec": {"suspend": False}})
    kubelet.wait_for(lambda h: [p.exit_code for p in h.pods("later")] == [0], timeout=10)
    kube_api.wait_for("jobs", "later", lambda j: j is None, timeout=10)  # the TTL deleted it
