"""`python -m openbatch_operator`: run the operator (kopf) with OpenBatch's handlers.

Environment: `OPENBATCH_OPERATOR_*` (see settings.py), `OPENBATCH_S3_*` for reading
progress records, `OPENBATCH_OPERATOR_NAMESPACES` (comma-separated; empty = cluster-wide),
`OPENBATCH_OPERATOR_LIVENESS` (default `http://0.0.0.0:8080/healthz`).
One replica: peering is off (`standalone`), so the Deployment uses the Recreate strategy.
"""

import asyncio
import os

import kopf


def main() -> None:
    from openbatch_operator import handlers  # noqa: F401  # registers the handlers

    namespaces = [
        ns.strip() for ns in os.environ.get("OPENBATCH_OPERATOR_NAMESPACES", "").split(",")
    ]
    namespaces = [ns for ns in namespaces if ns]
    liveness = os.environ.get("OPENBATCH_OPERATOR_LIVENESS", "http://0.0.0.0:8080/healthz")
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness or None,
        )
    )


if __name__ == "__main__":
    main()
