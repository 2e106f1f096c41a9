"""A reference to one key of a Secret (`{name, key}`), shared by the CRD models, the routing
table and the tenancy file. Imports nothing of OpenBatch, so every module can use it."""

from pydantic import BaseModel, ConfigDict, Field

# A Secret's name is a DNS subdomain; a data key is letters, digits, '-', '_' and '.'.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # noqa: S105
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"  # noqa: S105


class SecretKeyRef(BaseModel):
    """`{name, key}`: the Secret lives in the namespace of the pod that uses it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(min_length=1, max_length=253, pattern=SECRET_NAME_PATTERN)
    key: str = Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)
