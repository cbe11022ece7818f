"""The `user` workload: your own LightningModule, by import path, built in the training process only.

`--model pkg.module:attr`: a LightningModule subclass, or a callable returning an instance.
`--data pkg.module:attr`: a LightningDataModule, a DataLoader, or a callable returning either;
without it the module's own `train_dataloader`. `--path DIR` goes first on sys.path (the current
directory is always on it). Each way this can fail is a `UserModelError`: one line that says what
was found and what is needed, which the CLI prints (exit 2) and a queued run records as its error.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from amp_core.training.config import ConfigError
from amp_core.training.workloads import Built


class UserModelError(ConfigError):
    """The user's model or data could not be imported or built."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def put_on_path(folder: str) -> None:
    """`folder` (if any) first on sys.path, then the current directory (a worker's cwd is the user's)."""
    for entry in [os.getcwd(), *([str(Path(folder).resolve())] if folder else [])]:
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)


def resolve(spec: str, what: str) -> Any:
    """The object that `pkg.module:attr` names; raises UserModelError."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise UserModelError(
                f"{what} {spec!r}: no module named {e.name!r} (on sys.path: the current directory and --path)"
            ) from None
        raise UserModelError(f"{what} {spec!r}: importing {module_name!r} failed: {_first_line(e)}") from None
    except (
        Exception,
        SystemExit,
    ) as e:  # the module's own code raised (a sys.exit() in it must not end the run silently)
        raise UserModelError(f"{what} {spec!r}: importing {module_name!r} raised {_first_line(e)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserModelError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _a(obj: Any) -> str:
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _call(factory: Any, spec: str, what: str) -> Any:
    try:
        return factory()
    except Exception as e:
        raise UserModelError(f"{what} {spec!r}: calling it raised {_first_line(e)}") from None


def load_module(spec: str) -> Any:
    """A LightningModule instance from `spec`; raises UserModelError."""
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.model_helpers import is_overridden

    obj = resolve(spec, "model")
    if not isinstance(obj, pl.LightningModule):
        if isinstance(obj, type) and not issubclass(obj, pl.LightningModule):
            raise UserModelError(f"model {spec!r} is the class {obj.__name__}, not a LightningModule subclass")
        if not callable(obj):
            raise UserModelError(
                f"model {spec!r} is {_a(obj)}, not a LightningModule subclass or a callable returning one"
            )
        obj = _call(obj, spec, "model")
        if not isinstance(obj, pl.LightningModule):
            raise UserModelError(f"model {spec!r} gave {_a(obj)}, not a LightningModule")
    if not obj.automatic_optimization:
        raise UserModelError(
            f"model {spec!r} uses manual optimization (automatic_optimization = False): the loss-scale monitor follows "
            "Lightning's automatic optimization, where the precision plugin steps the GradScaler; use automatic optimization"
        )
    if not is_overridden("configure_optimizers", obj):
        raise UserModelError(f"model {spec!r} has no configure_optimizers: Lightning needs it to train")
    return obj


def load_data(spec: str, module: Any, model_spec: str) -> Any:
    """A DataLoader or LightningDataModule from `spec`, or None to use the module's own train_dataloader."""
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.model_helpers import is_overridden
    from torch.utils.data import DataLoader

    kinds = (pl.LightningDataModule, DataLoader)
    if not spec:
        if not is_overridden("train_dataloader", module):
            raise UserModelError(
                f"no data: model {model_spec!r} has no train_dataloader, and no --data pkg.module:attr was given (a LightningDataModule, a DataLoader or a callable returning one)"
            )
        return None
    obj = resolve(spec, "data")
    if (
        isinstance(obj, type)
        and issubclass(obj, pl.LightningDataModule)
        or not isinstance(obj, kinds)
        and callable(obj)
    ):
        obj = _call(obj, spec, "data")
    if not isinstance(obj, kinds):
        raise UserModelError(f"no data: {spec!r} gave {_a(obj)}, not a LightningDataModule or a DataLoader")
    return obj


def build(config: Any) -> Built:
    if config.path and not Path(config.path).is_dir():
        raise UserModelError(f"path {config.path!r} is not a folder")
    put_on_path(config.path)
    module = load_module(config.model)
    data = load_data(config.data, module, config.model)
    flops = None
    if callable(getattr(module, "matmul_flops_per_step", None)):  # the same hook the built-in models offer
        try:
            flops = int(module.matmul_flops_per_step(config.batch_size))
        except Exception:
            flops = None
    cls = type(module)
    return Built(
        module,
        data,
        flops,
        {
            "model_class": f"{cls.__module__}.{cls.__qualname__}",
            "data_source": config.data or "the model's train_dataloader",
        },
    )
