"""Token usage read from model-server responses, summed into OpenAI's `BatchUsage`.

Chat/completions/embeddings report `prompt_tokens`/`completion_tokens`; the Responses API
reports `input_tokens`/`output_tokens`. Both map onto the batch's input/output totals.
"""

from typing import Any

from openbatch.wire import BatchUsage, InputTokensDetails, OutputTokensDetails

# (input, cached, output, reasoning, total) — a plain tuple keeps the hot path cheap.
UsageTuple = tuple[int, int, int, int, int]
ZERO_USAGE: UsageTuple = (0, 0, 0, 0, 0)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _detail(usage: dict[str, Any], key: str, field: str) -> int:
    details = usage.get(key)
    return _int(details.get(field)) if isinstance(details, dict) else 0


def usage_of(body: Any) -> UsageTuple:
    """Extract token counts from one response body; absent or malformed usage counts zero."""
    if not isinstance(body, dict):
        return ZERO_USAGE
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return ZERO_USAGE
    if "input_tokens" in usage or "output_tokens" in usage:
        inp = _int(usage.get("input_tokens"))
        out = _int(usage.get("output_tokens"))
        cached = _detail(usage, "input_tokens_details", "cached_tokens")
        reasoning = _detail(usage, "output_tokens_details", "reasoning_tokens")
    else:
        inp = _int(usage.get("prompt_tokens"))
        out = _int(usage.get("completion_tokens"))
        cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
        reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens")
    total = _int(usage.get("total_tokens")) or inp + out
    return (inp, cached, out, reasoning, total)


def add_usage(a: UsageTuple, b: UsageTuple) -> UsageTuple:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4])


def to_batch_usage(u: UsageTuple) -> BatchUsage:
    return BatchUsage(
        input_tokens=u[0],
        input_tokens_details=InputTokensDetails(cached_tokens=u[1]),
        output_tokens=u[2],
        output_tokens_details=OutputTokensDetails(reasoning_tokens=u[3]),
        total_tokens=u[4],
    )


def from_batch_usage(u: BatchUsage) -> UsageTuple:
    return (
        u.input_tokens,
        u.input_tokens_details.cached_tokens,
        u.output_tokens,
        u.output_tokens_details.reasoning_tokens,
        u.total_tokens,
    )
