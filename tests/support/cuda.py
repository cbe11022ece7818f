"""CUDA test helpers (the tests that use them skip without a GPU)."""

import functools


def sync_checked(fn):
    """Run `fn` with torch.cuda's sync debug mode at "error": any host synchronisation in it raises."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        import torch

        torch.cuda.set_sync_debug_mode("error")
        try:
            return fn(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    return wrapped
