"""Where a batch line's `body` value lies in the raw line, so it is forwarded byte for byte.

Parsing the body and serialising it again changes what the user wrote: orjson turns
integers wider than 64 bits into floats and refuses to serialise nesting deeper than 255
levels it accepted when parsing. The runner therefore sends the exact bytes of the value.

The span must be the `body` orjson reads, so this scanner follows orjson's rules for the
top-level object: keys are compared after unescaping (`"bo\\u0064y"` is `body`) and the
last of duplicate keys wins. It assumes a line orjson accepted (validation runs first) and
checks only structure: strings, brackets and scalars; it never recurses, so any depth is
fine. The validator calls it too, so a line the runner could not forward fails validation.

Fast path: when `body` is the last key (the usual layout), its value runs to the closing
brace of the line; a single orjson parse of that slice proves it. Otherwise the value is
skipped token by token.
"""

import re

import orjson

_WS = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALAR = re.compile(rb"-?[0-9][0-9.eE+\-]*|true|false|null")
_PLAIN = re.compile(rb'[^"{}\[\]]+')  # inside containers: commas, colons, scalars, space
_BODY_KEY = b'"body"'
_QUOTE, _OPEN_OBJ, _OPEN_ARR, _CLOSE_OBJ, _CLOSE_ARR = 0x22, 0x7B, 0x5B, 0x7D, 0x5D
_COMMA, _COLON = 0x2C, 0x3A


class BodySpanError(ValueError):
    """The line's top-level object has no `body` the scanner can delimit."""


def body_span(line: bytes) -> tuple[int, int]:
    """`(start, end)` of the top-level `body` value: `line[start:end]` is what to send."""
    n = len(line)
    i = _WS.match(line, 0).end()  # type: ignore[union-attr]  # the pattern matches ""
    if i >= n or line[i] != _OPEN_OBJ:
        raise BodySpanError("the line is not a JSON object")
    i = _skip_ws(line, i + 1)
    found: tuple[int, int] | None = None
    if i < n and line[i] == _CLOSE_OBJ:
        raise BodySpanError("the line has no body")
    while True:
        key = _STRING.match(line, i)
        if key is None:
            raise BodySpanError(f"expected a key at byte {i}")
        is_body = _is_body_key(key.group())
        i = _skip_ws(line, key.end())
        if i >= n or line[i] != _COLON:
            raise BodySpanError(f"expected ':' at byte {i}")
        start = _skip_ws(line, i + 1)
        end = _last_value_end(line, start) if is_body else None
        if end is not None:
            return start, end  # the last key: nothing after it can override it
        end = _value_end(line, start)
        if is_body:
            found = (start, end)
        i = _skip_ws(line, end)
        if i < n and line[i] == _COMMA:
            i = _skip_ws(line, i + 1)
            continue
        if i < n and line[i] == _CLOSE_OBJ:
            break
        raise BodySpanError(f"expected ',' or '}}' at byte {i}")
    if found is None:
        raise BodySpanError("the line has no body")
    return found


def _skip_ws(line: bytes, i: int) -> int:
    return _WS.match(line, i).end()  # type: ignore[union-attr]  # the pattern matches ""


def _is_body_key(key: bytes) -> bool:
    if key == _BODY_KEY:
        return True
    if b"\\" not in key:
        return False
    try:
        return bool(orjson.loads(key) == "body")
    except orjson.JSONDecodeError:
        return False


def _last_value_end(line: bytes, start: int) -> int | None:
    """The value's end if it is the object's last member, else None (one orjson parse)."""
    close = len(line.rstrip(b" \t\n\r")) - 1
    if close <= start or line[close] != _CLOSE_OBJ:
        return None
    end = start + len(line[start:close].rstrip(b" \t\n\r"))
    try:
        orjson.loads(line[start:end])
    except orjson.JSONDecodeError:
        return None  # something follows the value: another key
    return end


def _value_end(line: bytes, i: int) -> int:
    """End of the JSON value starting at `i`, skipping nested containers iteratively."""
    n = len(line)
    if i >= n:
        raise BodySpanError("a value is missing at the end of the line")
    first = line[i]
    if first == _QUOTE:
        return _string_end(line, i)
    if first not in (_OPEN_OBJ, _OPEN_ARR):
        scalar = _SCALAR.match(line, i)
        if scalar is None:
            raise BodySpanError(f"unexpected byte at {i}")
        return scalar.end()
    depth = 0
    while i < n:
        c = line[i]
        if c == _QUOTE:
            i = _string_end(line, i)
            continue
        if c in (_OPEN_OBJ, _OPEN_ARR):
            depth += 1
        elif c in (_CLOSE_OBJ, _CLOSE_ARR):
            depth -= 1
            if depth == 0:
                return i + 1
        else:
            i = _PLAIN.match(line, i).end()  # type: ignore[union-attr]  # c is plain
            continue
        i += 1
    raise BodySpanError("a value is not closed")


def _string_end(line: bytes, i: int) -> int:
    match = _STRING.match(line, i)
    if match is None:
        raise BodySpanError(f"a string is not closed (byte {i})")
    return match.end()
