"""Model routing table: model name -> OpenAI-compatible base URLs (DESIGN §7).

File format (JSON; the same document a ConfigMap holds):
`{"models": {"llama-3-8b": ["http://vllm-a:8000/v1", "http://vllm-b:8000/v1"], "tiny": "http://x/v1"}}`
A bare mapping without the `models` key is accepted too. A single URL may be a string.
"""

from collections.abc import Mapping
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, field_validator


class RoutingTable(BaseModel):
    models: dict[str, list[str]]

    @field_validator("models", mode="before")
    @classmethod
    def _listify(cls, value: object) -> object:
        if isinstance(value, Mapping):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("models")
    @classmethod
    def _check_urls(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for model, urls in value.items():
            if not urls:
                raise ValueError(f"model {model!r} has no base URL")
            for url in urls:
                check_base_url(url)
        return value

    def urls_for(self, model: str) -> list[str] | None:
        return self.models.get(model)


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
