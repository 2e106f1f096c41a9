"""OpenAI-style identifiers (`batch_…`, `file-…`, `batch_req_…`)."""

import os
import re
import secrets
import string

_ALNUM = string.ascii_letters + string.digits


def new_batch_id() -> str:
    return "batch_" + os.urandom(16).hex()


def new_file_id() -> str:
    return "file-" + "".join(secrets.choice(_ALNUM) for _ in range(22))


def new_request_line_id() -> str:
    """The `id` of one output/error line."""
    return "batch_req_" + os.urandom(16).hex()


def new_request_id() -> str:
    """A `request_id` for a response whose server sent no `x-request-id`."""
    return "req_" + os.urandom(16).hex()


_DNS_UNSAFE = re.compile(r"[^a-z0-9-]")


def resource_name(batch_id: str) -> str:
    """DNS-1123-safe Kubernetes name for a batch id (`batch_ab12` -> `batch-ab12`)."""
    return _DNS_UNSAFE.sub("-", batch_id.lower()).strip("-")[:63]
