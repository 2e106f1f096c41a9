"""Typed operator errors and the one place that maps them to kopf's retry semantics."""

import kopf


class OperatorError(Exception):
    """Base: `retryable` says whether trying again later can help."""

    retryable = True
    delay = 5.0


class StorageUnavailable(OperatorError):
    """Object storage did not answer (progress records, cancel marker)."""


class KubernetesUnavailable(OperatorError):
    """The API server refused or failed a call we need."""


class InvalidResource(OperatorError):
    """The BatchJob cannot be parsed (a manifest that bypassed the CRD schema)."""

    retryable = False


def to_kopf(exc: OperatorError) -> kopf.TemporaryError | kopf.PermanentError:
    if exc.retryable:
        return kopf.TemporaryError(str(exc), delay=exc.delay)
    return kopf.PermanentError(str(exc))
