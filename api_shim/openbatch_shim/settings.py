"""The shim's settings: environment variables `OPENBATCH_SHIM_*` (the Helm chart sets them),
or `openbatch serve`'s options, which build the same object."""

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import orjson
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from openbatch.settings import check_s3_endpoint

ANONYMOUS_TENANT = "default"
# What /v1/models lists when every model goes to one server (any_model_url).
ANY_MODEL_NAME = "openbatch-sim"
# OpenAI accepts only 24h (contract §2.1); self-hosted users may allow more.
OPENAI_COMPLETION_WINDOWS = ("24h",)


class BackendKind(StrEnum):
    LOCAL = "local"  # SQLite + runner subprocesses: `openbatch serve`
    KUBERNETES = "kubernetes"  # BatchJob CRs + the operator


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "openbatch"


class ShimSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENBATCH_SHIM_", extra="ignore")

    backend: BackendKind = Field(default=BackendKind.LOCAL, description="local or kubernetes")
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="port to listen on (0: any)")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="local backend: where the SQLite state and (without S3) the files live",
    )
    storage_root: str | None = Field(
        default=None,
        description="where files and batch work dirs live: s3://bucket/prefix or a directory; "
        "default: DATA_DIR/storage (local), s3://BUCKET/PREFIX (kubernetes)",
    )
    bucket: str = Field(default="openbatch", description="kubernetes backend: the bucket")
    prefix: str = Field(default="", description="kubernetes backend: key prefix in the bucket")
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="bearer key -> tenant (a namespace on Kubernetes); empty: one anonymous "
        "tenant, any key or none",
    )
    api_keys_file: Path | None = Field(
        default=None, description='JSON file {"<key>": "<tenant>"} (a mounted Secret)'
    )
    allowed_completion_windows: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(OPENAI_COMPLETION_WINDOWS),
        description="completion windows a batch may ask for (comma-separated in the env)",
    )
    models_file: Path | None = Field(
        default=None,
        description='routing table {"models": {"<model>": ["<base url>"]}}: what /v1/models '
        "lists and where the local backend's runners send requests",
    )
    any_model_url: str | None = Field(
        default=None,
        description="local backend without a routing table: send every model's requests to "
        "this base URL (what `openbatch serve` does with its built-in simulator)",
    )
    max_concurrent_batches: int = Field(default=4, ge=1, le=10_000)
    poll_interval: float = Field(default=0.5, gt=0, description="local backend: reconcile tick")
    sweep_interval: float = Field(
        default=60.0, gt=0, description="seconds between deletions of expired files"
    )
    namespace: str = Field(
        default="default",
        description="kubernetes backend: the namespace of the anonymous tenant",
    )
    download_redirect_seconds: int = Field(
        default=0,
        ge=0,
        le=7 * 24 * 3600,
        description="files on S3: answer a download with a 307 to a presigned URL valid this "
        "many seconds, so the bytes flow from the store, not through the shim; 0: relay them",
    )
    download_redirect_endpoint: str | None = Field(
        default=None,
        description="scheme://host[:port] where clients reach the S3 store, when it differs "
        "from OPENBATCH_S3_ENDPOINT (presigned URLs name this host)",
    )
    runner_max_in_flight: int | None = Field(
        default=None, ge=1, le=4096, description="maxInFlight given to new batches"
    )

    @field_validator("download_redirect_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_s3_endpoint(value)

    @field_validator("allowed_completion_windows", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [w.strip() for w in value.split(",") if w.strip()]
        return value

    def resolved_api_keys(self) -> dict[str, str]:
        keys = dict(self.api_keys)
        if self.api_keys_file is not None:
            loaded = orjson.loads(self.api_keys_file.read_bytes())
            if not isinstance(loaded, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
            ):
                raise ValueError(f"{self.api_keys_file}: expected a JSON object of strings")
            keys.update(loaded)
        return keys

    def resolved_storage_root(self) -> str:
        if self.storage_root:
            return self.storage_root
        if self.backend is BackendKind.KUBERNETES:
            root = f"s3://{self.bucket}"
            return f"{root}/{self.prefix.strip('/')}" if self.prefix.strip("/") else root
        return str(self.data_dir / "storage")
