"""Pooling: which token positions a row's features are read from, and the weighted sum."""

from __future__ import annotations

import mlx.core as mx

from mlx_rsg.errors import UserError


def pooling_weights(batch, pooling: str) -> mx.array:
    """(B, S, L) weights over token positions: S = 1 for last/mean, the marked spans otherwise."""
    L = batch.tokens.shape[1]
    pos = mx.arange(L)[None, None, :]
    if batch.spans is not None:
        start, end = batch.spans[..., :1], batch.spans[..., 1:]  # (B, S, 1)
        w = ((pos >= start) & (pos < end)).astype(mx.float32)
    elif pooling == "mean":
        w = (pos < batch.lengths[:, None, None]).astype(mx.float32)
    elif pooling == "last":
        w = (pos == batch.lengths[:, None, None] - 1).astype(mx.float32)
    else:
        raise UserError(f"--pooling: {pooling!r} is not one of last, mean")
    return w / mx.maximum(w.sum(axis=-1, keepdims=True), 1.0)


def pool(h: mx.array, weights: mx.array) -> mx.array:
    """Weighted sums of h (B, L, D) per row of weights (B, S, L): (B, S, D)."""
    return weights.astype(h.dtype) @ h
