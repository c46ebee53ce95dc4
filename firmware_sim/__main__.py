"""``python -m firmware_sim`` (see :mod:`firmware_sim.cli`)."""

import sys

from firmware_sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
