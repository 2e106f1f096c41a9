"""`spec.concurrency.mode` (with the older `adaptive` flag) reaches the runner's argv."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from openbatch.launch import ModelTarget, runner_args_for
from openbatch.locations import locations_of
from openbatch.resource import BatchJob, Concurrency
from openbatch.runner_args import WindowMode, parse_run_argv

NOW = datetime(2026, 11, 1, 12, 5, tzinfo=UTC)


def job(**concurrency: Any) -> BatchJob:
    return BatchJob.model_validate(
        {
            "metadata": {"name": "b1", "namespace": "team-a", "uid": "u1"},
            "spec": {
                "input": {"s3": {"bucket": "team-a", "key": "openbatch/in.jsonl"}},
                "endpoint": "/v1/chat/completions",
                "concurrency": concurrency,
                "parallelism": 4,
            },
        }
    )


@pytest.mark.parametrize(
    ("concurrency", "mode", "adaptive", "polite"),
    [
        ({}, WindowMode.FIXED, False, False),
        ({"adaptive": True}, WindowMode.ADAPTIVE, True, False),
        ({"mode": "fixed"}, WindowMode.FIXED, False, False),
        ({"mode": "adaptive"}, WindowMode.ADAPTIVE, True, False),
        ({"mode": "polite"}, WindowMode.POLITE, False, True),
        # When both are given, mode wins over the older flag.
        ({"mode": "polite", "adaptive": True}, WindowMode.POLITE, False, True),
        ({"mode": "fixed", "adaptive": True}, WindowMode.FIXED, False, False),
    ],
)
def test_mode_and_its_precedence_reach_the_runner(
    concurrency: dict[str, Any], mode: WindowMode, adaptive: bool, polite: bool
) -> None:
    j = job(maxInFlight=64, **concurrency)
    assert j.spec.concurrency.window_mode is mode
    where = locations_of(j, "s3://team-a/openbatch")
    args = runner_args_for(j, where, ModelTarget(routing_file="/r.json"), deadline=NOW)
    parsed = parse_run_argv(args.to_argv()[1:])
    assert (parsed.adaptive, parsed.polite) == (adaptive, polite)
    # The shard's share of maxInFlight is the ceiling, deadline pressure included.
    assert parsed.concurrency == parsed.max_concurrency == 16
    assert parsed.deadline == NOW.replace(second=0)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValidationError):
        Concurrency.model_validate({"mode": "greedy"})
