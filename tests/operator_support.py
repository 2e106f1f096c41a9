"""Setting up a namespace for the operator: shared by the e2e tests and benchmark B6."""

from __future__ import annotations

import json
import time
import urllib.request

from tests.fixtures.kube import KubeApi
from tests.fixtures.s3 import SeaweedServer

S3_SECRET_NAME = "openbatch-s3"  # noqa: S105  # the name of a Secret, not a secret
ROUTING_CONFIGMAP = "openbatch-routing"


def prepare_namespace(kube: KubeApi, seaweed: SeaweedServer, routes: dict[str, list[str]]) -> None:
    """The Secret with the runners' S3 credentials and the routing-table ConfigMap."""
    kube.create(
        "secrets",
        {
            "metadata": {"name": S3_SECRET_NAME},
            "stringData": {"accessKey": seaweed.access_key, "secretKey": seaweed.secret_key},
        },
    )
    kube.create(
        "configmaps",
        {
            "metadata": {"name": ROUTING_CONFIGMAP},
            "data": {"models.json": json.dumps({"models": routes})},
        },
    )


def operator_env(seaweed: SeaweedServer, bucket: str, **settings: str) -> dict[str, str]:
    """Environment of an operator process: its own S3 access plus OPENBATCH_OPERATOR_*."""
    return {
        **seaweed.env(),  # the operator reads progress records and writes cancel markers
        "OPENBATCH_OPERATOR_BUCKET": bucket,
        "OPENBATCH_OPERATOR_S3_ENDPOINT": seaweed.endpoint,
        **{f"OPENBATCH_OPERATOR_{k.upper()}": v for k, v in settings.items()},
    }


def wait_for_metric(port: int, line: str, timeout: float = 20.0) -> str:
    """Scrape the operator's metrics on 127.0.0.1:`port` until `line` appears; the page.

    The gauges follow the watch, so they show a status an event after a reader may have seen
    it in the API (CI once scraped "Validating" right after reading "Completed").
    """
    deadline = time.monotonic() + timeout
    while True:
        url = f"http://127.0.0.1:{port}/metrics"  # loopback, the operator's own port
        with urllib.request.urlopen(url, timeout=5) as resp:
            page: str = resp.read().decode()
        if line in page:
            return page
        assert time.monotonic() < deadline, f"{line!r} not in:\n{page}"
        time.sleep(0.2)
