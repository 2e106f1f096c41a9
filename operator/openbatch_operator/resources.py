"""Pure builders of the child objects of a BatchJob: the runner Job and the finalize Job.

Deterministic names (`<batch>-runner`, `<batch>-finalize`) make creation idempotent: after
an operator restart the same name is created again and the API answers 409, never a second
Job. Pods run with the restricted Pod Security profile and no service-account token: the
runner parses untrusted input and talks only to object storage and model servers.
"""

from datetime import datetime
from typing import Any

from openbatch.launch import ModelTarget, finalize_args_for, runner_args_for
from openbatch.lifecycle import finalize_job_name, runner_job_name
from openbatch.locations import BatchLocations
from openbatch.resource import API_VERSION, KIND, BatchJob
from openbatch.runner_args import FINAL_EXIT_CODES
from openbatch_operator.settings import OperatorSettings

ROUTING_MOUNT = "/etc/openbatch/routing"
LABEL_BATCHJOB = "openbatch.dev/batchjob"
LABEL_ROLE = "openbatch.dev/role"


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
        "app.kubernetes.io/managed-by": "openbatch-operator",
        "app.kubernetes.io/component": role,
        LABEL_BATCHJOB: job.metadata.name,
        LABEL_ROLE: role,
    }


def _env(settings: OperatorSettings) -> list[dict[str, Any]]:
    def secret(name: str, key: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": name, "key": key}}

    env: list[dict[str, Any]] = [
        {"name": "OPENBATCH_S3_ENDPOINT", "value": settings.s3_endpoint},
        {
            "name": "OPENBATCH_S3_ACCESS_KEY",
            "valueFrom": secret(settings.s3_secret_name, settings.s3_access_key_key),
        },
        {
            "name": "OPENBATCH_S3_SECRET_KEY",
            "valueFrom": secret(settings.s3_secret_name, settings.s3_secret_key_key),
        },
    ]
    if settings.model_server_api_key_secret:
        env.append(
            {
                "name": "OPENBATCH_API_KEY",
                "valueFrom": secret(settings.model_server_api_key_secret, "apiKey"),
            }
        )
    return env


def _pod_template(
    job: BatchJob,
    settings: OperatorSettings,
    role: str,
    args: list[str],
    routing: bool,
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
                    "env": _env(settings),
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
    job: BatchJob, where: BatchLocations, settings: OperatorSettings, deadline: datetime
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
    ).to_argv()


def build_runner_job(
    job: BatchJob,
    where: BatchLocations,
    settings: OperatorSettings,
    deadline: datetime,
    now: datetime,
) -> dict[str, Any]:
    """The runner Job: one pod, or an Indexed Job with one shard per index."""
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
            job, settings, "runner", runner_args(job, where, settings, deadline), routed
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
    job: BatchJob, where: BatchLocations, settings: OperatorSettings
) -> dict[str, Any]:
    """The short Job that joins the parts of every shard (DESIGN §2.5)."""
    args = finalize_args_for(job, where).to_argv()
    template = _pod_template(job, settings, "finalize", args, routing=False)
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
