"""The real `openbatch run` / `finalize` processes refuse what would lose or mix lines.

Issue 7: a work dir keeps its shard count and its input's content fingerprint; odd inputs
(a BOM, a huge line) are handled in bounded memory; first-use errors are clear.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from openbatch.progress import RunState
from tests.fixtures.model_sim import ModelSimFactory, SimHandle
from tests.fixtures.s3 import SeaweedServer, unique_bucket_name
from tests.runner_support import (
    assert_exactly_once,
    chat_line,
    committed_lines,
    jsonl,
    openbatch_command,
    parse_lines,
    progress,
    read_uri,
    run_args,
    run_openbatch,
    start_openbatch,
    wait_for,
    write_uri,
)

MIB = 1024 * 1024
TERM_GRACE = 2.0


class Files:
    """A test's input, output, errors and work dir under one local directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.input = str(root / "input.jsonl")
        self.output = str(root / "output.jsonl")
        self.errors = str(root / "errors.jsonl")
        self.work = str(root / "work")

    def args(self, sim: SimHandle, *extra: str, work: str | None = None) -> list[str]:
        return run_args(self.input, self.output, work or self.work, [sim.base_url], *extra)

    def finalize_args(self, shards: int, work: str | None = None) -> list[str]:
        return [
            *["finalize", "--work-dir", work or self.work, "--shards", str(shards)],
            *["--output", self.output, "--errors", self.errors],
        ]

    def outputs(self) -> tuple[list[Any], list[Any]]:
        return parse_lines(read_uri(self.output)), parse_lines(read_uri(self.errors))


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def write_batch(files: Files, n: int) -> set[str]:
    write_uri(files.input, jsonl(chat_line(i) for i in range(n)))
    return {f"req-{i}" for i in range(n)}


# ------------------------------------------------------------------ item 1: shard count


def test_a_work_dir_keeps_its_shard_count(files: Files, model_sim: SimHandle) -> None:
    ids = write_batch(files, 60)
    for k in range(3):
        proc = run_openbatch(files.args(model_sim, "--shard", f"{k}/3"))
        assert proc.returncode == 0, proc.stderr
    for shards in (2, 4, 1):
        fin = run_openbatch(files.finalize_args(shards))
        assert fin.returncode == 2, fin.stderr
        assert "3 shard(s)" in fin.stderr and f"asks for {shards}" in fin.stderr, fin.stderr
        assert read_uri(files.output) is None
    for shard in ("0/2", "1/2", "2/4", "0/1"):
        proc = run_openbatch(files.args(model_sim, "--shard", shard))
        assert proc.returncode == 2, proc.stderr
        assert "3 shard(s)" in proc.stderr and "asks for" in proc.stderr, proc.stderr
        assert "already" not in proc.stderr
    fin = run_openbatch(files.finalize_args(3))
    assert fin.returncode == 0, fin.stderr
    assert_exactly_once(ids, *files.outputs())


# ------------------------------------------------------------------ item 2: edited input


def _interrupted_run(files: Files, sim: SimHandle) -> list[str]:
    """Start a run, SIGTERM it once some lines are committed; return its arguments."""
    args = files.args(sim, "--concurrency", "4", "--commit-interval", "0.2")
    proc = start_openbatch(args)
    wait_for(lambda: sim.stats()["requests"] >= 40, 60, "40 requests")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 75, stderr
    record = progress(files.work)
    assert record is not None and record.state is RunState.INTERRUPTED
    return args


def test_a_resume_on_edited_input_of_the_same_size_is_refused(
    files: Files, model_sim_factory: ModelSimFactory
) -> None:
    sim = model_sim_factory(slots=4, service_time=0.02)
    n = 400
    ids = write_batch(files, n)
    original = Path(files.input).read_bytes()
    args = _interrupted_run(files, sim)
    record = progress(files.work)
    assert record is not None and record.input is not None
    assert record.input.digest is not None and record.input.digest.startswith("blake2b-256:")
    lines = original.splitlines(keepends=True)
    # Swap two lines of equal length near the end (not yet run): same size, other content.
    lines[n - 2], lines[n - 1] = lines[n - 1], lines[n - 2]
    swapped = b"".join(lines)
    assert len(swapped) == len(original) and swapped != original
    Path(files.input).write_bytes(swapped)
    before = sim.stats()["requests"]
    proc = run_openbatch(args)
    assert proc.returncode == 2, proc.stderr
    assert "changed since the work dir" in proc.stderr and "same size" in proc.stderr
    assert sim.stats()["requests"] == before  # nothing sent
    record = progress(files.work)
    assert record is not None and record.state is RunState.INTERRUPTED  # left as it was

    # Unrun lines turned into invalid JSON of the same length: refused too.
    broken = original[:-30] + b"#" * 29 + b"\n"
    Path(files.input).write_bytes(broken)
    proc = run_openbatch(args)
    assert proc.returncode == 2 and "changed since the work dir" in proc.stderr

    Path(files.input).write_bytes(original)  # the original resumes
    proc = run_openbatch(args)
    assert proc.returncode == 0, proc.stderr
    assert "resuming shard 0" in proc.stderr
    out, err = files.outputs()
    assert_exactly_once(ids, out, err)
    assert len(out) == n


# ------------------------------------------------------------------ items 14, 15: odd input


def test_a_utf8_bom_at_the_start_is_accepted(files: Files, model_sim: SimHandle) -> None:
    ids = write_batch(files, 5)
    Path(files.input).write_bytes(b"\xef\xbb\xbf" + Path(files.input).read_bytes())
    proc = run_openbatch(files.args(model_sim))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out, err = files.outputs()
    assert_exactly_once(ids, out, err)
    assert len(out) == 5


def test_a_line_over_max_line_bytes_fails_validation(files: Files, model_sim: SimHandle) -> None:
    lines = [chat_line(i) for i in range(4)]
    lines[2]["body"]["messages"][0]["content"] = "x" * 5000
    write_uri(files.input, jsonl(lines))
    proc = run_openbatch(files.args(model_sim, "--max-line-bytes", "4096"))
    assert proc.returncode == 3, proc.stderr
    [error] = orjson.loads(proc.stdout)["data"]
    assert (error["code"], error["param"], error["line"]) == ("invalid_request", None, 3)
    assert "maximum is 4096 bytes per line" in error["message"]
    assert model_sim.stats()["requests"] == 0


def test_a_150_mib_line_is_rejected_in_bounded_memory(files: Files, model_sim: SimHandle) -> None:
    """The default cap (8 MiB) rejects it; the runner never holds the line (the old
    splitting took 18 s and 818 MB of memory for it, then sent it)."""
    head = orjson.dumps(chat_line(1))
    big = head[:-2] + b', "pad": "' + b"x" * (150 * MIB) + b'"}}'
    with Path(files.input).open("wb") as f:
        f.write(orjson.dumps(chat_line(0)) + b"\n")
        f.write(big + b"\n")
        f.write(orjson.dumps(chat_line(2)) + b"\n")
    proc = start_openbatch(files.args(model_sim))
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    [error] = orjson.loads(stdout)["data"]
    assert (error["code"], error["line"]) == ("invalid_request", 2)
    assert f"This line is {len(big)} bytes" in error["message"]
    assert peak < 200 * MIB, f"peak RSS {peak / MIB:.0f} MiB"
    assert model_sim.stats()["requests"] == 0


# ------------------------------------------------------------------ item 6: SIGTERM, storage down


def test_sigterm_while_storage_is_down_exits_within_the_grace(
    seaweed_outage: SeaweedServer,
    model_sim_factory: ModelSimFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Storage calls retry for OPENBATCH_S3_RETRY_SECONDS (60 s by default) in threads;
    the exit after SIGTERM must not wait for them (it took 115 s). The rerun resumes."""
    env = seaweed_outage.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = f"s3://{seaweed_outage.make_bucket(unique_bucket_name())}/term"
    sim = model_sim_factory(slots=8, service_time=0.01)
    n = 3000
    write_uri(f"{root}/input.jsonl", jsonl(chat_line(i) for i in range(n)))
    args = run_args(
        f"{root}/input.jsonl",
        f"{root}/output.jsonl",
        f"{root}/work",
        [sim.base_url],
        *["--concurrency", "8", "--commit-every", "100", "--commit-interval", "0.2"],
        *["--term-grace", str(TERM_GRACE)],
    )
    proc = start_openbatch(args, env=env)
    wait_for(lambda: committed_lines(f"{root}/work") >= 300, 60, "300 committed lines")
    seaweed_outage.stop()
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        # --term-grace + the runner's 5 s margin + slack for a loaded machine: well under
        # the 60 s a single storage call retries.
        _, stderr = proc.communicate(timeout=TERM_GRACE + 5 + 15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the runner did not exit after SIGTERM while storage was down")
    print(f"SIGTERM to exit with storage down: {time.monotonic() - signalled:.1f}s")
    assert proc.returncode == 75, stderr
    assert "exiting anyway" in stderr
    seaweed_outage.start()
    again = run_openbatch(args, env=env)
    assert again.returncode == 0, again.stderr
    assert "resuming shard 0" in again.stderr
    out = parse_lines(read_uri(f"{root}/output.jsonl"))
    assert_exactly_once({f"req-{i}" for i in range(n)}, out, [])


# ------------------------------------------------------------------ item 7: overlapping runners


def test_overlapping_runners_keep_counts_within_total_and_a_finished_shard_finished(
    files: Files, model_sim_factory: ModelSimFactory
) -> None:
    """Runners on one work dir that overlap (a pod thought dead still running) commit some
    lines twice. Counts must still never exceed the total, and once one runner finished
    the shard, a stale one must not move its record back (finalize would refuse)."""
    n = 600
    ids = write_batch(files, n)
    slow = model_sim_factory(slots=2, service_time=0.1)
    medium = model_sim_factory(slots=4, service_time=0.01)
    fast = model_sim_factory(slots=16, service_time=0.002)
    often = ("--commit-interval", "0.2", "--commit-every", "5")
    stale_args = files.args(slow, "--concurrency", "2", *often)

    # Two runners overlap, then both die: lines both committed are in the parts twice.
    stale = start_openbatch(stale_args)
    wait_for(lambda: committed_lines(files.work) >= 10, 60, "10 committed lines")
    other = start_openbatch(files.args(medium, "--concurrency", "2", *often))
    wait_for(lambda: medium.stats()["requests"] >= 300, 60, "300 requests to the second runner")
    before = slow.stats()["requests"]
    wait_for(lambda: slow.stats()["requests"] >= before + 6, 60, "more work by the first runner")
    for proc in (other, stale):
        proc.kill()
        proc.communicate()

    copies = [
        index
        for part in sorted(Path(files.work, "shard-0").glob("*-*-*.jsonl"))
        for index in orjson.loads(part.read_bytes().split(b"\n", 1)[0])["lines"]
    ]
    assert len(copies) > len(set(copies)), "the runners did not overlap"

    # A stale runner comes back, and a fresh one finishes the shard while it runs.
    stale = start_openbatch(stale_args)
    wait_for(lambda: slow.stats()["requests"] >= before + 12, 60, "the stale runner working")
    finisher = run_openbatch(files.args(fast, "--concurrency", "16"))
    assert finisher.returncode == 0, finisher.stderr
    record = progress(files.work)
    assert record is not None and record.state is RunState.COMPLETED
    assert (record.completed, record.failed, record.unrun, record.total) == (n, 0, 0, n)

    def moved_or_gone() -> bool:
        current = progress(files.work)
        return (
            stale.poll() is not None or current is None or current.state is not RunState.COMPLETED
        )

    wait_for(moved_or_gone, 60, "the stale runner to stop or touch the record")
    if stale.poll() is None:
        stale.send_signal(signal.SIGTERM)
    _, stderr = stale.communicate(timeout=60)
    record = progress(files.work)
    assert record is not None and record.state is RunState.COMPLETED, record
    assert record.completed + record.failed + record.unrun <= record.total
    assert stale.returncode == 0, stderr
    assert "finished by another runner" in stderr

    fin = run_openbatch(files.finalize_args(1))
    assert fin.returncode == 0, fin.stderr
    out, err = files.outputs()
    assert_exactly_once(ids, out, err)
    assert orjson.loads(fin.stdout)["completed"] == n


# ------------------------------------------------------------------ item 12: disk full, descriptors


def test_a_window_wider_than_the_descriptor_limit_is_capped(
    files: Files, model_sim_factory: ModelSimFactory
) -> None:
    """`--concurrency 3000` under `ulimit -n 1024` exited 2 and lost every answer: the
    connections failed with EMFILE, then so did the commit."""
    sim = model_sim_factory(slots=4000, service_time=0.3)
    ids = write_batch(files, 4000)
    limited = ["sh", "-c", 'ulimit -n 1024 && exec "$@"', "sh"]
    proc = subprocess.run(
        limited + openbatch_command() + files.args(sim, "--concurrency", "3000"),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: --concurrency 3000 needs more file descriptors" in proc.stderr
    assert "capped at 896" in proc.stderr
    out, err = files.outputs()
    assert_exactly_once(ids, out, err)
    assert len(out) == 4000
    assert 0 < sim.stats()["max_in_flight"] <= 896


def _can_mount_tmpfs(where: Path) -> bool:
    probe = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "mount", "-t", "tmpfs", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def test_disk_full_is_transient_exit_1(files: Files, model_sim: SimHandle) -> None:
    """ENOSPC exited 2 ("a retry cannot help"); a full disk is freed, so it is 1."""
    work = files.root / "small-disk"
    work.mkdir()
    if shutil.which("unshare") is None or not _can_mount_tmpfs(work):
        pytest.skip("needs unshare and mount in a private mount namespace (a tiny tmpfs)")
    write_batch(files, 500)
    # The work dir is a 64 KiB tmpfs, private to the runner's own mount namespace.
    script = 'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"'
    command = ["unshare", "--mount", "--map-root-user", "sh", "-c", script, str(work)]
    args = files.args(model_sim, "--commit-every", "20", work=str(work / "w"))
    proc = subprocess.run(
        command + openbatch_command() + args,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "No space left on device" in proc.stderr and "disk full" in proc.stderr


# ------------------------------------------------------------ item 13: leftovers, destinations

KILLED_WRITER = """
import sys, time
from openbatch.storage import LocalStore

class Stalls:
    def __init__(self):
        self.sent = False

    def read(self, n=-1):
        if not self.sent:
            self.sent = True
            return b"x" * 1000
        print("writing", flush=True)
        time.sleep(3600)
        return b""

LocalStore().put_stream(sys.argv[1], Stalls())
"""


def _kill_9_while_writing(key: str) -> None:
    """A real LocalStore writer, killed with SIGKILL in the middle of writing `key`."""
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, key], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    writer.kill()
    writer.communicate()


def _temporaries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.openbatch-tmp"))


def test_temporary_files_of_a_killed_run_are_removed_on_the_next_start(
    files: Files, model_sim_factory: ModelSimFactory
) -> None:
    sim = model_sim_factory(slots=4, service_time=0.02)
    ids = write_batch(files, 300)
    args = _interrupted_run(files, sim)
    _kill_9_while_writing(f"{files.work}/shard-0/out-00000999-deadbeef.jsonl")  # a commit
    _kill_9_while_writing(files.output)  # a finalize
    assert len(_temporaries(files.root)) == 2
    proc = run_openbatch(args)
    assert proc.returncode == 0, proc.stderr
    assert "removed 2 temporary file(s) left by a killed run" in proc.stderr
    assert _temporaries(files.root) == []
    out, err = files.outputs()
    assert_exactly_once(ids, out, err)

    _kill_9_while_writing(files.output)  # a finalize Job killed, then run again
    fin = run_openbatch(files.finalize_args(1))
    assert fin.returncode == 0, fin.stderr
    assert _temporaries(files.root) == []


def test_an_unwritable_destination_is_found_before_any_request(
    files: Files, model_sim: SimHandle
) -> None:
    write_batch(files, 20)
    a_file = files.root / "a-file"
    a_file.write_text("not a directory")
    a_dir = files.root / "a-dir"
    a_dir.mkdir()
    cases = [
        (["--output", f"{a_file}/out.jsonl"], "is not a directory"),
        (["--errors", str(a_dir)], "is a directory"),
        (["--work-dir", f"{a_file}/work"], "is not a directory"),
    ]
    for extra, message in cases:
        proc = run_openbatch([*files.args(model_sim), *extra])
        assert proc.returncode == 2, proc.stderr
        assert model_sim.stats()["requests"] == 0, proc.stderr
        assert message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert not Path(files.work).exists()  # and no half-made work dir


# ------------------------------------------------------------------ item 16: first-use errors


def _without_s3_settings() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENBATCH_S3_", "AWS_"))
    }


def test_s3_input_without_s3_settings_is_one_clear_line(files: Files, model_sim: SimHandle) -> None:
    proc = subprocess.run(
        [
            *openbatch_command(),
            *run_args("s3://bucket/in.jsonl", files.output, files.work, [model_sim.base_url]),
        ],
        env=_without_s3_settings(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert "s3://bucket/in.jsonl" in line and "OPENBATCH_S3_ACCESS_KEY is not set" in line
    assert not Path(files.work).exists()


def test_first_use_mistakes_say_what_is_wrong(files: Files, model_sim: SimHandle) -> None:
    Path(files.input).mkdir()
    proc = run_openbatch(files.args(model_sim))
    assert proc.returncode == 2, proc.stderr
    assert "is a directory, not a file" in proc.stderr and "does not exist" not in proc.stderr
    assert not Path(files.work).exists()  # a run that fails on its input makes no work dir

    fin = run_openbatch(files.finalize_args(1))
    assert fin.returncode == 2, fin.stderr
    assert f"the work dir {files.work} does not exist" in fin.stderr
    assert "has not started" not in fin.stderr

    for flag in ("--version", "-V", "version"):
        version = run_openbatch([flag])
        assert version.returncode == 0, version.stderr
        assert version.stdout.startswith("openbatch ") and len(version.stdout.split()) == 2
