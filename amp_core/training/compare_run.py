"""One run of a CLI comparison: `python -m amp_core.training.compare_run <amp_core.train flags>`.

The modules a run imports lazily (W&B, which AmpWandbCallback loads at its first log even with W&B
off; Lightning's loggers; the callbacks) are imported here first, as the app's warm worker does before
it takes a job (amp_core.serve.worker). A cold `python -m amp_core.train` would import them during the run:
some 18 MiB of RSS inside the window amp_core.training.memory measures, and seconds inside the first steps.
Then amp_core.train's own CLI trains and records the run, with its exit codes (2: settings refused).
"""

from __future__ import annotations

import sys


def warm_imports() -> None:
    import pytorch_lightning  # noqa: F401
    import torch  # noqa: F401

    import amp_core.training.callbacks  # noqa: F401
    import amp_core.training.model  # noqa: F401
    import amp_core.training.record_logger  # noqa: F401

    try:
        import wandb  # noqa: F401
        from pytorch_lightning.loggers import WandbLogger  # noqa: F401
    except Exception:
        pass  # the run then trains without W&B and says so in its status


def main(argv: list[str] | None = None) -> int:
    warm_imports()
    from amp_core.training.cli import main as train_main

    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
