"""`python -m openbatch_sim`: run the simulator (same as `openbatch sim`)."""

import sys

from openbatch_sim.server import main

if __name__ == "__main__":
    sys.exit(main())
