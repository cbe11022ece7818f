"""The GradScaler's contract, checked step by step against what a run recorded."""

from __future__ import annotations

import numpy as np


def check_scaler_rules(scale, skipped, tracker, init_scale, growth_interval, growth=2.0, backoff=0.5) -> None:
    """`scale` is the scale each step ran at, `tracker` the growth tracker after that step's update().
    Raises AssertionError on the first step that breaks the contract: a skipped step backs off and
    resets the tracker; `growth_interval` clean steps in a row grow the scale and reset it."""
    scale = np.asarray(scale, dtype=np.float64)
    n = len(scale)
    assert n > 1
    assert scale[0] == init_scale
    k = np.log2(scale / init_scale)
    assert np.all(k == np.round(k)), f"a scale that is not init_scale * 2**k: {scale[k != np.round(k)]}"
    run = 0  # consecutive clean steps so far
    for i in range(n):
        if skipped[i]:
            run = 0
            assert tracker[i] == 0, f"step {i}: skipped but growth tracker {tracker[i]}"
            expected_next = scale[i] * backoff
        else:
            run += 1
            if run == growth_interval:
                run = 0
                expected_next = scale[i] * growth
            else:
                expected_next = scale[i]
            assert tracker[i] == run, f"step {i}: growth tracker {tracker[i]}, expected {run}"
        if i + 1 < n:
            assert scale[i + 1] == expected_next, (
                f"step {i + 1}: scale {scale[i + 1]}, expected {expected_next} (step {i} skipped={skipped[i]})"
            )
