"""The last decoder block, computed only at the positions pooling reads.

A classifier reads the final hidden states at a few positions per row (the last real token, or
the tokens of the marked words), yet a decoder's last block computes queries, attention, o_proj
and the MLP at all L positions; only its keys and values need every position. Computing the rest
at the P pooled positions gives the same numbers and skips ~85 % of that block's FLOPs at L = 128,
P = 1: 1/18 of a Gemma-3-270M forward, 1/9 of a step that trains its top 9 blocks.

Written for mlx-lm's Gemma 3 block (the block is short, and re-stating it here is the price of
the saving); any other architecture runs its last block whole (`supports` says which).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np


def supports(layer: nn.Module) -> bool:
    from mlx_lm.models import gemma3_text

    return type(layer) is gemma3_text.TransformerBlock


def pooled_positions(
    lengths: np.ndarray, spans: np.ndarray | None, pooling: str, width: int = 1
) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions, valid), both (B, P): every position a row's pooling weights can be non-zero
    at, in increasing order, padded with the row's first one (valid False) to at least `width`
    (a rank's rows of a batch keep the whole batch's P). None for mean pooling, which reads
    every position."""
    if spans is not None:
        rows = [sorted({p for s, e in row for p in range(s, e)}) for row in spans.tolist()]
    elif pooling == "last":
        rows = [[max(int(n) - 1, 0)] for n in lengths]
    else:
        return None
    width = max(width, *(len(r) for r in rows))
    positions = np.zeros((len(rows), width), np.int32)
    valid = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        positions[i, : len(r)] = r
        positions[i, len(r) :] = r[0] if r else 0
        valid[i, : len(r)] = True
    return positions, valid


def block_at(layer: nn.Module, h: mx.array, positions: mx.array, window: int | None) -> mx.array:
    """Output (B, P, D) of the Gemma 3 block `layer` at `positions` (B, P), given its whole
    input h (B, L, D): what layer(h, causal mask) returns there, without the other positions'
    queries, attention and MLP. `window`: the block's sliding window, or None (full causal)."""
    from mlx_lm.models.gemma3_text import clip_residual

    attn = layer.self_attn
    B, L, _ = h.shape
    P = positions.shape[1]
    x = layer.input_layernorm(h)
    xq = mx.take_along_axis(x, positions[..., None], axis=1)
    q = attn.q_proj(xq).reshape(B * P, 1, attn.n_heads, -1).transpose(0, 2, 1, 3)
    k = attn.k_proj(x).reshape(B, L, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    v = attn.v_proj(x).reshape(B, L, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    q = attn.rope(attn.q_norm(q), offset=positions.reshape(-1))  # one offset per query
    k = attn.rope(attn.k_norm(k))
    q = q.reshape(B, P, attn.n_heads, -1).transpose(0, 2, 1, 3)  # (B, H, P, hd)
    keys = mx.arange(L)[None, None, :]
    query = positions[..., None]
    mask = keys <= query
    if window is not None:
        mask = mask & (keys > query - window)
    out = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask=mask[:, None])
    r = attn.o_proj(out.transpose(0, 2, 1, 3).reshape(B, P, -1))
    hq = mx.take_along_axis(h, positions[..., None], axis=1)
    hq = clip_residual(hq, layer.post_attention_layernorm(r))
    r = layer.mlp(layer.pre_feedforward_layernorm(hq))
    return clip_residual(hq, layer.post_feedforward_layernorm(r))
