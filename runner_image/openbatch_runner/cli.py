"""Command line of the runner: `openbatch run` and `openbatch finalize`.

Also the runner image's entrypoint. The flags themselves are the shared contract in
`openbatch.runner_args` (the operator and the shim's local backend write the same argv);
this module turns parsed arguments into a `RunConfig` and runs it. Every option is
documented in `--help` and in docs/runner.md; secrets come from the environment.
"""

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
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


def _url_keys(urls: list[str]) -> dict[str, str]:
    """Per-URL keys from the environment (`api_key_env`), for the URLs that have one."""
    keys = {url: os.environ.get(api_key_env(url), "") for url in urls}
    return {url: key for url, key in keys.items() if key}


def config_from_args(args: RunnerArgs) -> RunConfig:
    """Resolve defaults that depend on other options, the routing table and the API key."""
    routing = _load_routing(args.models) if args.models else None
    if routing is None and not args.base_urls:
        raise SystemExit("openbatch run: give --base-url URL (repeatable) or --models FILE")
    output = args.output or default_output(args.input)
    routed = [u for m in routing.models for u in routing.urls_for(m) or []] if routing else []
    api_keys = _url_keys([*args.base_urls, *routed])
    if len({api_keys.get(u) for u in args.base_urls}) > 1:
        raise SystemExit("openbatch run: the --base-url servers have different API keys")
    return RunConfig(
        input=args.input,
        output=output,
        errors=args.errors or default_errors(output),
        work_dir=args.work_dir or output + ".work",
        endpoint=args.endpoint,
        base_urls=args.base_urls,
        routing=routing,
        concurrency=args.concurrency,
        adaptive=args.adaptive,
        max_concurrency=max(args.max_concurrency, args.concurrency),
        max_attempts=args.max_attempts,
        request_timeout=args.request_timeout,
        deadline=args.deadline,
        shard=args.shard,
        shards=args.shards,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        api_keys=api_keys,
        commit_every=args.commit_every,
        commit_interval=args.commit_interval,
        limits=ValidationLimits(max_lines=args.max_lines, max_bytes=args.max_bytes),
        poll_interval=args.poll_interval,
        grace_period=args.grace_period,
        term_grace=args.term_grace,
        progress=args.progress,
        log_interval=args.log_interval,
        finalize=not args.no_finalize and args.shards == 1,
        retry_base_delay=args.retry_base_delay,
        retry_max_delay=args.retry_max_delay,
        http_client=args.http_client,
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
        return await Runner(cfg).run()

    return _run_async(_main)


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

    try:
        result = finalize(args.work_dir, args.shards, args.output, args.errors)
    except ShardsNotFinished as exc:
        sys.stderr.write(f"openbatch finalize: {exc}\n")
        return ExitCode.INFRASTRUCTURE
    except StorageError as exc:
        sys.stderr.write(f"openbatch finalize: storage error: {exc}\n")
        return ExitCode.INFRASTRUCTURE if exc.transient else ExitCode.USAGE
    sys.stdout.write(result.model_dump_json() + "\n")
    return ExitCode.DONE
