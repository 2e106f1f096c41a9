"""The runner's command line as one typed contract: `RunnerArgs`, `FinalizeArgs`, `ExitCode`.

Three programs start runners: the operator (a Job's container args), the shim's local backend
(a subprocess) and people (`openbatch run`). All of them build a `RunnerArgs` and call
`to_argv()`; the runner's CLI parses the same argv back with `parse_run_argv`, so the flags
exist in one place and a test round-trips every field. Secrets (the model-server key, S3
credentials) never travel in argv: they come from the environment, out of `ps` and pod specs.

Every default of the runner is defined here once; the CRD models, operator settings and
docs refer to these constants.
"""

import argparse
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import IntEnum, StrEnum

from openbatch.endpoints import Endpoint
from openbatch.routing import check_base_url
from openbatch.validation import DEFAULT_MAX_BYTES, DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_LINES

DEFAULT_IN_FLIGHT = 64
DEFAULT_MAX_CONCURRENCY = 1024  # ceiling of the adaptive window
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_REQUEST_TIMEOUT = 600.0
DEFAULT_COMMIT_EVERY = 1000
DEFAULT_COMMIT_INTERVAL = 5.0
DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_GRACE_PERIOD = 30.0  # in-flight requests may finish this long after cancel/expiry
DEFAULT_TERM_GRACE = 20.0  # ... and after SIGTERM (Kubernetes gives 30 s by default)
DEFAULT_LOG_INTERVAL = 10.0
DEFAULT_RETRY_BASE_DELAY = 0.5
DEFAULT_RETRY_MAX_DELAY = 30.0
DEFAULT_MAX_RETRY_AFTER = 120.0  # a server's Retry-After is honoured up to this per attempt
DEFAULT_MAX_RETRY_WAIT = 600.0  # a line's backoff waits add up to at most this
DEFAULT_OUTAGE_TIMEOUT = 300.0  # every model server down this long: commit and exit 1
DEFAULT_POLITE_SCRAPE_INTERVAL = 1.0  # --polite: seconds between scrapes of a server's load
DEFAULT_POLITE_METRICS_PATH = "/metrics"  # --polite: at the root of each model server

# Kubernetes expands $(VAR) in container args from the container's env; the Job controller
# sets JOB_COMPLETION_INDEX for every pod of an Indexed Job.
JOB_INDEX_PLACEHOLDER = "$(JOB_COMPLETION_INDEX)"


# The general model-server key, for people running `openbatch run` by hand: sent to every
# base URL. Programs never set it; they set one variable per base URL (below).
API_KEY_ENV = "OPENBATCH_API_KEY"
_API_KEY_FOR_PREFIX = "OPENBATCH_API_KEY_FOR_"


def api_key_env(base_url: str) -> str:
    """The environment variable holding the bearer token for one base URL.

    The operator fills it from the Secret that belongs to that URL (a routing-table entry's
    `apiKeySecret`, or the spec's `modelServer.apiKeySecretRef`), so a runner holds a key
    only next to the URL it may be sent to. The name is a digest: URLs are not valid
    variable names, and the digest reveals nothing the pod spec does not already show.
    """
    digest = hashlib.sha256(base_url.encode()).hexdigest()[:16].upper()
    return _API_KEY_FOR_PREFIX + digest


class ExitCode(IntEnum):
    """Process exit codes of `openbatch run` / `finalize`; Job policies and the local
    backend decide on them."""

    DONE = 0  # completed, cancelled or expired: the work is over (lines may have failed)
    INFRASTRUCTURE = 1  # storage gave up, unexpected error: a retry may help
    USAGE = 2  # bad options, missing input, work dir of another input: a retry cannot help
    INVALID_INPUT = 3  # the input failed validation; errors were printed and stored
    INTERRUPTED = 75  # SIGTERM: committed what was done; rerun to resume (EX_TEMPFAIL)
    KEYBOARD = 130  # SIGINT: like SIGTERM, from a terminal

    @property
    def retryable(self) -> bool:
        """Whether running the same command again can get further."""
        return self in (ExitCode.INFRASTRUCTURE, ExitCode.INTERRUPTED, ExitCode.KEYBOARD)


FINAL_EXIT_CODES = (ExitCode.USAGE, ExitCode.INVALID_INPUT)  # a Job must not retry these


class ProgressMode(StrEnum):
    AUTO = "auto"  # a bar on a terminal, log lines otherwise
    BAR = "bar"
    LOG = "log"
    NONE = "none"


class HttpClientKind(StrEnum):
    AIOHTTP = "aiohttp"
    RAW = "raw"


class WindowMode(StrEnum):
    """How a runner sizes its in-flight window (`spec.concurrency.mode`, the progress
    record's `window_mode`)."""

    FIXED = "fixed"  # --concurrency, as given
    ADAPTIVE = "adaptive"  # --adaptive: AIMD on 429/503/timeouts and latency
    POLITE = "polite"  # --polite: each server's own load; deadline pressure


class ServerKind(StrEnum):
    """Whose Prometheus metrics `--polite` reads (docs/runner.md, "Polite batches").

    `auto` detects the kind from the metric names a server exposes; `latency` never
    scrapes and judges the server's load by the batch's own latency only.
    """

    AUTO = "auto"
    VLLM = "vllm"
    SGLANG = "sglang"
    LLAMACPP = "llamacpp"
    TGI = "tgi"
    LATENCY = "latency"


@dataclass(frozen=True)
class RunnerArgs:
    """Everything `openbatch run` takes on its command line (secrets excluded).

    `shard_from_job_index` renders `--shard $(JOB_COMPLETION_INDEX)/<shards>` for an Indexed
    Job, whose pods learn their shard only when Kubernetes expands the variable.
    """

    input: str
    output: str | None = None
    errors: str | None = None
    work_dir: str | None = None
    endpoint: str = Endpoint.CHAT_COMPLETIONS.value
    base_urls: tuple[str, ...] = ()
    models: str | None = None
    concurrency: int = DEFAULT_IN_FLIGHT
    adaptive: bool = False
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    deadline: datetime | None = None
    shard: int = 0
    shards: int = 1
    shard_from_job_index: bool = False
    commit_every: int = DEFAULT_COMMIT_EVERY
    commit_interval: float = DEFAULT_COMMIT_INTERVAL
    max_lines: int = DEFAULT_MAX_LINES
    max_bytes: int = DEFAULT_MAX_BYTES
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    poll_interval: float = DEFAULT_POLL_INTERVAL
    grace_period: float = DEFAULT_GRACE_PERIOD
    term_grace: float = DEFAULT_TERM_GRACE
    progress: ProgressMode = ProgressMode.AUTO
    log_interval: float = DEFAULT_LOG_INTERVAL
    no_finalize: bool = False
    retry_base_delay: float = DEFAULT_RETRY_BASE_DELAY
    retry_max_delay: float = DEFAULT_RETRY_MAX_DELAY
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT
    outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT
    http_client: HttpClientKind = HttpClientKind.RAW
    # --polite: size each server's window by its own load (exclusive with --adaptive).
    polite: bool = False
    polite_metrics_url: str = DEFAULT_POLITE_METRICS_PATH  # a path at each server, or a URL
    polite_server_kind: ServerKind = ServerKind.AUTO
    polite_queue_threshold: float | None = None  # None: the server kind's default
    polite_scrape_interval: float = DEFAULT_POLITE_SCRAPE_INTERVAL
    # Accepted on the command line for people; programs pass it as OPENBATCH_API_KEY, and
    # to_argv never writes it.
    api_key: str | None = field(default=None, repr=False)

    def to_argv(self) -> list[str]:
        """`["run", INPUT, --option value, ...]`: every field that differs from its default."""
        argv = ["run", self.input]
        defaults = RunnerArgs(input=self.input)
        for f in fields(self):
            name = f.name
            value = getattr(self, name)
            if name in ("input", "shard", "shards", "shard_from_job_index", "api_key"):
                continue
            if value == getattr(defaults, name):
                continue
            flag = "--" + _FLAG_NAMES.get(name, name.replace("_", "-"))
            if isinstance(value, bool):
                argv.append(flag)
            elif name == "base_urls":
                for url in value:
                    argv += [flag, url]
            elif isinstance(value, datetime):
                argv += [flag, format_deadline(value)]
            else:
                argv += [flag, _text(value)]
        if self.shard_from_job_index:
            argv += ["--shard", f"{JOB_INDEX_PLACEHOLDER}/{self.shards}"]
        elif self.shards != 1:
            argv += ["--shard", f"{self.shard}/{self.shards}"]
        return argv


_FLAG_NAMES = {"base_urls": "base-url"}


def _text(value: object) -> str:
    """Numbers as short as they are exact (`600`, not `600.0`); enums by value."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, StrEnum):
        return value.value
    return str(value)


def format_deadline(value: datetime) -> str:
    """RFC 3339 in UTC, to the second: what `--deadline` takes."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class FinalizeArgs:
    """`openbatch finalize`: join the committed parts of every shard."""

    work_dir: str
    output: str
    errors: str
    shards: int = 1

    def to_argv(self) -> list[str]:
        return [
            "finalize",
            "--work-dir",
            self.work_dir,
            "--shards",
            str(self.shards),
            "--output",
            self.output,
            "--errors",
            self.errors,
        ]


# ----------------------------------------------------------------------------- parsing


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
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


def _metrics_location(text: str) -> str:
    """`--polite-metrics-url`: a path (`/metrics`) at every server's root, or one full URL."""
    if text.startswith("/") and not text.startswith("//") and " " not in text:
        return text
    try:
        return check_base_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected a path such as /metrics or an http(s) URL: {exc}"
        ) from exc


def _base_url(text: str) -> str:
    try:
        return check_base_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_run_parser(prog: str = "openbatch run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
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
        dest="base_urls",
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
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_IN_FLIGHT,
        help=f"requests in flight ({DEFAULT_IN_FLIGHT})",
    )
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="grow/shrink the in-flight window (AIMD) on 429/503/latency; --concurrency is "
        "the starting window",
    )
    p.add_argument(
        "--max-concurrency",
        type=_positive_int,
        default=DEFAULT_MAX_CONCURRENCY,
        help=f"ceiling of the adaptive window ({DEFAULT_MAX_CONCURRENCY})",
    )
    p.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=DEFAULT_MAX_ATTEMPTS,
        help=f"tries per request ({DEFAULT_MAX_ATTEMPTS})",
    )
    p.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=DEFAULT_REQUEST_TIMEOUT,
        metavar="SECONDS",
        help=f"per-attempt timeout ({DEFAULT_REQUEST_TIMEOUT:g})",
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
        help="bearer token sent to the model server (default: $OPENBATCH_API_KEY; prefer the "
        "variable, a command line is visible to other users)",
    )
    p.add_argument(
        "--commit-every",
        type=_positive_int,
        default=DEFAULT_COMMIT_EVERY,
        metavar="N",
        help=f"commit a part every N results ({DEFAULT_COMMIT_EVERY})",
    )
    p.add_argument(
        "--commit-interval",
        type=_positive_float,
        default=DEFAULT_COMMIT_INTERVAL,
        metavar="SECONDS",
        help=f"... or every SECONDS, whichever comes first ({DEFAULT_COMMIT_INTERVAL:g}); "
        "bounds what a crash loses",
    )
    p.add_argument(
        "--max-lines",
        type=_positive_int,
        default=DEFAULT_MAX_LINES,
        metavar="N",
        help=f"validation: at most N requests in the file ({DEFAULT_MAX_LINES})",
    )
    p.add_argument(
        "--max-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_BYTES,
        metavar="N",
        help=f"validation: at most N bytes in the file ({DEFAULT_MAX_BYTES})",
    )
    p.add_argument(
        "--max-line-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_LINE_BYTES,
        metavar="N",
        help=f"validation: at most N bytes per line ({DEFAULT_MAX_LINE_BYTES}, 8 MiB); each "
        "request in flight holds its line in memory",
    )
    p.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=DEFAULT_POLL_INTERVAL,
        metavar="SECONDS",
        help=f"how often the cancel marker is checked ({DEFAULT_POLL_INTERVAL:g})",
    )
    p.add_argument(
        "--grace-period",
        type=_non_negative_float,
        default=DEFAULT_GRACE_PERIOD,
        metavar="SECONDS",
        help="in-flight requests may finish this long after cancel or expiry "
        f"({DEFAULT_GRACE_PERIOD:g})",
    )
    p.add_argument(
        "--term-grace",
        type=_non_negative_float,
        default=DEFAULT_TERM_GRACE,
        metavar="SECONDS",
        help=f"... and after SIGTERM, before committing and exiting 75 ({DEFAULT_TERM_GRACE:g})",
    )
    p.add_argument(
        "--progress",
        type=ProgressMode,
        choices=list(ProgressMode),
        default=ProgressMode.AUTO,
        help="bar on a terminal, log lines otherwise (auto)",
    )
    p.add_argument(
        "--log-interval",
        type=_positive_float,
        default=DEFAULT_LOG_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between progress log lines ({DEFAULT_LOG_INTERVAL:g})",
    )
    p.add_argument(
        "--no-finalize",
        action="store_true",
        help="do not join parts at the end (sharded runs never do: use `openbatch finalize`)",
    )
    p.add_argument(
        "--retry-base-delay",
        type=_positive_float,
        default=DEFAULT_RETRY_BASE_DELAY,
        metavar="SECONDS",
        help=f"backoff before the second attempt, before jitter ({DEFAULT_RETRY_BASE_DELAY:g})",
    )
    p.add_argument(
        "--retry-max-delay",
        type=_positive_float,
        default=DEFAULT_RETRY_MAX_DELAY,
        metavar="SECONDS",
        help=f"cap of the exponential backoff ({DEFAULT_RETRY_MAX_DELAY:g})",
    )
    p.add_argument(
        "--max-retry-after",
        type=_non_negative_float,
        default=DEFAULT_MAX_RETRY_AFTER,
        metavar="SECONDS",
        help="a server's Retry-After (or retry-after-ms) is honoured up to this per attempt "
        f"({DEFAULT_MAX_RETRY_AFTER:g})",
    )
    p.add_argument(
        "--max-retry-wait",
        type=_non_negative_float,
        default=DEFAULT_MAX_RETRY_WAIT,
        metavar="SECONDS",
        help="a line's backoff waits add up to at most this; past it the last answer is "
        f"final ({DEFAULT_MAX_RETRY_WAIT:g})",
    )
    p.add_argument(
        "--outage-timeout",
        type=_positive_float,
        default=DEFAULT_OUTAGE_TIMEOUT,
        metavar="SECONDS",
        help="when no model server has answered for this long, commit and exit 1 so a rerun "
        "resumes later; lines waiting for a server spend no attempts "
        f"({DEFAULT_OUTAGE_TIMEOUT:g})",
    )
    p.add_argument(
        "--polite",
        action="store_true",
        help="fill only the spare capacity of each model server: its window follows the "
        "server's own queue (Prometheus metrics) or, without metrics, the batch's latency; "
        "speeds up only when the deadline would be missed; --max-concurrency is the ceiling "
        "(exclusive with --adaptive; docs/runner.md, Polite batches)",
    )
    p.add_argument(
        "--polite-metrics-url",
        type=_metrics_location,
        default=DEFAULT_POLITE_METRICS_PATH,
        metavar="PATH_OR_URL",
        help="where --polite reads a server's load: a path at each server's root "
        f"({DEFAULT_POLITE_METRICS_PATH}), or a full URL when there is one server",
    )
    p.add_argument(
        "--polite-server-kind",
        type=ServerKind,
        choices=list(ServerKind),
        default=ServerKind.AUTO,
        help="whose metric names to read (auto: detected from the names); latency: never "
        "scrape, judge the load by the batch's own latency",
    )
    p.add_argument(
        "--polite-queue-threshold",
        type=_non_negative_float,
        default=None,
        metavar="N",
        help="waiting requests above which --polite backs off (default: per server kind, "
        "see docs/runner.md)",
    )
    p.add_argument(
        "--polite-scrape-interval",
        type=_positive_float,
        default=DEFAULT_POLITE_SCRAPE_INTERVAL,
        metavar="SECONDS",
        help="seconds between reads of each server's load, and between window decisions "
        f"({DEFAULT_POLITE_SCRAPE_INTERVAL:g})",
    )
    p.add_argument(
        "--http-client",
        type=HttpClientKind,
        choices=list(HttpClientKind),
        default=HttpClientKind.RAW,
        help=argparse.SUPPRESS,  # for benchmark B1; the default is the measured winner
    )
    return p


def parse_run_argv(argv: Sequence[str]) -> RunnerArgs:
    """Parse `openbatch run`'s options (without the `run` word); argparse exits on errors."""
    ns = build_run_parser().parse_args(list(argv))
    shard, shards = ns.shard
    return RunnerArgs(
        input=ns.input,
        output=ns.output,
        errors=ns.errors,
        work_dir=ns.work_dir,
        endpoint=ns.endpoint,
        base_urls=tuple(ns.base_urls),
        models=ns.models,
        concurrency=ns.concurrency,
        adaptive=ns.adaptive,
        max_concurrency=ns.max_concurrency,
        max_attempts=ns.max_attempts,
        request_timeout=ns.request_timeout,
        deadline=ns.deadline,
        shard=shard,
        shards=shards,
        commit_every=ns.commit_every,
        commit_interval=ns.commit_interval,
        max_lines=ns.max_lines,
        max_bytes=ns.max_bytes,
        max_line_bytes=ns.max_line_bytes,
        poll_interval=ns.poll_interval,
        grace_period=ns.grace_period,
        term_grace=ns.term_grace,
        progress=ns.progress,
        log_interval=ns.log_interval,
        no_finalize=ns.no_finalize,
        retry_base_delay=ns.retry_base_delay,
        retry_max_delay=ns.retry_max_delay,
        max_retry_after=ns.max_retry_after,
        max_retry_wait=ns.max_retry_wait,
        outage_timeout=ns.outage_timeout,
        http_client=ns.http_client,
        polite=ns.polite,
        polite_metrics_url=ns.polite_metrics_url,
        polite_server_kind=ns.polite_server_kind,
        polite_queue_threshold=ns.polite_queue_threshold,
        polite_scrape_interval=ns.polite_scrape_interval,
        api_key=ns.api_key,
    )


def build_finalize_parser(prog: str = "openbatch finalize") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Join the committed parts of all shards into the output and error files. "
        "Idempotent: running it again changes nothing.",
    )
    p.add_argument("--work-dir", required=True, help="the work dir the shards committed to")
    p.add_argument("--output", required=True, help="output file (successful requests)")
    p.add_argument("--errors", required=True, help="error file (failed and never-run requests)")
    p.add_argument(
        "--shards", type=_positive_int, default=1, help="how many shards the run had (1)"
    )
    return p


def parse_finalize_argv(argv: Sequence[str]) -> FinalizeArgs:
    ns = build_finalize_parser().parse_args(list(argv))
    return FinalizeArgs(work_dir=ns.work_dir, output=ns.output, errors=ns.errors, shards=ns.shards)
