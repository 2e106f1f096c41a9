"""Command line of the runner: `openbatch run` and `openbatch finalize`.

Also the runner image's entrypoint. Every option is documented in `--help` and in
docs/runner.md; environment variables cover secrets so they stay out of `ps`.
"""

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from openbatch.endpoints import Endpoint
from openbatch.routing import RoutingTable, check_base_url, parse_routing_table
from openbatch.storage import StorageError, open_uri
from openbatch.validation import DEFAULT_MAX_BYTES, DEFAULT_MAX_LINES, ValidationLimits
from openbatch_runner.client import ClientKind
from openbatch_runner.config import ExitCode, ProgressMode, RunConfig


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit() or int(n) < 1 or int(k) >= int(n):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {text!r}")
    return int(k), int(n)


def _deadline(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from exc
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"deadline needs a time zone (e.g. Z): {text!r}")
    return value.astimezone(UTC)


def _base_url(text: str) -> str:
    try:
        return check_base_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def default_output(input_uri: str) -> str:
    stem = input_uri[: -len(".jsonl")] if input_uri.endswith(".jsonl") else input_uri
    return stem + ".output.jsonl"


def default_errors(output_uri: str) -> str:
    stem = output_uri[: -len(".jsonl")] if output_uri.endswith(".jsonl") else output_uri
    if stem.endswith(".output"):
        stem = stem[: -len(".output")]
    return stem + ".errors.jsonl"


def build_run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openbatch run",
        description=(
            "Process an OpenAI batch input file (JSONL) against OpenAI-compatible model servers. "
            "INPUT and every output may be a local path or s3://bucket/key (S3 endpoint and "
            "credentials from OPENBATCH_S3_ENDPOINT, OPENBATCH_S3_ACCESS_KEY, "
            "OPENBATCH_S3_SECRET_KEY). Rerunning the same command with the same work dir resumes."
        ),
    )
    p.add_argument(
        "input", metavar="INPUT", help="batch input file (local path or s3://bucket/key)"
    )
    p.add_argument(
        "--base-url",
        action="append",
        type=_base_url,
        default=[],
        help="model server base URL, e.g. http://vllm:8000/v1; repeat to spread requests "
        "across several servers",
    )
    p.add_argument(
        "--models",
        metavar="FILE",
        help='routing table (JSON {"models": {"<model>": ["<base url>", ...]}}), local or s3://; '
        "used instead of --base-url, and a model missing from it fails validation",
    )
    p.add_argument("--output", help="output file (default: INPUT with .output.jsonl)")
    p.add_argument("--errors", help="error file (default: next to the output, .errors.jsonl)")
    p.add_argument(
        "--work-dir",
        help="where parts and progress are committed (default: OUTPUT.work); the same work dir "
        "resumes",
    )
    p.add_argument(
        "--endpoint",
        default=Endpoint.CHAT_COMPLETIONS.value,
        help="the batch endpoint every line's url must equal (default /v1/chat/completions)",
    )
    p.add_argument("--concurrency", type=_positive_int, default=64, help="requests in flight (64)")
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="grow/shrink the in-flight window (AIMD) on 429/503/latency; --concurrency is "
        "the starting window",
    )
    p.add_argument(
        "--max-concurrency",
        type=_positive_int,
        default=1024,
        help="ceiling of the adaptive window (1024)",
    )
    p.add_argument("--max-attempts", type=_positive_int, default=5, help="tries per request (5)")
    p.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="per-attempt timeout (600)",
    )
    p.add_argument(
        "--deadline",
        type=_deadline,
        metavar="RFC3339",
        help="stop at this time: unrun lines get batch_expired",
    )
    p.add_argument(
        "--shard", type=_shard, default=(0, 1), metavar="K/N", help="process shard K of N"
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("OPENBATCH_API_KEY"),
        help="bearer token sent to the model server (or OPENBATCH_API_KEY)",
    )
    p.add_argument(
        "--commit-every",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="commit a part every N results (1000)",
    )
    p.add_argument(
        "--commit-interval",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="... or every SECONDS, whichever comes first (5); bounds what a crash loses",
    )
    p.add_argument("--max-lines", type=_positive_int, default=DEFAULT_MAX_LINES)
    p.add_argument("--max-bytes", type=_positive_int, default=DEFAULT_MAX_BYTES)
    p.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="how often the cancel marker is checked (2)",
    )
    p.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="in-flight requests may finish this long after cancel or expiry (30)",
    )
    p.add_argument(
        "--term-grace",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="... and after SIGTERM, before committing and exiting 75 (20)",
    )
    p.add_argument(
        "--progress",
        choices=[m.value for m in ProgressMode],
        default=ProgressMode.AUTO.value,
        help="bar on a terminal, log lines otherwise (auto)",
    )
    p.add_argument("--log-interval", type=_positive_float, default=10.0, metavar="SECONDS")
    p.add_argument(
        "--no-finalize",
        action="store_true",
        help="do not join parts at the end (sharded runs never do: use `openbatch finalize`)",
    )
    p.add_argument("--retry-base-delay", type=_positive_float, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--retry-max-delay", type=_positive_float, default=30.0, help=argparse.SUPPRESS)
    p.add_argument(
        "--http-client",
        choices=[k.value for k in ClientKind],
        default=ClientKind.RAW.value,
        help=argparse.SUPPRESS,  # for benchmark B1; the default is the measured winner
    )
    return p


def _load_routing(uri: str) -> RoutingTable:
    store, key = open_uri(uri)
    try:
        return parse_routing_table(store.read_bytes(key))
    except (ValueError, StorageError) as exc:
        raise SystemExit(f"openbatch: cannot use routing table {uri}: {exc}") from exc


def parse_run_args(argv: Sequence[str]) -> RunConfig:
    args = build_run_parser().parse_args(argv)
    routing = _load_routing(args.models) if args.models else None
    if routing is None and not args.base_url:
        raise SystemExit("openbatch run: give --base-url URL (repeatable) or --models FILE")
    output = args.output or default_output(args.input)
    shard, shards = args.shard
    return RunConfig(
        input=args.input,
        output=output,
        errors=args.errors or default_errors(output),
        work_dir=args.work_dir or output + ".work",
        endpoint=args.endpoint,
        base_urls=tuple(args.base_url),
        routing=routing,
        concurrency=args.concurrency,
        adaptive=args.adaptive,
        max_concurrency=max(args.max_concurrency, args.concurrency),
        max_attempts=args.max_attempts,
        request_timeout=args.request_timeout,
        deadline=args.deadline,
        shard=shard,
        shards=shards,
        api_key=args.api_key,
        commit_every=args.commit_every,
        commit_interval=args.commit_interval,
        limits=ValidationLimits(max_lines=args.max_lines, max_bytes=args.max_bytes),
        poll_interval=args.poll_interval,
        grace_period=args.grace_period,
        term_grace=args.term_grace,
        progress=ProgressMode(args.progress),
        log_interval=args.log_interval,
        finalize=not args.no_finalize and shards == 1,
        retry_base_delay=args.retry_base_delay,
        retry_max_delay=args.retry_max_delay,
        http_client=ClientKind(args.http_client),
    )


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


def build_finalize_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openbatch finalize",
        description="Join the committed parts of all shards into the output and error files. "
        "Idempotent: running it again changes nothing.",
    )
    p.add_argument("--work-dir", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--errors", required=True)
    p.add_argument("--shards", type=_positive_int, default=1)
    return p


def finalize_main(argv: Sequence[str]) -> int:
    args = build_finalize_parser().parse_args(argv)
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
