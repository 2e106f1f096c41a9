"""Model routing table: model name -> OpenAI-compatible base URLs and their key (DESIGN §7).

File format (JSON; the same document a ConfigMap holds, key `models.json`):
```
{"models": {
  "llama-3-8b": {"urls": ["http://vllm-a:8000/v1", "http://vllm-b:8000/v1"],
                 "apiKeySecret": {"name": "vllm-key", "key": "apiKey"}},
  "tiny": ["http://tiny:8000/v1"],
  "echo": "http://echo:8000/v1"}}
```
An entry is an object (`urls`, optional `apiKeySecret`), a list of URLs or one URL; a bare
mapping without the `models` key is accepted too. `apiKeySecret` names a Secret *in the
batch's namespace* (a pod can only reference its own namespace's Secrets; the platform
provisions it there) whose value is sent as the bearer token to that entry's URLs and to no
other URL (docs/security.md). One URL belongs to at most one key.

Routing-table URLs are the platform's own (a ConfigMap tenants cannot write), so the tenant
URL policy (`openbatch.url_policy`) does not apply to them.
"""

from collections.abc import Mapping
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from openbatch.secret_ref import SecretKeyRef


class RouteEntry(BaseModel):
    """One model's servers and the key reference that belongs to them."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True
    )

    urls: list[str] = Field(min_length=1)
    api_key_secret: SecretKeyRef | None = Field(default=None, alias="apiKeySecret")

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            check_base_url(url)
        return value


class RoutingTable(BaseModel):
    models: dict[str, RouteEntry]

    @field_validator("models", mode="before")
    @classmethod
    def _entries(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value
        out: dict[object, object] = {}
        for model, entry in value.items():
            if isinstance(entry, str):
                out[model] = {"urls": [entry]}
            elif isinstance(entry, list):
                out[model] = {"urls": entry}
            else:
                out[model] = entry
        return out

    @model_validator(mode="after")
    def _one_key_per_url(self) -> "RoutingTable":
        owner: dict[str, SecretKeyRef | None] = {}
        for model, entry in self.models.items():
            for url in entry.urls:
                if url in owner and owner[url] != entry.api_key_secret:
                    raise ValueError(
                        f"URL {url!r} of model {model!r} is in another entry with a different "
                        "apiKeySecret: a URL belongs to one key"
                    )
                owner[url] = entry.api_key_secret
        return self

    def urls_for(self, model: str) -> list[str] | None:
        entry = self.models.get(model)
        return list(entry.urls) if entry is not None else None

    def key_refs(self) -> dict[str, SecretKeyRef]:
        """Every routed base URL that has a key, with its Secret reference."""
        return {
            url: entry.api_key_secret
            for entry in self.models.values()
            if entry.api_key_secret is not None
            for url in entry.urls
        }


def parse_routing_table(data: bytes) -> RoutingTable:
    raw = orjson.loads(data)
    if isinstance(raw, dict) and "models" not in raw:
        raw = {"models": raw}
    return RoutingTable.model_validate(raw)


def check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base URL {url!r} must be an absolute http(s) URL")
    return url


def endpoint_url(base_url: str, path: str) -> str:
    """Join a base URL and a line's `url`, with or without `/v1` on the base.

    `http://h:8000/v1` + `/v1/chat/completions` and `http://h:8000` + `/v1/chat/completions`
    both give `http://h:8000/v1/chat/completions`: users copy base URLs from OpenAI client
    configs (which end in /v1) as often as from server docs (which don't).
    """
    base = base_url.rstrip("/")
    if base.endswith("/v1") and path.startswith("/v1/"):
        base = base[: -len("/v1")]
    return base + path
