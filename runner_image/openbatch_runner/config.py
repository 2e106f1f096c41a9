"""The runner's resolved configuration (built from the command line by `cli`)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from openbatch.routing import RoutingTable
from openbatch.runner_args import (
    DEFAULT_COMMIT_EVERY,
    DEFAULT_COMMIT_INTERVAL,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_IN_FLIGHT,
    DEFAULT_LOG_INTERVAL,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_OUTAGE_TIMEOUT,
    DEFAULT_POLITE_METRICS_PATH,
    DEFAULT_POLITE_SCRAPE_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRY_BASE_DELAY,
    DEFAULT_RETRY_MAX_DELAY,
    DEFAULT_TERM_GRACE,
    HttpClientKind,
    ProgressMode,
    ServerKind,
)
from openbatch.validation import ValidationLimits


@dataclass(frozen=True)
class RunConfig:
    input: str
    output: str
    errors: str
    work_dir: str
    endpoint: str = "/v1/chat/completions"
    base_urls: tuple[str, ...] = ()
    routing: RoutingTable | None = None
    concurrency: int = DEFAULT_IN_FLIGHT
    adaptive: bool = False
    polite: bool = False  # exclusive with adaptive (`cli` refuses both)
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY  # ceiling for --adaptive and --polite
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    deadline: datetime | None = None
    shard: int = 0
    shards: int = 1
    api_key: str | None = None  # the general key (people): every URL, unless api_keys
    # Per-URL keys (programs: `openbatch.runner_args.api_key_env`). When any is given, a URL
    # gets only its own key, or none; the general key is never used.
    api_keys: Mapping[str, str] = field(default_factory=dict)
    commit_every: int = DEFAULT_COMMIT_EVERY
    commit_interval: float = DEFAULT_COMMIT_INTERVAL
    limits: ValidationLimits = field(default_factory=ValidationLimits)
    poll_interval: float = DEFAULT_POLL_INTERVAL
    grace_period: float = DEFAULT_GRACE_PERIOD
    term_grace: float = DEFAULT_TERM_GRACE
    progress: ProgressMode = ProgressMode.AUTO
    log_interval: float = DEFAULT_LOG_INTERVAL
    finalize: bool = True
    retry_base_delay: float = DEFAULT_RETRY_BASE_DELAY
    retry_max_delay: float = DEFAULT_RETRY_MAX_DELAY
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT
    outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT
    http_client: HttpClientKind = HttpClientKind.RAW  # B1: a third of aiohttp's CPU per request
    polite_metrics_url: str = DEFAULT_POLITE_METRICS_PATH
    polite_server_kind: ServerKind = ServerKind.AUTO
    polite_queue_threshold: float | None = None
    polite_scrape_interval: float = DEFAULT_POLITE_SCRAPE_INTERVAL

    @property
    def elastic(self) -> bool:
        """The window moves (adaptive or polite): `max_concurrency` is its ceiling."""
        return self.adaptive or self.polite

    def key_for(self, urls: Sequence[str]) -> str | None:
        """The bearer token for this run's base URLs (one routing entry or the --base-url
        list, which share one key: `cli` and the routing table check that)."""
        if self.api_keys:
            return self.api_keys.get(urls[0]) if urls else None
        return self.api_key
