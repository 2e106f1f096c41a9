"""`python -m openbatch_shim`: serve the API with settings from the environment (the image's
entrypoint; `openbatch serve` is the friendlier front for one machine)."""

import logging
import sys

import uvicorn

from openbatch_shim.app import create_app
from openbatch_shim.memory import return_large_buffers_to_os
from openbatch_shim.settings import ShimSettings


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        sys.stdout.write(
            "usage: python -m openbatch_shim\n\nServes OpenBatch's OpenAI-compatible API. "
            "Configured by environment variables OPENBATCH_SHIM_* (see docs/shim.md) and "
            "OPENBATCH_S3_*.\n"
        )
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = ShimSettings()
    return_large_buffers_to_os()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
