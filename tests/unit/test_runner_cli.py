import argparse
import dataclasses
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from openbatch.runner_args import (
    JOB_INDEX_PLACEHOLDER,
    ExitCode,
    FinalizeArgs,
    HttpClientKind,
    ProgressMode,
    RunnerArgs,
    ServerKind,
    build_finalize_parser,
    build_run_parser,
    parse_finalize_argv,
    parse_run_argv,
)
from openbatch_runner.cli import default_errors, default_output, parse_run_args
from openbatch_runner.polite_gate import metrics_url_for
from openbatch_runner.progress_view import ProgressView, Snapshot, format_duration, render_bar


def test_defaults_derive_outputs_from_the_input() -> None:
    cfg = parse_run_args(["data/in.jsonl", "--base-url", "http://h:8000/v1"])
    assert cfg.output == "data/in.output.jsonl"
    assert cfg.errors == "data/in.errors.jsonl"
    assert cfg.work_dir == "data/in.output.jsonl.work"
    assert (cfg.shard, cfg.shards, cfg.finalize) == (0, 1, True)
    assert (cfg.concurrency, cfg.max_attempts, cfg.adaptive) == (64, 5, False)
    assert cfg.endpoint == "/v1/chat/completions"


@pytest.mark.parametrize(
    ("output", "errors"),
    [
        ("s3://b/out.jsonl", "s3://b/out.errors.jsonl"),
        ("s3://b/run.output.jsonl", "s3://b/run.errors.jsonl"),
        ("results", "results.errors.jsonl"),
    ],
)
def test_default_errors(output: str, errors: str) -> None:
    assert default_errors(output) == errors


def test_default_output_without_jsonl_suffix() -> None:
    assert default_output("s3://b/batch") == "s3://b/batch.output.jsonl"


def test_every_option_is_parsed() -> None:
    cfg = parse_run_args(
        [
            *["in.jsonl", "--base-url", "http://a/v1", "--base-url", "http://b:1"],
            *["--output", "o.jsonl", "--errors", "e.jsonl", "--work-dir", "w"],
            *["--endpoint", "/v1/embeddings", "--concurrency", "8", "--adaptive"],
            *["--max-concurrency", "99", "--max-attempts", "2", "--request-timeout", "1.5"],
            *["--deadline", "2030-01-02T03:04:05Z", "--shard", "1/4", "--api-key", "k"],
            *["--commit-every", "10", "--commit-interval", "0.5", "--max-lines", "7"],
            *["--max-bytes", "100", "--poll-interval", "0.1", "--grace-period", "3"],
            *["--max-line-bytes", "50"],
            *["--term-grace", "4", "--progress", "bar", "--log-interval", "2"],
        ]
    )
    assert cfg.base_urls == ("http://a/v1", "http://b:1")
    assert (cfg.output, cfg.errors, cfg.work_dir) == ("o.jsonl", "e.jsonl", "w")
    assert cfg.endpoint == "/v1/embeddings"
    assert (cfg.concurrency, cfg.adaptive, cfg.max_concurrency) == (8, True, 99)
    assert (cfg.max_attempts, cfg.request_timeout) == (2, 1.5)
    assert cfg.deadline == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (cfg.shard, cfg.shards, cfg.finalize) == (1, 4, False)  # shards never finalize
    assert cfg.api_key == "k"
    assert (cfg.commit_every, cfg.commit_interval) == (10, 0.5)
    assert (cfg.limits.max_lines, cfg.limits.max_bytes, cfg.limits.max_line_bytes) == (7, 100, 50)
    assert (cfg.poll_interval, cfg.grace_period, cfg.term_grace) == (0.1, 3, 4)
    assert (cfg.progress, cfg.log_interval) == (ProgressMode.BAR, 2)


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBATCH_API_KEY", "secret")
    assert parse_run_args(["in.jsonl", "--base-url", "http://a"]).api_key == "secret"


@pytest.mark.parametrize(
    "argv",
    [
        ["in.jsonl"],  # no server
        ["in.jsonl", "--base-url", "ftp://x"],
        ["in.jsonl", "--base-url", "http://a", "--shard", "2/2"],
        ["in.jsonl", "--base-url", "http://a", "--shard", "x"],
        ["in.jsonl", "--base-url", "http://a", "--deadline", "tomorrow"],
        ["in.jsonl", "--base-url", "http://a", "--deadline", "2030-01-01T00:00:00"],  # no zone
        ["in.jsonl", "--base-url", "http://a", "--concurrency", "0"],
        ["in.jsonl", "--base-url", "http://a", "--request-timeout", "-1"],
        ["in.jsonl", "--base-url", "http://a", "--polite", "--adaptive"],
        ["in.jsonl", "--base-url", "http://a", "--polite-metrics-url", "metrics"],
        ["in.jsonl", "--base-url", "http://a", "--polite-server-kind", "nginx"],
        ["in.jsonl", "--base-url", "http://a", "--polite-queue-threshold", "-1"],
        ["in.jsonl", "--base-url", "http://a", "--polite-scrape-interval", "0"],
        # One full metrics URL cannot stand for several servers' own loads.
        [
            *["in.jsonl", "--base-url", "http://a", "--base-url", "http://b", "--polite"],
            *["--polite-metrics-url", "http://a/metrics"],
        ],
    ],
)
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_run_args(argv)


def test_polite_options() -> None:
    cfg = parse_run_args(["in.jsonl", "--base-url", "http://a/v1", "--polite"])
    assert (cfg.polite, cfg.adaptive, cfg.elastic) == (True, False, True)
    assert cfg.polite_metrics_url == "/metrics"
    assert cfg.polite_server_kind is ServerKind.AUTO and cfg.polite_queue_threshold is None
    cfg = parse_run_args(
        [
            *["in.jsonl", "--base-url", "http://a/v1", "--polite", "--polite-server-kind"],
            *["latency", "--polite-metrics-url", "https://m:9/x?y=1"],
        ]
    )
    assert cfg.polite_server_kind is ServerKind.LATENCY
    assert cfg.polite_metrics_url == "https://m:9/x?y=1"


@pytest.mark.parametrize(
    ("base", "location", "url"),
    [
        ("http://h:8000/v1", "/metrics", "http://h:8000/metrics"),
        ("http://h:8000/v1/", "/metrics", "http://h:8000/metrics"),
        ("http://h:8000", "/metrics", "http://h:8000/metrics"),
        ("https://gw/llama/v1", "/metrics", "https://gw/llama/metrics"),
        ("http://h:8000/v1", "http://h:9090/metrics", "http://h:9090/metrics"),
    ],
)
def test_metrics_url_next_to_v1(base: str, location: str, url: str) -> None:
    assert metrics_url_for(base, location) == url


def test_routing_table_file(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text('{"models": {"a": "http://x/v1"}}')
    cfg = parse_run_args(["in.jsonl", "--models", str(tmp_path / "m.json")])
    assert cfg.routing is not None and cfg.routing.urls_for("a") == ["http://x/v1"]
    (tmp_path / "bad.json").write_text('{"models": {"a": []}}')
    with pytest.raises(SystemExit, match="routing table"):
        parse_run_args(["in.jsonl", "--models", str(tmp_path / "bad.json")])


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_and_log_lines_elsewhere() -> None:
    tty = _Tty()
    view = ProgressView(ProgressMode.AUTO, 10, tty)
    assert view.mode is ProgressMode.BAR and view.interval == 0.5
    view.update(Snapshot(total=200, completed=50, failed=2, in_flight=8, window=8))
    assert "\r" in tty.getvalue() and "ok 50 failed 2" in tty.getvalue()
    view.message("done")
    assert tty.getvalue().endswith("\nopenbatch: done\n")  # the bar line is ended first

    pipe = io.StringIO()
    view = ProgressView(ProgressMode.AUTO, 7, pipe)
    assert view.mode is ProgressMode.LOG and view.interval == 7
    view.update(Snapshot(total=10, completed=5, failed=0, in_flight=1, window=4))
    assert pipe.getvalue().startswith("openbatch: progress 5/10 (50.0%) completed=5 failed=0")


def test_bar_rendering() -> None:
    line = render_bar(Snapshot(total=1000, completed=400, failed=100, in_flight=3, window=9), 50)
    assert line.startswith("[############............]  50.0% 500/1,000")
    assert "50 req/s" in line and "ETA 0:10" in line and "in flight 3/9" in line
    assert format_duration(3725) == "1:02:05"


def _every_field_changed() -> RunnerArgs:
    """A RunnerArgs whose every field differs from its default."""
    return RunnerArgs(
        input="s3://b/in.jsonl",
        output="s3://b/out.jsonl",
        errors="s3://b/err.jsonl",
        work_dir="s3://b/work",
        endpoint="/v1/embeddings",
        base_urls=("http://a:1/v1", "http://b:2"),
        models="/etc/models.json",
        concurrency=3,
        adaptive=True,
        max_concurrency=99,
        max_attempts=7,
        request_timeout=2.5,
        deadline=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        shard=2,
        shards=5,
        commit_every=11,
        commit_interval=0.25,
        max_lines=12,
        max_bytes=13,
        max_line_bytes=14,
        poll_interval=0.5,
        grace_period=0,
        term_grace=1.5,
        progress=ProgressMode.LOG,
        log_interval=3,
        no_finalize=True,
        retry_base_delay=0.01,
        retry_max_delay=0.02,
        max_retry_after=4.5,
        max_retry_wait=60,
        outage_timeout=30,
        http_client=HttpClientKind.AIOHTTP,
        polite=True,
        polite_metrics_url="http://m:9/stats",
        polite_server_kind=ServerKind.SGLANG,
        polite_queue_threshold=2.5,
        polite_scrape_interval=0.25,
    )


def test_runner_args_round_trip_through_argv() -> None:
    """What the operator and the local backend write is exactly what the runner reads."""
    args = _every_field_changed()
    defaults = RunnerArgs(input="")
    unchanged = [
        f.name
        for f in dataclasses.fields(args)
        if getattr(args, f.name) == getattr(defaults, f.name)
    ]
    # api_key never travels in argv; shard_from_job_index is the Job's placeholder form.
    assert unchanged == ["shard_from_job_index", "api_key"]
    argv = args.to_argv()
    assert argv[0] == "run"
    assert parse_run_argv(argv[1:]) == args
    assert parse_run_argv(RunnerArgs(input="x").to_argv()[1:]) == RunnerArgs(input="x")


def test_runner_args_never_put_the_api_key_in_argv() -> None:
    args = RunnerArgs(input="in.jsonl", api_key="sk-secret")
    assert "sk-secret" not in " ".join(args.to_argv())


def test_indexed_job_shard_placeholder() -> None:
    argv = RunnerArgs(input="in", shards=4, shard_from_job_index=True).to_argv()
    assert argv[-2:] == ["--shard", f"{JOB_INDEX_PLACEHOLDER}/4"]
    expanded = [a.replace(JOB_INDEX_PLACEHOLDER, "3") for a in argv]
    parsed = parse_run_argv(expanded[1:])
    assert (parsed.shard, parsed.shards) == (3, 4)


def test_finalize_args_round_trip() -> None:
    args = FinalizeArgs(work_dir="w", output="o", errors="e", shards=3)
    argv = args.to_argv()
    assert argv[0] == "finalize" and parse_finalize_argv(argv[1:]) == args


def test_exit_codes_say_whether_a_retry_helps() -> None:
    assert [c for c in ExitCode if c.retryable] == [
        ExitCode.INFRASTRUCTURE,
        ExitCode.INTERRUPTED,
        ExitCode.KEYBOARD,
    ]
    assert int(ExitCode.INVALID_INPUT) == 3


@pytest.mark.parametrize(
    "parser", [build_run_parser(), build_finalize_parser()], ids=["run", "finalize"]
)
def test_every_option_has_help_text(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue  # hidden on purpose (benchmark switches)
        assert action.help and action.help.strip(), f"{action.option_strings or action.dest}"
