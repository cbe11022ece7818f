"""The `mlp` workload: `amp_core.training.model.DemoMLP` on Gaussian clusters, as every run before workloads."""

from __future__ import annotations

from typing import Any

from amp_core.training.workloads import Built


def build(config: Any) -> Built:
    from amp_core.training import model  # looked up at build time, so a test can swap the class

    module = model.DemoMLP(hidden=config.hidden, depth=config.depth, lr=config.lr, fused=config.fused)
    loader = model.synthetic_loader(config.batch_size, batches=min(config.max_steps, 64), seed=config.seed)
    return Built(
        module,
        loader,
        module.matmul_flops_per_step(config.batch_size),
        {"model_class": "amp_core.training.model.DemoMLP"},
    )
