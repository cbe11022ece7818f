"""`python -m amp_core.compare`: the same run at several precisions, side by side (see amp_core.analysis.compare)."""

import sys

from amp_core.analysis.compare import main

if __name__ == "__main__":
    sys.exit(main())
