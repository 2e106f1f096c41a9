"""`python -m openbatch_runner run|finalize ...` (same as the `openbatch` command)."""

import sys

from openbatch_runner.cli import finalize_main, run_main

USAGE = "usage: python -m openbatch_runner {run,finalize} ...\n"


def main() -> int:
    argv = sys.argv[1:]
    if not argv or argv[0] not in ("run", "finalize"):
        sys.stderr.write(USAGE)
        return 2
    return run_main(argv[1:]) if argv[0] == "run" else finalize_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
