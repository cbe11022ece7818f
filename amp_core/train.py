"""`python -m amp_core.train`: one short training run from the command line (see amp_core.training.cli)."""

import sys

from amp_core.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
