"""Pure builders of the child objects of a BatchJob: the runner Job and the finalize Job.

Deterministic names (`<batch>-runner`, `<batch>-finalize`) make creation idempotent: after
an operator restart the same name is created again and the API answers 409, never a second
Job. Pods run with the restricted Pod Security profile and no service-account token: the
runner parses untrusted input and talks only to object storage and model servers.
"""

from datetime import datetime
from typing import Any

from openbatch.launch import ModelTarget, finalize_args_for, runner_args_for
from openbatch.lifecycle import bounded_label, finalize_job_name, runner_job_name
from openbatch.locations import BatchLocations
from openbatch.resource import API_VERSION, KIND, BatchJob
from openbatch.routing import RoutingTable
from openbatch.runner_args import FINAL_EXIT_CODES, api_key_env
from openbatch.secret_ref import SecretKeyRef
from openbatch.tenancy import (
    CREDENTIALS_ACCESS_KEY,
    CREDENTIALS_SECRET_KEY,
    ResolvedTenant,
    effective_max_in_flight,
)
from openbatch_operator.settings import OperatorSettings

PLATFORM_KEY_KEY = "apiKey"  # key of OPENBATCH_OPERATOR_MODEL_SERVER_API_KEY_SECRET

ROUTING_MOUNT = "/etc/openbatch/routing"
LABEL_BATCHJOB = "openbatch.dev/batchjob"
LABEL_ROLE = "openbatch.dev/role"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "openbatch-operator"  # the operator watches the pods with this label


def model_server_url(job: BatchJob, settings: OperatorSettings) -> str | None:
    """The base URL `spec.modelServer` asks for, or None to route by the table."""
    server = job.spec.model_server
    if server is None:
        return None
    if server.url is not None:
        return server.url
    ref = server.service_ref
    assert ref is not None  # the model guarantees exactly one
    namespace = job.metadata.namespace or "default"
    host = f"{ref.name}.{namespace}.svc.{settings.cluster_domain}"
    return f"http://{host}:{ref.port}{ref.path}"


def owner_reference(job: BatchJob) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _labels(job: BatchJob, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "openbatch-runner",
        LABEL_MANAGED_BY: MANAGED_BY,
        "app.kubernetes.io/component": role,
        # Names may be up to 253 characters, label values only 63: longer ones are hashed.
        LABEL_BATCHJOB: bounded_label(job.metadata.name),
        LABEL_ROLE: role,
    }


def _secret(ref: SecretKeyRef, *, optional: bool = False) -> dict[str, Any]:
    selector: dict[str, Any] = {"name": ref.name, "key": ref.key}
    if optional:
        selector["optional"] = True
    return {"secretKeyRef": selector}


def storage_env(settings: OperatorSettings, tenant: ResolvedTenant) -> list[dict[str, Any]]:
    """S3 access of a runner: its namespace's own credentials Secret, nothing else."""
    secret = tenant.credentials_secret
    return [
        {"name": "OPENBATCH_S3_ENDPOINT", "value": settings.s3_endpoint},
        {
            "name": "OPENBATCH_S3_ACCESS_KEY",
            "valueFrom": _secret(SecretKeyRef(name=secret, key=CREDENTIALS_ACCESS_KEY)),
        },
        {
            "name": "OPENBATCH_S3_SECRET_KEY",
            "valueFrom": _secret(SecretKeyRef(name=secret, key=CREDENTIALS_SECRET_KEY)),
        },
    ]


def model_key_env(
    job: BatchJob, settings: OperatorSettings, routing: RoutingTable | None
) -> list[dict[str, Any]]:
    """One variable per base URL that has a key (`api_key_env`), from that URL's own Secret.

    A spec's modelServer gets only the spec's `apiKeySecretRef` (a Secret in the batch's
    namespace), never a routing key. A routed batch gets its routing entries' keys, each
    next to its entry's URLs only; they are `optional` because the batch's model (and so
    which entry it uses) is known only after validation, and a namespace need not hold the
    Secret of an entry it never uses.
    """
    url = model_server_url(job, settings)
    server = job.spec.model_server
    if url is not None:
        ref = server.api_key_secret_ref if server is not None else None
        return [] if ref is None else [{"name": api_key_env(url), "valueFrom": _secret(ref)}]
    if routing is None:
        return []
    platform = settings.model_server_api_key_secret
    refs: dict[str, SecretKeyRef] = {}
    for entry in routing.models.values():
        ref = entry.api_key_secret
        if ref is None and platform:
            ref = SecretKeyRef(name=platform, key=PLATFORM_KEY_KEY)
        if ref is not None:
            refs.update(dict.fromkeys(entry.urls, ref))
    return [
        {"name": api_key_env(u), "valueFrom": _secret(r, optional=True)}
        for u, r in sorted(refs.items())
    ]


def _pod_template(  # noqa: PLR0917
    job: BatchJob,
    settings: OperatorSettings,
    role: str,
    args: list[str],
    routing: bool,
    env: list[dict[str, Any]],
) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    # The root filesystem is read-only; /tmp is the pod's one writable place.
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    if routing and settings.routing_configmap:
        volumes.append({"name": "routing", "configMap": {"name": settings.routing_configmap}})
        mounts.append({"name": "routing", "mountPath": ROUTING_MOUNT, "readOnly": True})
    return {
        "metadata": {"labels": _labels(job, role)},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumes": volumes,
            "containers": [
                {
                    "name": role,
                    "image": settings.runner_image,
                    "imagePullPolicy": settings.runner_image_pull_policy,
                    "args": args,
                    "env": env,
                    "volumeMounts": mounts,
                    "resources": {
                        "requests": {
                            "cpu": settings.runner_cpu_request,
                            "memory": settings.runner_memory_request,
                        },
                        "limits": {
                            "cpu": settings.runner_cpu_limit,
                            "memory": settings.runner_memory_limit,
                        },
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "runAsNonRoot": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def runner_args(
    job: BatchJob,
    where: BatchLocations,
    settings: OperatorSettings,
    deadline: datetime,
    max_in_flight: int | None = None,
) -> list[str]:
    url = model_server_url(job, settings)
    target = (
        ModelTarget(base_urls=(url,))
        if url is not None
        else ModelTarget(routing_file=f"{ROUTING_MOUNT}/{settings.routing_key}")
    )
    return runner_args_for(
        job,
        where,
        target,
        deadline=deadline,
        shard_from_job_index=True,
        grace_period=settings.runner_grace_seconds,
        commit_interval=settings.commit_interval_seconds,
        max_in_flight=max_in_flight,
    ).to_argv()


def build_runner_job(  # noqa: PLR0917
    job: BatchJob,
    where: BatchLocations,
    settings: OperatorSettings,
    deadline: datetime,
    now: datetime,
    tenant: ResolvedTenant,
    routing: RoutingTable | None = None,
) -> dict[str, Any]:
    """The runner Job: one pod, or an Indexed Job with one shard per index.

    Its pods hold only their namespace's storage credential and the model-server keys of
    the URLs they may send to (docs/security.md)."""
    shards = job.spec.parallelism
    routed = model_server_url(job, settings) is None
    spec: dict[str, Any] = {
        "backoffLimit": settings.runner_backoff_limit,
        "completions": shards,
        "parallelism": shards,
        # A replacement pod starts only after the old one is gone: two runners of one shard
        # never overlap (the runner copes if they do, but it wastes model-server time).
        "podReplacementPolicy": "Failed",
        "activeDeadlineSeconds": max(
            1, int((deadline - now).total_seconds()) + settings.deadline_backstop_seconds
        ),
        "ttlSecondsAfterFinished": settings.runner_ttl_seconds,
        "podFailurePolicy": {
            "rules": [
                {
                    # Invalid input or a bad command: retrying cannot help.
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "runner",
                        "operator": "In",
                        "values": [int(code) for code in FINAL_EXIT_CODES],
                    },
                }
            ]
        },
        "template": _pod_template(
            job,
            settings,
            "runner",
            runner_args(job, where, settings, deadline, effective_max_in_flight(job, tenant.caps)),
            routed,
            storage_env(settings, tenant) + model_key_env(job, settings, routing),
        ),
    }
    if shards > 1:
        spec["completionMode"] = "Indexed"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": runner_job_name(job),
            "namespace": job.metadata.namespace,
            "labels": _labels(job, "runner"),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }


def build_finalize_job(
    job: BatchJob, where: BatchLocations, settings: OperatorSettings, tenant: ResolvedTenant
) -> dict[str, Any]:
    """The short Job that joins the parts of every shard (DESIGN §2.5); storage only."""
    args = finalize_args_for(job, where).to_argv()
    env = storage_env(settings, tenant)
    template = _pod_template(job, settings, "finalize", args, routing=False, env=env)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": finalize_job_name(job),
            "namespace": job.metadata.namespace,
            "labels": _labels(job, "finalize"),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "backoffLimit": settings.runner_backoff_limit,
            "completions": 1,
            "parallelism": 1,
            "podReplacementPolicy": "Failed",
            "ttlSecondsAfterFinished": settings.runner_ttl_seconds,
            "activeDeadlineSeconds": 3600,
            "template": template,
        },
    }
