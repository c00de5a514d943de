"""Mixed precision: a classifier computes in its `dtype` (float32, bfloat16 or float16) and
learns in float32.

    backbone, LoRA, adapters  ->  the compute dtype (what runs, and what the prefix cache keeps)
    heads, their inputs, the loss  ->  float32
    trained weights  ->  float32 masters, held beside the model (`masters`): the optimizer and its
        state step them, the model gets each one rounded to its own dtype after every step;
        checkpoints and trainable.safetensors store the masters

Adding Adam's small steps to a bfloat16 weight directly loses most of them to rounding (8 bits of
mantissa: a step under 1/256 of the weight vanishes), which is why every mixed-precision recipe
keeps float32 masters. Rounding a master gives exactly what a run that saved bfloat16 weights
would load, so a run predicts after a reload what it predicted in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

HEADS = "heads."  # the classifier's own heads, always float32


@dataclass
class Masters:
    """Float32 masters of a model's trained weights that compute in half precision, by
    parameter path (empty for a float32 model). Not part of the parameter tree."""

    arrays: dict[str, mx.array] = field(default_factory=dict)


def to_dtype(model: nn.Module, dtype: str) -> None:
    """Cast `model`'s floating parameters outside its heads to `dtype` (those its mlx-lm model
    keeps, `cast_predicate`, stay as they are), keeping the float32 values of the trainable ones
    that change as masters (`masters(model)`)."""
    target = getattr(mx, dtype)
    keep = getattr(model.lm, "cast_predicate", lambda _: True)
    trainable = dict(tree_flatten(model.trainable_parameters()))
    cast, kept = [], masters(model).arrays
    for path, value in tree_flatten(model.parameters()):
        if path.startswith(HEADS) or not mx.issubdtype(value.dtype, mx.floating):
            continue
        if value.dtype == target or (path.startswith("lm.") and not keep(path[3:])):
            continue
        if path in trainable and target != mx.float32:
            kept[path] = value.astype(mx.float32)
        cast.append((path, value.astype(target)))
    model.update(tree_unflatten(cast))


def masters(model: nn.Module) -> Masters:
    """The model's float32 masters (created empty on first use)."""
    found = model.__dict__.get("_masters")
    if found is None:
        found = Masters()
        object.__setattr__(model, "_masters", found)  # outside the parameter tree
    return found


def trained_weights(model: nn.Module) -> dict[str, mx.array]:
    """The trainable weights as a run stores them: float32 masters where the model computes in
    half precision, the model's own arrays elsewhere."""
    flat = dict(tree_flatten(model.trainable_parameters()))
    return {k: masters(model).arrays.get(k, v) for k, v in flat.items()}


def set_weights(model: nn.Module, weights: dict[str, mx.array]) -> None:
    """Load `weights` (by path) into the model, each cast to its parameter's dtype; a weight
    with a float32 master becomes the new master (in float32) as well."""
    params = dict(tree_flatten(model.parameters()))
    kept = masters(model).arrays
    for path, value in weights.items():
        if path in kept:
            kept[path] = value.astype(mx.float32)
    model.load_weights([(k, v.astype(params[k].dtype) if k in params else v)
                        for k, v in weights.items()], strict=False)  # fmt: skip


def numpy_rows(h: mx.array) -> np.ndarray:
    """`h` as numpy in its own dtype: bfloat16, which numpy lacks, as its 16 bits."""
    return np.array(mx.view(h, mx.uint16)) if h.dtype == mx.bfloat16 else np.array(h)


def mx_rows(a: np.ndarray, dtype: mx.Dtype) -> mx.array:
    """The inverse of `numpy_rows` for an array of `dtype`."""
    x = mx.array(a)
    return mx.view(x, mx.bfloat16) if dtype == mx.bfloat16 else x.astype(dtype)


def numpy_dtype(dtype: mx.Dtype) -> np.dtype:
    """What `numpy_rows` gives for an mx array of `dtype`."""
    return np.dtype({mx.bfloat16: np.uint16, mx.float16: np.float16}.get(dtype, np.float32))
