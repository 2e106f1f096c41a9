"""Cursor pagination as OpenAI does it: `after=<id>` continues after that object.

Pure. Items come sorted; the cursor is an id, so a page boundary never skips or repeats an
object even when many share one `created_at` second (the sort is a total order).
"""

from collections.abc import Callable, Sequence
from typing import TypeVar

from openbatch_shim.errors import BadRequest

T = TypeVar("T")


def page(
    items: Sequence[T], id_of: Callable[[T], str], *, after: str | None, limit: int
) -> tuple[list[T], bool]:
    """The `limit` items after the one whose id is `after`, and whether more follow.

    An `after` that names no listed object is a client error (a stale or foreign cursor); a
    silent empty page would end a client's auto-pagination early without telling it.
    """
    start = 0
    if after is not None:
        for i, item in enumerate(items):
            if id_of(item) == after:
                start = i + 1
                break
        else:
            raise BadRequest(
                f"Invalid 'after': no object with id '{after}' in this list.", param="after"
            )
    chunk = list(items[start : start + limit])
    return chunk, start + limit < len(items)


def check_limit(limit: int, maximum: int) -> int:
    if not 1 <= limit <= maximum:
        raise BadRequest(
            f"Invalid 'limit': {limit}. It must be between 1 and {maximum}. (code: invalid_value)",
            param="limit",
            code="invalid_value",
        )
    return limit
