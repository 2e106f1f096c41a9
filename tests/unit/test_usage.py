from typing import Any

import pytest

from openbatch.usage import add_usage, from_batch_usage, to_batch_usage, usage_of


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "total_tokens": 15,
                    "prompt_tokens_details": {"cached_tokens": 4},
                    "completion_tokens_details": {"reasoning_tokens": 2},
                }
            },
            (10, 4, 5, 2, 15),
        ),
        ({"usage": {"prompt_tokens": 7, "total_tokens": 7}}, (7, 0, 0, 0, 7)),  # embeddings
        (
            {
                "usage": {
                    "input_tokens": 3,
                    "output_tokens": 9,
                    "total_tokens": 12,
                    "input_tokens_details": {"cached_tokens": 1},
                    "output_tokens_details": {"reasoning_tokens": 6},
                }
            },
            (3, 1, 9, 6, 12),
        ),  # responses
        ({"usage": {"prompt_tokens": 2, "completion_tokens": 3}}, (2, 0, 3, 0, 5)),
        ({"usage": None}, (0, 0, 0, 0, 0)),
        ({"usage": {"prompt_tokens": "x", "completion_tokens": True}}, (0, 0, 0, 0, 0)),
        ([], (0, 0, 0, 0, 0)),
        ({}, (0, 0, 0, 0, 0)),
    ],
)
def test_usage_of(body: Any, expected: tuple[int, ...]) -> None:
    assert usage_of(body) == expected


def test_usage_round_trip_and_sum() -> None:
    u = add_usage((1, 2, 3, 4, 5), (10, 20, 30, 40, 50))
    assert u == (11, 22, 33, 44, 55)
    assert from_batch_usage(to_batch_usage(u)) == u
