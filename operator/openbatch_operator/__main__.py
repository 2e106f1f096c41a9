"""`python -m openbatch_operator`: run the operator (kopf) with OpenBatch's handlers.

Configuration is the environment only (the Helm chart sets it): `OPENBATCH_OPERATOR_*`
(settings.py, docs/operator.md) and `OPENBATCH_S3_*` for the operator's own storage access.
Before kopf starts, the settings, the tenants file and the routing file are parsed and the
Kubernetes API is called once and the BatchJob resource must be discoverable, so a
misconfigured or unreachable operator exits with one clear line instead of retrying
forever; object storage and the configured buckets are checked too, with a warning per
problem (storage may come up later). One replica: peering is off (`standalone`), so the
Deployment uses the Recreate strategy.
"""

import argparse
import asyncio
import logging
import os
import sys
import threading
from collections.abc import Sequence

EXIT_CONFIG = 2  # settings or files are invalid: a restart cannot help
EXIT_NO_CLUSTER = 1  # the API server is unreachable or refused us: a restart may help
STORAGE_CHECK_SECONDS = 10.0  # the start-up storage check never holds the operator longer

_DESCRIPTION = """\
The OpenBatch operator: turns BatchJob resources into isolated runner Jobs, mirrors their
progress into the BatchJob status, enforces cancel, expiry and the tenancy policy.

It takes no options: everything comes from the environment (see docs/operator.md).
  OPENBATCH_OPERATOR_NAMESPACES       comma-separated namespaces to watch (empty: cluster-wide)
  OPENBATCH_OPERATOR_LIVENESS         liveness endpoint (default http://0.0.0.0:8080/healthz)
  OPENBATCH_OPERATOR_TENANTS_FILE     tenants file (JSON); unset: single-tenant mode
  OPENBATCH_OPERATOR_ROUTING_FILE     the routing table, for its per-entry key references
  OPENBATCH_OPERATOR_RUNNER_IMAGE, _BUCKET, _PREFIX, _S3_ENDPOINT, _S3_SECRET_NAME,
  _MAX_CONCURRENT_BATCHES, _POLL_INTERVAL_SECONDS, _METRICS_PORT, ...  (settings.py)
  OPENBATCH_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY   the operator's own object-storage access
Cluster access: in-cluster service account, else $KUBECONFIG / ~/.kube/config.
"""


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m openbatch_operator",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _fail(code: int, message: str) -> int:
    sys.stderr.write(f"openbatch-operator: {message}\n")
    return code


def _check_configuration() -> str | None:
    """Parse every setting and file the handlers will use; the first problem, or None."""
    from pydantic import ValidationError

    from openbatch_operator.settings import OperatorSettings

    try:
        settings = OperatorSettings()
        settings.load_tenancy()
        settings.load_routing()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        return f"invalid configuration ({where}): {first.get('msg')}"
    except (OSError, ValueError) as exc:
        return f"invalid configuration: {exc}"
    return None


def _check_cluster() -> str | None:
    """Load credentials and call the API once (discovery), with a short timeout."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    try:
        try:
            k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
    except (k8s_config.ConfigException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"no Kubernetes credentials (not in a cluster, and no usable kubeconfig): {first}"
    try:
        with k8s.ApiClient() as api:
            k8s.CoreApi(api).get_api_versions(_request_timeout=10)
    except Exception as exc:  # any failure here means "cannot reach"
        text = str(exc).strip().splitlines()
        return f"cannot reach the Kubernetes API: {text[0] if text else type(exc).__name__}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_crd() -> str | None:
    """The BatchJob resource must be discoverable, or kopf silently watches nothing."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    from openbatch.resource import CRD_NAME, GROUP, PLURAL, VERSION

    install = f"install the CRD {CRD_NAME} (crds/, or the Helm chart)"
    try:
        with k8s.ApiClient() as api:
            found = k8s.CustomObjectsApi(api).get_api_resources(GROUP, VERSION, _request_timeout=10)
    except ApiException as exc:
        if exc.status == 404:
            return f"the API server does not serve {GROUP}/{VERSION}: {install}"
        return f"cannot discover {GROUP}/{VERSION}: {_first_line(exc)}"
    except Exception as exc:  # any failure here means "cannot reach"
        return f"cannot discover {GROUP}/{VERSION}: {_first_line(exc)}"
    if PLURAL not in {r.name for r in found.resources or []}:
        return f"{GROUP}/{VERSION} does not list {PLURAL}: {install}"
    return None


def _storage_problems() -> list[str]:
    """Warnings about object storage: the operator's own settings, reachability, and each
    configured bucket (the default root's, every tenant's). Nothing here is fatal: storage
    may come up after the operator, which only waits on it."""
    from pydantic import ValidationError

    from openbatch.settings import S3Settings
    from openbatch.storage import StorageError, open_uri
    from openbatch_operator.settings import OperatorSettings

    settings = OperatorSettings()
    tenancy = settings.load_tenancy()
    buckets: dict[str, str] = {}
    if tenancy is None or settings.allow_unlisted_namespaces:
        buckets[settings.bucket] = "the default root"
    for tenant in tenancy.tenants if tenancy is not None else ():
        buckets.setdefault(tenant.storage.bucket, f"tenant {tenant.namespace}")
    try:
        s3 = S3Settings(retry_seconds=0)
    except ValidationError as exc:
        return [
            "no usable object-storage settings for the operator (OPENBATCH_S3_*: "
            f"{_first_line(exc)}): it cannot read progress until they are set"
        ]
    problems: list[str] = []
    for bucket, user in sorted(buckets.items()):
        try:
            store, key = open_uri(f"s3://{bucket}/openbatch-start-up-check", s3)
            store.check_writable(key)  # HEAD bucket; writes nothing
        except StorageError as exc:
            if exc.transient:
                problems.append(
                    f"cannot reach object storage at {s3.endpoint} ({_first_line(exc)}); "
                    "batches wait until it answers"
                )
                break  # the same for every bucket
            problems.append(
                f"bucket {bucket!r} ({user}): {_first_line(exc)}; its batches fail until it exists"
            )
    return problems


def _warn_about_storage() -> None:
    """Run the storage check with a time bound and print one line per problem."""
    found: list[str] = []
    worker = threading.Thread(target=lambda: found.extend(_storage_problems()), daemon=True)
    worker.start()
    worker.join(STORAGE_CHECK_SECONDS)
    if worker.is_alive():
        found = [f"object storage did not answer within {STORAGE_CHECK_SECONDS:g}s"]
    for problem in found:
        sys.stderr.write(f"openbatch-operator: warning: {problem}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    problem = _check_configuration()
    if problem is not None:
        return _fail(EXIT_CONFIG, problem)
    problem = _check_cluster() or _check_crd()
    if problem is not None:
        return _fail(EXIT_NO_CLUSTER, problem)
    _warn_about_storage()

    import kopf

    from openbatch_operator import handlers  # noqa: F401  # registers the handlers

    kopf.configure(verbose=False)  # INFO: our start-up configuration and phase changes
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # kopf's per-handler chatter
    namespaces = [
        ns.strip() for ns in os.environ.get("OPENBATCH_OPERATOR_NAMESPACES", "").split(",")
    ]
    namespaces = [ns for ns in namespaces if ns]
    liveness = os.environ.get("OPENBATCH_OPERATOR_LIVENESS", "http://0.0.0.0:8080/healthz")
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness or None,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
