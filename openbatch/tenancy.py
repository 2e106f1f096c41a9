"""Tenancy configuration (DESIGN §12, docs/security.md): one model for the operator, the shim
and the Helm chart.

A tenant is a namespace. The platform team writes one JSON document (a ConfigMap, mounted
into the operator; `OPENBATCH_OPERATOR_TENANTS_FILE` names the file):

```
{"tenants": [
   {"namespace": "team-a",
    "storage": {"bucket": "team-a", "prefix": "openbatch", "credentialsSecret": "openbatch-s3"},
    "caps": {"maxInFlight": 256, "maxParallelism": 4, "maxPriority": 10},
    "allowedModelServerURLs": ["*.team-a.svc.cluster.local"]}],
 "defaults": {"caps": {...}, "allowedModelServerURLs": [...]}}
```
- `storage`: the tenant's root `s3://<bucket>/<prefix>` (its files, work dirs and results all
  live below it; inputs a BatchJob names must too) and the Secret *in the tenant's namespace*
  (keys `accessKey`, `secretKey`) holding a credential the platform scoped to that root.
- `caps` (each optional): `maxInFlight` is clamped (a ceiling: the spec's default of 64 must
  work in every namespace); a BatchJob asking for more `parallelism` or `priority` than its
  cap fails before a runner starts (explicit asks; parallelism also fixes the shard layout,
  which a clamp would silently change if the caps changed while it ran);
  `maxRunningBatches` bounds the admission slots one namespace holds.
- `allowedModelServerURLs`: host patterns a direct `spec.modelServer.url` may use (default
  none). A tenant's field, when given, replaces the default's; caps merge field by field.

Pure and framework-free: parsing, resolving a namespace, and `preflight` (the checks that
must pass before a batch's runner may start) are all plain functions over models.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from openbatch.layout import root_join
from openbatch.resource import DNS_LABEL_PATTERN, S3_BUCKET_PATTERN, BatchJob, _camel
from openbatch.secret_ref import SECRET_NAME_PATTERN
from openbatch.url_policy import check_direct_url

CREDENTIALS_ACCESS_KEY = "accessKey"  # keys of a tenant's credentials Secret
CREDENTIALS_SECRET_KEY = "secretKey"  # noqa: S105  # the name of a key, not a secret
# An S3 key prefix: no leading slash, no empty, `.` or `..` segment.
PREFIX_PATTERN = r"^([A-Za-z0-9!_.*'()-]+/)*[A-Za-z0-9!_.*'()-]*$"


class _Model(BaseModel):
    """camelCase in the file (as the Helm values), strict: a typo must fail at start-up."""

    model_config = ConfigDict(
        alias_generator=_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
    )


class TenantStorage(_Model):
    bucket: str = Field(min_length=3, max_length=63, pattern=S3_BUCKET_PATTERN)
    prefix: str = Field(default="", max_length=512, pattern=PREFIX_PATTERN)
    credentials_secret: str = Field(min_length=1, max_length=253, pattern=SECRET_NAME_PATTERN)

    @model_validator(mode="after")
    def _no_dot_segments(self) -> Self:
        if any(part in (".", "..") for part in self.prefix.split("/")):
            raise ValueError(f"storage prefix {self.prefix!r} has a '.' or '..' segment")
        return self

    @property
    def root(self) -> str:
        return root_join(f"s3://{self.bucket}", self.prefix)


class Caps(_Model):
    max_in_flight: int | None = Field(default=None, ge=1, le=4096)
    max_parallelism: int | None = Field(default=None, ge=1, le=64)
    max_priority: int | None = Field(default=None, ge=-1000, le=1000)
    max_running_batches: int | None = Field(default=None, ge=1, le=10_000)

    def over(self, base: "Caps") -> "Caps":
        """These caps, with `base`'s where these leave one unset."""
        merged = {}
        for name in Caps.model_fields:
            mine = getattr(self, name)
            merged[name] = mine if mine is not None else getattr(base, name)
        return Caps(**merged)


class Policy(_Model):
    caps: Caps = Field(default_factory=Caps)
    allowed_model_server_urls: list[str] | None = Field(
        default=None, max_length=256, alias="allowedModelServerURLs"
    )


class Tenant(Policy):
    namespace: str = Field(max_length=63, pattern=DNS_LABEL_PATTERN)
    storage: TenantStorage


class TenancyConfig(_Model):
    tenants: list[Tenant] = Field(default_factory=list)
    defaults: Policy = Field(default_factory=Policy)

    @model_validator(mode="after")
    def _unique_namespaces(self) -> Self:
        seen: set[str] = set()
        for tenant in self.tenants:
            if tenant.namespace in seen:
                raise ValueError(f"namespace {tenant.namespace!r} is listed twice")
            seen.add(tenant.namespace)
        return self

    def tenant(self, namespace: str) -> Tenant | None:
        return next((t for t in self.tenants if t.namespace == namespace), None)


def parse_tenancy(data: bytes) -> TenancyConfig:
    """The tenants file; raises ValueError (pydantic's, with the field named) when invalid."""
    return TenancyConfig.model_validate(orjson.loads(data))


@dataclass(frozen=True)
class ResolvedTenant:
    """What one namespace gets: its storage root and credential, caps and allowed hosts."""

    namespace: str
    root: str  # s3://bucket[/prefix]
    bucket: str
    prefix: str
    credentials_secret: str
    caps: Caps
    allowed_model_server_urls: tuple[str, ...]
    listed: bool  # False: an unlisted namespace on the operator's default root


@dataclass(frozen=True)
class DefaultStorage:
    """The backend's own root, for namespaces not in the file when that is enabled (and for
    every namespace when there is no tenants file at all: single-tenant mode)."""

    bucket: str
    prefix: str
    credentials_secret: str

    @property
    def root(self) -> str:
        return root_join(f"s3://{self.bucket}", self.prefix)


class UnknownTenant(Exception):
    """The namespace is not a configured tenant, and unlisted namespaces are refused."""


def resolve_tenant(
    config: TenancyConfig,
    namespace: str,
    *,
    default_storage: DefaultStorage | None,
    default_allowed_urls: Sequence[str] = (),
) -> ResolvedTenant:
    """The namespace's tenancy: its own entry, or the default root when `default_storage` is
    given (unlisted namespaces allowed). `default_allowed_urls` is the backend's setting
    under the file's `defaults`. Raises UnknownTenant otherwise."""
    base_urls = (
        config.defaults.allowed_model_server_urls
        if config.defaults.allowed_model_server_urls is not None
        else list(default_allowed_urls)
    )
    tenant = config.tenant(namespace)
    if tenant is None:
        if default_storage is None:
            raise UnknownTenant(
                f"namespace {namespace!r} is not an OpenBatch tenant: the platform has not "
                "configured storage for it"
            )
        return ResolvedTenant(
            namespace=namespace,
            root=default_storage.root,
            bucket=default_storage.bucket,
            prefix=default_storage.prefix.strip("/"),
            credentials_secret=default_storage.credentials_secret,
            caps=config.defaults.caps,
            allowed_model_server_urls=tuple(base_urls),
            listed=False,
        )
    urls = (
        tenant.allowed_model_server_urls
        if tenant.allowed_model_server_urls is not None
        else base_urls
    )
    return ResolvedTenant(
        namespace=namespace,
        root=tenant.storage.root,
        bucket=tenant.storage.bucket,
        prefix=tenant.storage.prefix.strip("/"),
        credentials_secret=tenant.storage.credentials_secret,
        caps=tenant.caps.over(config.defaults.caps),
        allowed_model_server_urls=tuple(urls),
        listed=True,
    )


def tenancy_for(
    config: TenancyConfig | None,
    namespace: str,
    *,
    default_storage: DefaultStorage,
    allow_unlisted: bool = False,
    default_allowed_urls: Sequence[str] = (),
) -> tuple[ResolvedTenant, str | None]:
    """A backend's one call: the namespace's tenancy, and why it is refused, or None.

    `config` None is single-tenant mode (no tenants file: every namespace on the default
    root). An unlisted namespace is refused unless `allow_unlisted`; it still gets the
    default root, only to name its locations: its batch fails before anything is read."""
    allow = config is None or allow_unlisted
    config = config or TenancyConfig()
    try:
        tenant = resolve_tenant(
            config,
            namespace,
            default_storage=default_storage if allow else None,
            default_allowed_urls=default_allowed_urls,
        )
    except UnknownTenant as exc:
        fallback = resolve_tenant(config, namespace, default_storage=default_storage)
        return fallback, str(exc)
    return tenant, None


def input_refusal(job: BatchJob, tenant: ResolvedTenant) -> str | None:
    """Why `spec.input.s3` lies outside the tenant's root, or None (fileIDs are always
    inside: their location is computed under the root)."""
    source = job.spec.input.s3
    if source is None:
        return None
    where = f"s3://{source.bucket}/{source.key}"
    segments = source.key.split("/")
    if source.key.startswith("/") or any(s in ("", ".", "..") for s in segments):
        return f"input {where} has an empty, '.' or '..' path segment"
    inside = source.bucket == tenant.bucket and (
        not tenant.prefix or source.key.startswith(tenant.prefix + "/")
    )
    if not inside:
        return (
            f"input {where} is outside this namespace's storage root {tenant.root}/; "
            "a BatchJob may only read objects under its namespace's root"
        )
    return None


def effective_max_in_flight(job: BatchJob, caps: Caps) -> int:
    """The batch's ceiling of requests in flight: its spec, clamped to the namespace's cap."""
    asked = job.spec.concurrency.max_in_flight
    return asked if caps.max_in_flight is None else min(asked, caps.max_in_flight)


def caps_refusal(job: BatchJob, caps: Caps) -> str | None:
    """Why the spec asks for more than the namespace's caps allow, or None."""
    spec = job.spec
    asked = (
        ("parallelism", spec.parallelism, caps.max_parallelism),
        ("priority", spec.priority, caps.max_priority),
    )
    for field, value, cap in asked:
        if cap is not None and value > cap:
            return f"spec.{field} {value} exceeds this namespace's cap of {cap}"
    ceiling = effective_max_in_flight(job, caps)
    if spec.parallelism > ceiling:
        return (
            f"spec.parallelism {spec.parallelism} exceeds the batch's maxInFlight of "
            f"{ceiling}: maxInFlight is the whole batch's ceiling"
        )
    return None


def preflight(job: BatchJob, tenant: ResolvedTenant) -> str | None:
    """Everything that must hold before this batch's runner starts; the first refusal, or
    None. Checked by the operator on every reconcile before the runner exists (so a batch
    that was admitted keeps running if the file changes later)."""
    server = job.spec.model_server
    url_reason = (
        check_direct_url(server.url, tenant.allowed_model_server_urls)
        if server is not None and server.url is not None
        else None
    )
    return input_refusal(job, tenant) or url_reason or caps_refusal(job, tenant.caps)
