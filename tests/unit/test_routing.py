import pytest
from pydantic import ValidationError

from openbatch.routing import endpoint_url, parse_routing_table


@pytest.mark.parametrize(
    ("base", "path", "url"),
    [
        ("http://h:8000/v1", "/v1/chat/completions", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/", "/v1/chat/completions", "http://h:8000/v1/chat/completions"),
        ("http://h:8000", "/v1/embeddings", "http://h:8000/v1/embeddings"),
        ("http://h:8000/", "/v1/embeddings", "http://h:8000/v1/embeddings"),
        ("http://h/proxy/v1", "/v1/responses", "http://h/proxy/v1/responses"),
        ("http://h/proxy", "/v1/responses", "http://h/proxy/v1/responses"),
    ],
)
def test_endpoint_url_joins_with_or_without_v1(base: str, path: str, url: str) -> None:
    assert endpoint_url(base, path) == url


def test_routing_table_forms() -> None:
    t = parse_routing_table(
        b'{"models": {"a": "http://x/v1", "b": ["http://y/v1", "http://z/v1"]}}'
    )
    assert t.urls_for("a") == ["http://x/v1"]
    assert t.urls_for("b") == ["http://y/v1", "http://z/v1"]
    assert t.urls_for("c") is None
    bare = parse_routing_table(b'{"a": "http://x/v1"}')
    assert bare.urls_for("a") == ["http://x/v1"]


@pytest.mark.parametrize(
    "doc",
    [b'{"models": {"a": []}}', b'{"models": {"a": "ftp://x"}}', b'{"models": {"a": "x"}}', b"[1]"],
)
def test_routing_table_rejects_bad_entries(doc: bytes) -> None:
    with pytest.raises((ValidationError, ValueError)):
        parse_routing_table(doc)
