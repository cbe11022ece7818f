"""The precision plugin of a run, and fp16 on a CPU in one call.

fp16 on a CPU: Lightning would turn '16-mixed' into 'bf16-mixed' there (no scaler), so for fp16 we
always pass the `MixedPrecision` plugin ourselves with a GradScaler of the requested settings
('cpu' or 'cuda'). Autocast then really runs in float16 and the loss scale backs off and grows as
on a GPU, only slower (a CPU without fp16 units emulates it).

    Trainer(accelerator="cpu", plugins=[fp16_mixed()], ...)
"""

from __future__ import annotations

from typing import Any

# torch.amp.GradScaler's own defaults.
SCALER_DEFAULTS = {"init_scale": 2.0**16, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}


def fp16_mixed(device: str = "cpu", **scaler_settings: float) -> Any:
    """Lightning's MixedPrecision('16-mixed') on `device` ('cpu' or 'cuda') with a GradScaler of these
    settings (init_scale, growth_factor, backoff_factor, growth_interval; torch's defaults otherwise)."""
    import torch
    from pytorch_lightning.plugins import MixedPrecision

    unknown = set(scaler_settings) - set(SCALER_DEFAULTS)
    if unknown:
        raise TypeError(f"fp16_mixed: unknown GradScaler settings {sorted(unknown)}; known: {sorted(SCALER_DEFAULTS)}")
    scaler = torch.amp.GradScaler(device, **{**SCALER_DEFAULTS, **scaler_settings})
    return MixedPrecision("16-mixed", device, scaler=scaler)


def build_precision(config: Any, accelerator: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trainer keyword arguments for the precision, and a description of the path taken."""
    if config.precision == "16-mixed":
        device = "cuda" if accelerator == "gpu" else "cpu"
        plugin = fp16_mixed(device, **{name: getattr(config, name) for name in SCALER_DEFAULTS})
        path = (
            "explicit MixedPrecision('16-mixed', 'cpu') with a CPU GradScaler: Lightning alone would fall back to bf16-mixed on CPU"
            if device == "cpu"
            else "MixedPrecision('16-mixed', 'cuda') with a GradScaler of the requested settings"
        )
        return {"plugins": [plugin]}, {"path": path, "autocast_dtype": "float16", "grad_scaler": True}
    dtype = {"bf16-mixed": "bfloat16"}.get(config.precision)
    return {"precision": config.precision}, {
        "path": f"Lightning precision={config.precision!r}",
        "autocast_dtype": dtype,
        "grad_scaler": False,
    }
