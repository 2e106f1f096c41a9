"""Fenced code blocks of the README and docs, for the tests that run them as written."""

from __future__ import annotations

import re

from tests.runner_support import REPO_ROOT

_FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", flags=re.DOTALL | re.MULTILINE)


def blocks(doc: str, lang: str | None = None) -> list[str]:
    """The fenced blocks of `doc` (a path under the repository), in order; with `lang`, only
    those fenced with that language. Indentation of an indented fence is removed."""
    text = (REPO_ROOT / doc).read_text()
    found = []
    for indent, language, body in _FENCE.findall(text):
        if lang is not None and language != lang:
            continue
        found.append("".join(line[len(indent) :] + "\n" for line in body.splitlines()))
    return found


def block_with(doc: str, needle: str, lang: str | None = None) -> str:
    """The one block of `doc` that contains `needle` (a test fails if there is none, or more)."""
    matching = [b for b in blocks(doc, lang) if needle in b]
    if len(matching) != 1:
        raise AssertionError(f"{doc}: {len(matching)} blocks contain {needle!r}, expected 1")
    return matching[0]


def shell_lines(block: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blanks dropped."""
    joined = block.replace("\\\n", " ")
    out = []
    for raw in joined.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out
