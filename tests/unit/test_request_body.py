"""The exact `body` bytes of a batch line: the span is the body orjson reads."""

import random

import orjson
import pytest

from openbatch.request_body import BodySpanError, body_span


def _body(line: bytes) -> bytes:
    start, end = body_span(line)
    return line[start:end]


@pytest.mark.parametrize(
    ("line", "body"),
    [
        (b'{"custom_id":"a","body":{"m":1}}', b'{"m":1}'),
        (b'{"body":{"m":1},"url":"/v1/x"}', b'{"m":1}'),  # not the last key
        (b' { "body" :  {"a": "}"}  ,"k":[{"body":2}] } ', b'{"a": "}"}'),
        (b'{"k":"\\"body\\"","body":{"a":[]}}', b'{"a":[]}'),  # "body" inside a string
        (b'{"body":{"a":1},"body":{"b":2}}', b'{"b":2}'),  # duplicates: the last wins
        (b'{"body":{"a":1},"body":{"b":2},"z":0}', b'{"b":2}'),
        (b'{"body":{"a":1},"bo\\u0064y":{"c":3}}', b'{"c":3}'),  # an escaped key
        (b'{"body":{"n":123456789012345678901234567890}}', b'{"n":123456789012345678901234567890}'),
        (b'{"body":{"s":"\\\\","t":"a\\"b"},"x":-1.5e3}', b'{"s":"\\\\","t":"a\\"b"}'),
        (b'{"a":true,"b":null,"c":false,"body":{}}', b"{}"),
    ],
)
def test_span_is_the_body_orjson_reads(line: bytes, body: bytes) -> None:
    assert _body(line) == body
    assert orjson.loads(body) == orjson.loads(line)["body"]


def test_deep_nesting_is_scanned_without_recursion() -> None:
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    line = b'{"body":' + deep + b',"custom_id":"x"}'
    assert _body(line) == deep


@pytest.mark.parametrize("line", [b"[1]", b'{"custom_id":"x"}', b"{}", b'{"body"}', b""])
def test_no_body_is_an_error(line: bytes) -> None:
    with pytest.raises(BodySpanError):
        body_span(line)


def _random_value(rng: random.Random, depth: int) -> object:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice(['a"b', "}{", "\\", "body", "é✓", "\n"])
    if kind == 1:
        return rng.randint(-(10**30), 10**30) if rng.random() < 0.2 else rng.randint(-9, 9)
    if kind == 2:
        return rng.choice([True, False, None, 1.5])
    if kind == 3:
        return ""
    if kind in (4, 5):
        return {rng.choice(["body", "k", "x"]): _random_value(rng, depth + 1) for _ in range(3)}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_random_lines_agree_with_orjson() -> None:
    rng = random.Random(5)
    for _ in range(500):
        members = [
            (rng.choice(["body", "custom_id", "url", "bo\\u0064y"]), _random_value(rng, 0))
            for _ in range(rng.randint(1, 5))
        ]
        members.append(("body", {"model": "m", "v": _random_value(rng, 1)}))
        rng.shuffle(members)
        # Written by hand: json libraries would drop duplicate keys and big ints.
        sep = rng.choice([",", " , ", ",\t"])
        line = (
            "{" + sep.join(f'"{k}":{_dump(v)}' for k, v in members) + rng.choice(["}", " } "])
        ).encode()
        parsed = orjson.loads(line)
        if not isinstance(parsed.get("body"), dict):
            continue
        assert orjson.loads(_body(line)) == parsed["body"], line


def _dump(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # exact, even past 64 bits
    if isinstance(value, dict):
        return (
            "{" + ",".join(f"{orjson.dumps(k).decode()}:{_dump(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return orjson.dumps(value).decode()
