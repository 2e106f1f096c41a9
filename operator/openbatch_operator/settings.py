"""Operator settings (environment variables `OPENBATCH_OPERATOR_*`, set by the Helm chart)."""

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from openbatch.layout import root_join
from openbatch.routing import RoutingTable, parse_routing_table
from openbatch.runner_args import DEFAULT_GRACE_PERIOD
from openbatch.tenancy import DefaultStorage, TenancyConfig, parse_tenancy


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENBATCH_OPERATOR_", extra="ignore")

    runner_image: str = Field(
        default="ghcr.io/openbatch/openbatch-runner:0.1.0",
        description="image of runner and finalize pods (its entrypoint is `openbatch`)",
    )
    runner_image_pull_policy: str = Field(default="IfNotPresent")
    bucket: str = Field(
        default="openbatch",
        description="bucket for uploaded files, work dirs and results (DESIGN §4)",
    )
    prefix: str = Field(
        default="",
        description="key prefix inside the bucket under which OpenBatch keeps its objects",
    )
    s3_endpoint: str = Field(
        default="http://minio:9000", description="S3 endpoint the runner pods use"
    )
    s3_secret_name: str = Field(
        default="openbatch-s3", description="Secret holding the runner's S3 credentials"
    )
    s3_access_key_key: str = Field(default="accessKey", description="key of the access key")
    s3_secret_key_key: str = Field(default="secretKey", description="key of the secret key")
    routing_configmap: str | None = Field(
        default="openbatch-routing",
        description="ConfigMap with `models.json` (model -> base URLs), mounted into runners",
    )
    routing_key: str = Field(default="models.json")
    routing_file: Path | None = Field(
        default=None,
        description="the same routing table, mounted into the operator: it reads the entries' "
        "apiKeySecret references to give each runner the keys of routed URLs only",
    )
    model_server_api_key_secret: str | None = Field(
        default=None,
        description="Secret (key `apiKey`, in each tenant namespace) sent to routing-table "
        "entries without an apiKeySecret of their own; never to a spec's modelServer",
    )
    tenants_file: Path | None = Field(
        default=None,
        description="the tenants file (JSON, openbatch.tenancy); unset: single-tenant mode",
    )
    allow_unlisted_namespaces: bool = Field(
        default=False,
        description="with a tenants file, let namespaces not in it use BUCKET/PREFIX and "
        "S3_SECRET_NAME (shared storage: no isolation between them)",
    )
    allowed_model_server_urls: str = Field(
        default="",
        description="comma-separated host patterns a spec.modelServer.url may use, under the "
        "tenants file's defaults (default none: routing table and serviceRef only)",
    )
    max_concurrent_batches: int = Field(default=8, ge=1, le=10_000)
    runner_backoff_limit: int = Field(
        default=3, ge=0, le=100, description="Job retries for infrastructure failures"
    )
    runner_ttl_seconds: int = Field(default=3600, ge=0, description="Job TTL after finishing")
    runner_grace_seconds: float = Field(
        default=DEFAULT_GRACE_PERIOD,
        ge=0,
        le=3600,
        description="in-flight grace after cancel/expiry",
    )
    deadline_backstop_seconds: int = Field(
        default=300,
        ge=0,
        description="activeDeadlineSeconds = time to the batch deadline + this backstop",
    )
    runner_start_grace_seconds: float = Field(
        default=180.0,
        ge=0,
        le=86_400,
        description="how long a runner pod may fail to start (missing Secret or ConfigMap, "
        "image pull failure, unschedulable) before its batch fails (CannotStart)",
    )
    runner_cpu_request: str = "500m"
    runner_cpu_limit: str = "2"
    runner_memory_request: str = "256Mi"
    runner_memory_limit: str = "1Gi"
    commit_interval_seconds: float = Field(default=2.0, gt=0)
    poll_interval_seconds: float = Field(
        default=2.0, gt=0, description="how often a non-terminal batch is reconciled"
    )
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 disables metrics")
    cluster_domain: str = Field(default="cluster.local")

    @property
    def storage_root(self) -> str:
        """`s3://<bucket>[/<prefix>]`: the root every batch's locations are computed under."""
        return root_join(f"s3://{self.bucket}", self.prefix)

    @property
    def allowed_url_patterns(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.allowed_model_server_urls.split(",") if p.strip())

    @property
    def default_storage(self) -> DefaultStorage:
        return DefaultStorage(self.bucket, self.prefix, self.s3_secret_name)

    def load_tenancy(self) -> TenancyConfig | None:
        """The tenants file, or None in single-tenant mode. Raises ValueError/OSError."""
        if self.tenants_file is None:
            return None
        return parse_tenancy(self.tenants_file.read_bytes())

    def load_routing(self) -> RoutingTable | None:
        if self.routing_file is None:
            return None
        return parse_routing_table(self.routing_file.read_bytes())

    def summary(self) -> dict[str, Any]:
        """Every setting, for the start-up log: names of Secrets, never their values (the
        operator holds none in its settings; its own S3 keys are OPENBATCH_S3_*)."""
        return self.model_dump(mode="json")
