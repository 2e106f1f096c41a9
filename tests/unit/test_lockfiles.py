"""The images' hashed lock files are in sync with pyproject.toml (offline checks).

Regenerating needs the package registry, so CI does not resolve; it proves instead that
each lock was made from today's dependency lists (the recorded input digest) and that it
pins, with hashes, a version of every requirement that satisfies its specifier.
"""

from __future__ import annotations

import copy
import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.lockfiles import (
    IMAGE_LOCKS,
    IMAGE_PYTHON,
    REGENERATE,
    ImageLock,
    _pyproject,
    build_requirements,
    inputs_digest,
    recorded_digest,
    requirements_for,
)

IDS = [image.directory for image in IMAGE_LOCKS]
# The images' platform, for evaluating the lock's and the requirements' markers.
IMAGE_ENV = {
    "python_version": IMAGE_PYTHON,
    "python_full_version": f"{IMAGE_PYTHON}.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_machine": "x86_64",
    "extra": "",
}
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _pins(text: str) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes), for pins whose marker holds on the image."""
    pins: dict[str, tuple[Version, int]] = {}
    current: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith(" "):
            assert current is not None, f"a hash before any pin: {line!r}"
            if "--hash=sha256:" in line:
                pinned, hashes = pins[current]
                pins[current] = (pinned, hashes + 1)
            continue
        match = _PIN.match(line)
        assert match, f"not an exact pin: {line!r}"
        name, version, marker = match.groups()
        current = canonicalize_name(name)
        holds = Requirement(f"x; {marker}").marker if marker else None
        if holds is not None and not holds.evaluate(IMAGE_ENV):
            current = f"{current} (not on the image)"
        pins[current] = (Version(version), 0)
    return pins


@pytest.mark.parametrize("image", IMAGE_LOCKS, ids=IDS)
def test_lock_was_made_from_todays_pyproject(image: ImageLock) -> None:
    assert image.path.is_file(), f"{image.path} is missing: run `{REGENERATE}`"
    recorded = recorded_digest(image.path.read_text())
    assert recorded == inputs_digest(image.extra), (
        f"{image.path.name} of {image.directory} is stale (pyproject.toml's `{image.extra}` "
        f"dependencies changed): run `{REGENERATE}` and commit the result"
    )


@pytest.mark.parametrize("image", IMAGE_LOCKS, ids=IDS)
def test_lock_pins_every_requirement_with_hashes(image: ImageLock) -> None:
    pins = _pins(image.path.read_text())
    assert pins
    for name, (version, hashes) in pins.items():
        assert hashes >= 1, f"{name}=={version} has no hash"
    for text in requirements_for(image.extra) + build_requirements():
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(IMAGE_ENV):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{image.directory}: {req} is not in the lock"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"{image.directory}: the lock pins {name}=={version}, outside `{req}`"
        )


def test_digest_follows_the_dependency_lists() -> None:
    """A changed specifier, a new requirement or a new build backend each make a new digest."""
    base = _pyproject()
    before = inputs_digest("runner", base)

    bumped = copy.deepcopy(base)
    bumped["project"]["optional-dependencies"]["runner"][0] = "aiohttp>=3.11,<4"  # type: ignore[index]
    added = copy.deepcopy(base)
    added["project"]["dependencies"].append("rich")  # type: ignore[index]
    backend = copy.deepcopy(base)
    backend["build-system"]["requires"] = ["setuptools>=70"]  # type: ignore[index]
    unrelated = copy.deepcopy(base)
    unrelated["project"]["optional-dependencies"]["dev"].append("rich")  # type: ignore[index]

    assert inputs_digest("runner", bumped) != before
    assert inputs_digest("runner", added) != before
    assert inputs_digest("runner", backend) != before
    assert inputs_digest("runner", unrelated) == before  # dev tools are not in any image


def test_self_references_are_expanded() -> None:
    """The shim extra names `openbatch-api[runner,client]`: their packages are locked too."""
    shim = {Requirement(r).name for r in requirements_for("shim")}
    assert {"aiohttp", "openai", "fastapi"} <= shim
    assert "openbatch-api" not in shim
