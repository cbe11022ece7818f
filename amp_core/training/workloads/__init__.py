"""What a run trains: a small registry of workloads.

Each workload has a name, a one-line description, and a builder (imported only when a run starts,
in the training process) that turns a validated RunConfig into a `Built`: the LightningModule, its
data, its matmul FLOPs per step (Compare's TFLOP/s) and notes for config.json. Its own settings
(with their bounds) are the RunConfig fields whose rule names it: `amp_core.training.config.workload_settings`.

    mlp   the demo MLP on Gaussian clusters (records without a workload are mlp runs)
    gpt   a nanoGPT-shaped character-level transformer on the Python standard library's own source
    user  your own LightningModule, by import path (`--model pkg.module:attr`)

Standard library only at import: the Streamlit server imports this for names, descriptions and the
user-model switch, and must never import torch, Lightning or the user's code.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

DEFAULT_WORKLOAD = "mlp"
ALLOW_USER_MODELS_ENV = "AMP_ALLOW_USER_MODELS"
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z", re.ASCII)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    builder: str  # "module:function", the function taking a RunConfig and returning a Built
    defaults: Mapping[str, Any] = field(default_factory=dict)  # shared settings with another default for this workload

    def build(self, config: Any) -> Built:
        module, _, function = self.builder.partition(":")
        return getattr(import_module(module), function)(config)


@dataclass
class Built:
    module: Any  # a LightningModule
    data: Any  # a DataLoader or a LightningDataModule, or None: the module's own train_dataloader
    matmul_flops_per_step: int | None = None
    notes: dict = field(default_factory=dict)  # recorded in config.json


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "mlp",
            "a small MLP classifying Gaussian clusters (synthetic, instant)",
            "amp_core.training.workloads.mlp:build",
        ),
        Workload(
            "gpt",
            "a nanoGPT-shaped character-level transformer on the Python standard library's source",
            "amp_core.training.workloads.gpt:build",
            {"batch_size": 16},
        ),
        Workload(
            "user", "your own LightningModule, imported from pkg.module:attr", "amp_core.training.workloads.user:build"
        ),
    )
}


def workload_of(config: Mapping[str, Any]) -> str:
    """The workload a run record's config names; records from before workloads are mlp runs."""
    name = config.get("workload")
    return name if isinstance(name, str) and name else DEFAULT_WORKLOAD


def valid_import_path(text: str) -> bool:
    """`pkg.module:attr` with Python identifiers (checked without importing anything)."""
    return isinstance(text, str) and bool(_IMPORT_PATH.match(text))


def user_models_allowed(server_address: str | None, env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Whether the app may offer "your own model", and why (a sentence for the page).

    An import path typed in the browser runs that module's code in the worker, so anyone who can
    reach the app could run code on this machine. Served on a loopback address only this machine's
    users can; on any other address (Streamlit's empty default means every interface) the field
    is off unless AMP_ALLOW_USER_MODELS=1 says the operator wants it.
    """
    env = os.environ if env is None else env
    if env.get(ALLOW_USER_MODELS_ENV) == "1":
        return (
            True,
            f"{ALLOW_USER_MODELS_ENV}=1 is set: anyone who can reach this app can run code here through a model path",
        )
    host = (server_address or "").strip().strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return True, f"the app serves on {host} only: the imported code runs on this machine, for its own users"
    where = f"on {host}" if host else "on every network interface"
    return False, (
        f"off: the app serves {where}, and a model path runs that module's code on this machine; "
        f"serve on 127.0.0.1, or set {ALLOW_USER_MODELS_ENV}=1 to allow it"
    )
