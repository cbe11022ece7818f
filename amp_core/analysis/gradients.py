"""What a gradient histogram says about fp16: how much would underflow, with and without the loss scale.

fp16 represents magnitudes down to 2**-24 (subnormals; normal numbers start at 2**-14) and up to
65504. A gradient value below 2**-24 becomes zero in fp16. Multiplying the loss by the scale S
multiplies every gradient by S in backward, which lifts small values into range; too large an S
pushes large values past 65504 (inf), and the GradScaler skips that step.

The histograms are of the parameters' (fp32) gradients after unscaling; they stand in for the fp16
activation gradients that flow through backward, which is where underflow really happens.
"""

from __future__ import annotations

import math

import numpy as np

FP16_MIN_SUBNORMAL_LOG2 = -24
FP16_MIN_NORMAL_LOG2 = -14
FP16_MAX = 65504.0


def shares(hist: dict, loss_scale: float | None) -> dict[str, float]:
    """Shares of a histogram's gradient values that fall outside fp16's range, unscaled and scaled by `loss_scale`.

    `hist` is one line of histograms.jsonl: counts[k] holds |g| in [2**(log2_lo + k), 2**(log2_lo + k + 1)),
    zeros are counted in counts[0] too. A bin that straddles a limit is split in proportion (log-uniform).
    """
    counts = np.asarray(hist["counts"], dtype=np.float64)
    lo = hist["log2_lo"]
    zeros, nonfinite = hist.get("zeros", 0), hist.get("nonfinite", 0)
    counts[0] = max(0.0, counts[0] - zeros)
    total = counts.sum() + zeros + nonfinite
    if total == 0:
        return {
            "values": 0,
            "zero": 0.0,
            "underflow_unscaled": 0.0,
            "underflow_scaled": 0.0,
            "overflow_scaled": 0.0,
            "subnormal_scaled": 0.0,
        }
    edges = lo + np.arange(len(counts) + 1, dtype=np.float64)
    shift = math.log2(loss_scale) if loss_scale and loss_scale > 0 else 0.0

    def below(limit_log2: float, shift: float) -> float:
        """Count of values whose log2(|g|) + shift < limit."""
        frac = np.clip(limit_log2 - shift - edges[:-1], 0.0, 1.0)
        return float((counts * frac).sum())

    overflow_log2 = math.log2(FP16_MAX)
    return {
        "values": int(total),
        "zero": float(zeros / total),
        "underflow_unscaled": below(FP16_MIN_SUBNORMAL_LOG2, 0.0) / total,
        "underflow_scaled": below(FP16_MIN_SUBNORMAL_LOG2, shift) / total,
        "subnormal_scaled": (below(FP16_MIN_NORMAL_LOG2, shift) - below(FP16_MIN_SUBNORMAL_LOG2, shift)) / total,
        "overflow_scaled": float(counts.sum() - below(overflow_log2, shift)) / total,
    }


def scale_at(steps: np.ndarray, scales: np.ndarray, step: int) -> float | None:
    """The loss scale a run used at `step` (None without a scaler)."""
    if len(steps) == 0:
        return None
    i = int(np.clip(np.searchsorted(steps, step), 0, len(steps) - 1))
    value = scales[i]
    return None if np.isnan(value) else float(value)
