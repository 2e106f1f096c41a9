"""JSON library choice for the runner (part of B1): the four JSON steps one request costs.

Per line the runner parses the input line, serialises the body, parses the server's reply
and serialises the output line. This times exactly those steps with realistic payloads for
the stdlib `json` and for `orjson`, in CPU-µs per request (process time, one core).

    python bench/json_micro.py [--n 200000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import orjson

LINE = json.dumps(
    {
        "custom_id": "req-12345",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "llama-3-8b",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Summarise the plot of Hamlet in two sentences."},
            ],
            "max_tokens": 128,
        },
    }
).encode()
REPLY = json.dumps(
    {
        "id": "chatcmpl-0653fd833ab60000000002",
        "object": "chat.completion",
        "created": 1795323335,
        "model": "llama-3-8b",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Prince Hamlet avenges " * 8},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 31,
            "completion_tokens": 64,
            "total_tokens": 95,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }
).encode()


def steps(loads: Callable[[bytes], Any], dumps: Callable[[Any], bytes]) -> None:
    line = loads(LINE)
    dumps(line["body"])
    body = loads(REPLY)
    dumps(
        {
            "id": "batch_req_0123456789abcdef0123456789abcdef",
            "custom_id": line["custom_id"],
            "response": {"status_code": 200, "request_id": "req_1", "body": body},
            "error": None,
        }
    )


def per_request_us(loads: Callable[[bytes], Any], dumps: Callable[[Any], bytes], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        steps(loads, dumps)
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    n = parser.parse_args().n

    def std_dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    std = per_request_us(json.loads, std_dumps, n)
    fast = per_request_us(orjson.loads, orjson.dumps, n)
    print(f"JSON steps per request (parse line, dump body, parse reply, dump output), n={n:,}")
    print(f"stdlib json: {std:6.2f} CPU-µs/request")
    print(f"orjson:      {fast:6.2f} CPU-µs/request   ({std / fast:.1f}x less CPU)")


if __name__ == "__main__":
    main()
