"""Operator settings (environment variables `OPENBATCH_OPERATOR_*`, set by the Helm chart)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from openbatch.layout import root_join
from openbatch.runner_args import DEFAULT_GRACE_PERIOD


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
    model_server_api_key_secret: str | None = Field(
        default=None, description="optional Secret (key `apiKey`) sent to model servers"
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
