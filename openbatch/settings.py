"""Settings read from the environment.

The variable names are a user-facing contract (Helm values, runner pods, the CLI): rename
nothing without a migration note.
"""

from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def check_s3_endpoint(value: str) -> str:
    """`scheme://host[:port]` of an S3 store, without its trailing slash; ValueError else."""
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"S3 endpoint {value!r} must look like http://host:port or https://host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"S3 endpoint {value!r} must not contain a path or query")
    if parts.username or parts.password:
        raise ValueError(
            f"S3 endpoint {value!r} must not embed credentials; "
            "use OPENBATCH_S3_ACCESS_KEY / OPENBATCH_S3_SECRET_KEY"
        )
    return value.rstrip("/")


class S3Settings(BaseSettings):
    """How to reach the S3-compatible object store.

    Every field is read from `OPENBATCH_S3_<FIELD>` (case-insensitive). The credentials fall
    back to the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` when the OpenBatch
    variables are unset, so an existing AWS-style secret can be mounted unchanged.
    """

    model_config = SettingsConfigDict(
        env_prefix="OPENBATCH_S3_",
        # Fields with an alias must still be settable by name in code and tests.
        validate_by_name=True,
        validate_by_alias=True,
        extra="ignore",
    )

    endpoint: str = Field(
        default="http://127.0.0.1:9000",
        description=(
            "S3 endpoint URL, `scheme://host[:port]` without a path. The scheme decides TLS: "
            "`https` verifies the server certificate (CA bundle from `SSL_CERT_FILE`, else "
            "certifi), `http` is plain text. Env: OPENBATCH_S3_ENDPOINT."
        ),
    )
    access_key: str = Field(
        validation_alias=AliasChoices("OPENBATCH_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
        description=(
            "Access key ID. Env: OPENBATCH_S3_ACCESS_KEY, else AWS_ACCESS_KEY_ID. Required."
        ),
    )
    secret_key: str = Field(
        validation_alias=AliasChoices("OPENBATCH_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
        # Keep the secret out of reprs, logs and tracebacks.
        repr=False,
        description=(
            "Secret access key. Env: OPENBATCH_S3_SECRET_KEY, else AWS_SECRET_ACCESS_KEY. Required."
        ),
    )
    region: str | None = Field(
        default=None,
        description=(
            "Region used to sign requests. Unset: asked from the server per bucket "
            "(GetBucketLocation), which needs that permission. Env: OPENBATCH_S3_REGION."
        ),
    )
    retry_seconds: float = Field(
        default=60.0,
        ge=0,
        description=(
            "How long one storage operation keeps retrying transient failures (connection "
            "refused or reset, timeouts, HTTP 5xx, SlowDown) with exponential backoff before "
            "it fails. It also bounds how long a streaming read waits for the store to come "
            "back after a broken connection. 0 disables retries. "
            "Env: OPENBATCH_S3_RETRY_SECONDS."
        ),
    )
    connect_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds to wait for a TCP/TLS connection. Env: OPENBATCH_S3_CONNECT_TIMEOUT.",
    )
    read_timeout: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Seconds a single socket read or write may stall before the attempt counts as a "
            "transient failure. Env: OPENBATCH_S3_READ_TIMEOUT."
        ),
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        return check_s3_endpoint(value)

    @property
    def secure(self) -> bool:
        """True when the endpoint uses TLS."""
        return urlsplit(self.endpoint).scheme == "https"

    @property
    def netloc(self) -> str:
        """`host[:port]` of the endpoint, as the minio client wants it."""
        return urlsplit(self.endpoint).netloc
