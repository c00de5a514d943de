"""Dynamic loss scaling: what makes `train --dtype float16` learn.

float16 keeps 5 exponent bits: a backward value under ~6e-8 flushes to zero and one under ~6e-5
loses precision, and many of a small model's activation gradients sit there. So the loss is
multiplied by a scale before the backward and the summed gradients are divided by it before the
optimizer step (the masters and the optimizer are float32: `model/precision.py`). A step whose
gradients are not all finite (the scale overflowed float16's 65,504 somewhere) is skipped and the
scale halved; after `GROWTH_INTERVAL` finite steps in a row it doubles — the rule of PyTorch's
GradScaler, with its start and interval. float32 and bfloat16 (float32's exponent range) need
none: their scale is 1 and no step is skipped. The scale and its counters live in the
checkpoint's `Position`, so `--resume` continues them exactly.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

INITIAL_SCALE = 2.0**16
GROWTH_INTERVAL = 2000


def dynamic(dtype: str) -> bool:
    """Whether a run computing in `dtype` scales its loss: float16 only."""
    return dtype == "float16"


def initial_scale(dtype: str) -> float:
    """The scale a run starts with."""
    return INITIAL_SCALE if dynamic(dtype) else 1.0


def all_finite(grads: Any) -> bool:
    """Whether every gradient value is finite (one reduction over the whole tree)."""
    flags = [mx.isfinite(g).all() for _, g in tree_flatten(grads)]
    return bool(mx.all(mx.stack(flags)).item()) if flags else True


def update_scale(position: Any, grads: Any) -> bool:
    """Whether the step may apply `grads` (summed at `position.loss_scale`); halves the scale on
    an overflow, doubles it after GROWTH_INTERVAL finite steps in a row."""
    if all_finite(grads):
        position.finite_steps += 1
        if position.finite_steps == GROWTH_INTERVAL:
            position.loss_scale *= 2
            position.finite_steps = 0
        return True
    position.loss_scale /= 2
    position.finite_steps = 0
    position.skipped_steps += 1
    return False
