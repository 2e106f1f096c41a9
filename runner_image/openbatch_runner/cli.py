"""Command line of the runner: `openbatch run` and `openbatch finalize`.

Also the runner image's entrypoint. The flags themselves are the shared contract in
`openbatch.runner_args` (the operator and the shim's local backend write the same argv);
this module turns parsed arguments into a `RunConfig` and runs it. Every option is
documented in `--help` and in docs/runner.md; secrets come from the environment.
"""

import asyncio
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from openbatch.routing import RoutingTable, parse_routing_table
from openbatch.runner_args import (
    API_KEY_ENV,
    ExitCode,
    RunnerArgs,
    api_key_env,
    parse_finalize_argv,
    parse_run_argv,
)
from openbatch.storage import StorageError, open_uri
from openbatch.validation import ValidationLimits
from openbatch_runner.config import RunConfig


def default_output(input_uri: str) -> str:
    stem = input_uri[: -len(".jsonl")] if input_uri.endswith(".jsonl") else input_uri
    return stem + ".output.jsonl"


def default_errors(output_uri: str) -> str:
    stem = output_uri[: -len(".jsonl")] if output_uri.endswith(".jsonl") else output_uri
    if stem.endswith(".output"):
        stem = stem[: -len(".output")]
    return stem + ".errors.jsonl"


def _load_routing(uri: str) -> RoutingTable:
    store, key = open_uri(uri)
    try:
        return parse_routing_table(store.read_bytes(key))
    except (ValueError, StorageError) as exc:
        raise SystemExit(f"openbatch: cannot use routing table {uri}: {exc}") from exc


# File descriptors kept for everything but model-server sockets: storage pools, files, the loop.
FD_RESERVE = 128


def descriptor_window(wanted: int) -> int:
    """The largest in-flight window (one socket each) the descriptor limit allows.

    The soft limit is raised towards the hard one first, as far as `wanted` needs.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    need = wanted + max(FD_RESERVE, wanted // 8)
    if soft != unlimited and soft < need:
        target = need if hard == unlimited else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == unlimited:
        return wanted
    return max(1, min(wanted, soft - max(FD_RESERVE, soft // 8)))


def _windows(args: RunnerArgs) -> tuple[int, int]:
    """`(concurrency, max_concurrency)`, capped by the descriptor limit with a warning:
    past it, connections fail with EMFILE and so would the commits of received answers."""
    concurrency = args.concurrency
    ceiling = max(args.max_concurrency, concurrency)
    elastic = args.adaptive or args.polite
    widest = ceiling if elastic else concurrency
    allowed = descriptor_window(widest)
    if allowed < widest:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        flag = "--max-concurrency" if elastic else "--concurrency"
        sys.stderr.write(
            f"openbatch: warning: {flag} {widest} needs more file descriptors than the limit "
            f"(ulimit -n {soft}) allows; the window is capped at {allowed} (raise the limit "
            f"to use more)\n"
        )
    return min(concurrency, allowed), min(ceiling, allowed)


def _check_location(uri: str) -> None:
    """A URI the runner cannot even open (bad scheme, S3 without settings): exit 2 with one
    line, before any work dir exists."""
    try:
        open_uri(uri)
    except (ValueError, StorageError) as exc:
        raise SystemExit(f"openbatch run: {exc}") from None


def _url_keys(urls: list[str]) -> dict[str, str]:
    """Per-URL keys from the environment (`api_key_env`), for the URLs that have one."""
    keys = {url: os.environ.get(api_key_env(url), "") for url in urls}
    return {url: key for url, key in keys.items() if key}


def config_from_args(args: RunnerArgs) -> RunConfig:
    """Resolve defaults that depend on other options, the routing table and the API key."""
    routing = _load_routing(args.models) if args.models else None
    if routing is None and not args.base_urls:
        raise SystemExit("openbatch run: give --base-url URL (repeatable) or --models FILE")
    if args.adaptive and args.polite:
        raise SystemExit("openbatch run: choose one of --adaptive and --polite")
    if args.polite and not args.polite_metrics_url.startswith("/") and len(args.base_urls) > 1:
        raise SystemExit(
            "openbatch run: a full --polite-metrics-url is one server's; with several "
            "--base-url give a path (such as /metrics) to read each server's own"
        )
    concurrency, max_concurrency = _windows(args)
    output = args.output or default_output(args.input)
    errors = args.errors or default_errors(output)
    work_dir = args.work_dir or output + ".work"
    for uri in (args.input, output, errors, work_dir):
        _check_location(uri)

    routed = [u for m in routing.models for u in routing.urls_for(m) or []] if routing else []
    api_keys = _url_keys([*args.base_urls, *routed])
    if len({api_keys.get(u) for u in args.base_urls}) > 1:
        raise SystemExit("openbatch run: the --base-url servers have different API keys")
    return RunConfig(
        input=args.input,
        output=output,
        errors=errors,
        work_dir=work_dir,
        endpoint=args.endpoint,
        base_urls=args.base_urls,
        routing=routing,
        concurrency=concurrency,
        adaptive=args.adaptive,
        max_concurrency=max_concurrency,
        max_attempts=args.max_attempts,
        request_timeout=args.request_timeout,
        deadline=args.deadline,
        shard=args.shard,
        shards=args.shards,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        api_keys=api_keys,
        commit_every=args.commit_every,
        commit_interval=args.commit_interval,
        limits=ValidationLimits(
            max_lines=args.max_lines,
            max_bytes=args.max_bytes,
            max_line_bytes=args.max_line_bytes,
        ),
        poll_interval=args.poll_interval,
        grace_period=args.grace_period,
        term_grace=args.term_grace,
        progress=args.progress,
        log_interval=args.log_interval,
        finalize=not args.no_finalize and args.shards == 1,
        retry_base_delay=args.retry_base_delay,
        retry_max_delay=args.retry_max_delay,
        max_retry_after=args.max_retry_after,
        max_retry_wait=args.max_retry_wait,
        outage_timeout=args.outage_timeout,
        http_client=args.http_client,
        polite=args.polite,
        polite_metrics_url=args.polite_metrics_url,
        polite_server_kind=args.polite_server_kind,
        polite_queue_threshold=args.polite_queue_threshold,
        polite_scrape_interval=args.polite_scrape_interval,
    )


def parse_run_args(argv: Sequence[str]) -> RunConfig:
    return config_from_args(parse_run_argv(argv))


def run_main(argv: Sequence[str]) -> int:
    try:
        cfg = parse_run_args(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
            return ExitCode.USAGE
        return ExitCode.USAGE if exc.code else ExitCode.DONE
    # Imported here so `--help` stays fast and usage errors never touch the event loop.
    from openbatch_runner.engine import Runner

    async def _main() -> int:
        asyncio.get_running_loop().set_default_executor(_IoThreads(thread_name_prefix=IO_THREADS))
        return await Runner(cfg).run()

    code = _run_async(_main)
    _exit_past_stuck_threads(code)
    return code


IO_THREADS = "openbatch-io"


class _IoThreads(ThreadPoolExecutor):
    """The loop's default executor, where storage calls run. Shutting it down never waits:
    a storage call stuck in its retries must not hold up the exit after SIGTERM."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)


def _exit_past_stuck_threads(code: int, wait: float = 1.0) -> None:
    """Exit now if a storage thread is still busy (the run gave up waiting for it).

    Idle workers end within milliseconds of the executor's shutdown; one that does not is
    inside a storage call that retries for minutes, and the interpreter would join it.
    Nothing it could still do matters: the rerun resumes from the last committed part.
    """
    deadline = time.monotonic() + wait
    for thread in threading.enumerate():
        if thread.name.startswith(IO_THREADS):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)


def _run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop
    except ImportError:  # uvloop is an optional speed-up (Linux/macOS)
        return asyncio.run(main())
    return uvloop.run(main())


def finalize_main(argv: Sequence[str]) -> int:
    try:
        args = parse_finalize_argv(argv)
    except SystemExit as exc:
        return ExitCode.USAGE if exc.code else ExitCode.DONE
    from openbatch_runner.finalize import ShardsNotFinished, finalize
    from openbatch_runner.workdir import ShardCountMismatch, WorkDirMissing

    try:
        result = finalize(args.work_dir, args.shards, args.output, args.errors)
    except ShardsNotFinished as exc:
        sys.stderr.write(f"openbatch finalize: {exc}\n")
        return ExitCode.INFRASTRUCTURE
    except (ShardCountMismatch, WorkDirMissing, ValueError) as exc:
        sys.stderr.write(f"openbatch finalize: error: {exc}\n")
        return ExitCode.USAGE
    except StorageError as exc:
        sys.stderr.write(f"openbatch finalize: storage error: {exc}\n")
        return ExitCode.INFRASTRUCTURE if exc.transient else ExitCode.USAGE
    sys.stdout.write(result.model_dump_json() + "\n")
    return ExitCode.DONE
