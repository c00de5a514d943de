"""AdamW with separate learning rates for the new heads and the backbone, its schedule, and the
update compiled into one graph."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_rsg.model.precision import masters, trained_weights
from mlx_rsg.train.config import TrainConfig


def lr_schedule(peak: float, warmup: int, total: int):
    """Linear warmup from 0 to `peak` over `warmup` steps, then linear decay to 0 at `total`
    (transformers' get_linear_schedule_with_warmup, which the reference used)."""

    decay = optim.linear_schedule(peak, 0.0, max(total - warmup, 1))
    if warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, peak, warmup), decay], [warmup])


def is_head_param(path: str) -> bool:
    return path.startswith("heads.")


def make_optimizer(cfg: TrainConfig, total_steps: int):
    """AdamW with two parameter groups: heads at head_lr, everything else trainable at lr."""

    def adamw(peak):
        return optim.AdamW(
            learning_rate=lr_schedule(peak, cfg.warmup, total_steps),
            weight_decay=cfg.weight_decay,
            bias_correction=True,  # as torch.optim.AdamW
        )

    return optim.MultiOptimizer(
        [adamw(cfg.head_lr), adamw(cfg.lr)], [lambda p, _: is_head_param(p)]
    )


def compiled_update(model, optimizer) -> Callable[[Any, int], None]:
    """update(grads, k): `optimizer.update(model, grads / k)` as one compiled graph.

    Uncompiled, AdamW is a dozen element-wise kernels per parameter, each a full pass over every
    trained weight on one core; compiled they fuse into one pass (docs/benchmarks.md). Build it
    after any state is restored
    (the compiled graph holds on to the optimizer's state containers).

    A model computing in half precision (`model/precision.py`) is stepped through its float32
    masters: the gradients in float32, AdamW's state in float32, the model's weights the
    masters rounded.
    """
    kept = masters(model).arrays
    optimizer.init(tree_unflatten(list(trained_weights(model).items())))
    state = [model.state, optimizer.state, kept]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(grads, k):
        if not kept:
            optimizer.update(model, tree_map(lambda g: g / k, grads))
            return
        dtypes = {p: v.dtype for p, v in tree_flatten(model.trainable_parameters())}
        params = tree_unflatten(list(trained_weights(model).items()))
        grads = tree_map(lambda g: g.astype(mx.float32) / k, grads)
        new = tree_flatten(optimizer.apply_gradients(grads, params))
        kept.update({p: v for p, v in new if p in kept})
        model.update(tree_unflatten([(p, v.astype(dtypes[p])) for p, v in new]))

    return lambda grads, k: step(grads, mx.array(k, dtype=mx.float32))
