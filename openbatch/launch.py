"""What a batch's runner is told: `RunnerArgs` and `FinalizeArgs` built from its spec.

Both backends start runners from these (the operator as Job container args, the local
backend as subprocess argv), so a batch runs the same way on a cluster and on a laptop. Only
where the runner finds its model server differs, and that is the caller's `target`.
"""

from dataclasses import dataclass
from datetime import datetime

from openbatch.locations import BatchLocations
from openbatch.resource import BatchJob
from openbatch.runner_args import (
    DEFAULT_COMMIT_INTERVAL,
    DEFAULT_GRACE_PERIOD,
    FinalizeArgs,
    ProgressMode,
    RunnerArgs,
    WindowMode,
)


@dataclass(frozen=True)
class ModelTarget:
    """Where the runner sends requests: fixed base URLs, or a routing-table file by model."""

    base_urls: tuple[str, ...] = ()
    routing_file: str | None = None

    def __post_init__(self) -> None:
        if bool(self.base_urls) == (self.routing_file is not None):
            raise ValueError("a model target is either base URLs or a routing-table file")


def shard_share(max_in_flight: int, shards: int) -> int:
    """Requests in flight per shard so that all shards together stay within the batch's
    ceiling: `maxInFlight // parallelism` (at least 1; the CRD and `tenancy.preflight`
    refuse a parallelism above maxInFlight). Every pod of an Indexed Job has the same args,
    so the remainder is left unused rather than given to some shards."""
    return max(1, max_in_flight // max(1, shards))


def runner_args_for(
    job: BatchJob,
    where: BatchLocations,
    target: ModelTarget,
    *,
    deadline: datetime,
    shard: int = 0,
    shard_from_job_index: bool = False,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    max_in_flight: int | None = None,
) -> RunnerArgs:
    """The runner command of one shard of `job` (every shard when `shard_from_job_index`).

    `max_in_flight` is the batch's ceiling when the tenancy clamps it
    (`openbatch.tenancy.effective_max_in_flight`); by default the spec's."""
    spec = job.spec
    concurrency = spec.concurrency
    ceiling = concurrency.max_in_flight if max_in_flight is None else max_in_flight
    share = shard_share(ceiling, spec.parallelism)
    mode = concurrency.window_mode
    return RunnerArgs(
        input=where.input_uri,
        output=where.output_uri,
        errors=where.error_uri,
        work_dir=where.work_uri,
        endpoint=spec.endpoint.value,
        base_urls=target.base_urls,
        models=target.routing_file,
        concurrency=share,
        adaptive=mode is WindowMode.ADAPTIVE,
        polite=mode is WindowMode.POLITE,
        # An adaptive or polite window grows up to the shard's share of the ceiling, never
        # past it (deadline pressure included).
        max_concurrency=share,
        max_attempts=concurrency.max_attempts,
        request_timeout=float(concurrency.request_timeout_seconds),
        deadline=deadline,
        shard=shard,
        shards=spec.parallelism,
        shard_from_job_index=shard_from_job_index and spec.parallelism > 1,
        grace_period=grace_period,
        commit_interval=commit_interval,
        progress=ProgressMode.LOG,
    )


def finalize_args_for(job: BatchJob, where: BatchLocations) -> FinalizeArgs:
    return FinalizeArgs(
        work_dir=where.work_uri,
        output=where.output_uri,
        errors=where.error_uri,
        shards=job.spec.parallelism,
    )
