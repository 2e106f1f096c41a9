"""The runner's resolved configuration (built from the command line by `cli`)."""

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from openbatch.routing import RoutingTable
from openbatch.validation import ValidationLimits
from openbatch_runner.client import ClientKind


class ProgressMode(StrEnum):
    AUTO = "auto"  # a bar on a terminal, log lines otherwise
    BAR = "bar"
    LOG = "log"
    NONE = "none"


@dataclass(frozen=True)
class RunConfig:
    input: str
    output: str
    errors: str
    work_dir: str
    endpoint: str = "/v1/chat/completions"
    base_urls: tuple[str, ...] = ()
    routing: RoutingTable | None = None
    concurrency: int = 64
    adaptive: bool = False
    max_concurrency: int = 1024  # ceiling for --adaptive
    max_attempts: int = 5
    request_timeout: float = 600.0
    deadline: datetime | None = None
    shard: int = 0
    shards: int = 1
    api_key: str | None = None
    commit_every: int = 1000
    commit_interval: float = 5.0
    limits: ValidationLimits = field(default_factory=ValidationLimits)
    poll_interval: float = 2.0
    grace_period: float = 30.0  # in-flight requests may finish this long after cancel/expiry
    term_grace: float = 20.0  # ... and after SIGTERM (Kubernetes gives 30 s by default)
    progress: ProgressMode = ProgressMode.AUTO
    log_interval: float = 10.0
    finalize: bool = True
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    http_client: ClientKind = ClientKind.RAW  # B1: a third of aiohttp's CPU per request


class ExitCode:
    """Process exit codes; the operator maps them to Job pod-failure policy."""

    DONE = 0  # completed, cancelled or expired: the work is over (lines may have failed)
    INFRASTRUCTURE = 1  # storage gave up, unexpected error: a retry may help
    USAGE = 2  # bad options, missing input, work dir of another input: a retry cannot help
    INVALID_INPUT = 3  # the input failed validation; errors were printed and stored
    INTERRUPTED = 75  # SIGTERM: committed what was done; rerun to resume (EX_TEMPFAIL)
    KEYBOARD = 130  # SIGINT: like SIGTERM, from a terminal
