"""Attention for the CPU forward without a KV cache (classification, training): same result as
mlx-lm's `scaled_dot_product_attention` to ~1e-6, faster on the CPUs where it was written.

Why: on the CPU, MLX's fused attention falls back to matmul + softmax, and softmax spends most of
its time in a scalar `exp`. Here the exponential is 2^y built from the float exponent bits and a
degree-7 polynomial for the fraction (compiled into one fused kernel), the query heads that share
a KV head are stacked into one GEMM, and the additive causal mask is built once per length.
Timings: docs/cli.md (`mlx-rsg info`) and docs/benchmarks.md.

With a KV cache (generation), attention sinks, a GPU, or a mask we do not recognise, the call goes
to mlx-lm's own function unchanged. `FastAttention` is mlx-lm's Gemma 3 attention calling
`attention`; `mlx_rsg.accel.fastpaths` gives it to our models where it measures faster (on some
machines it does not: see docs/benchmarks.md), and no other model in the process is touched.
"""

from __future__ import annotations

import functools
import math

import mlx.core as mx
from mlx_lm.models import gemma3_text
from mlx_lm.models.base import scaled_dot_product_attention as stock_attention

LOG2E = 1.4426950408889634
_TAYLOR = tuple(math.log(2) ** k / math.factorial(k) for k in range(8))  # 2^f, f in [0, 1)


def _exp2(y: mx.array) -> mx.array:
    """2^y for y <= 0 in float32: 2^floor(y) exactly from the exponent bits times a polynomial
    for the fraction (relative error < 2e-7 before rounding)."""
    y = mx.maximum(y, -126.0)
    n = mx.floor(y)
    f = y - n
    p = _TAYLOR[7]
    for c in reversed(_TAYLOR[:7]):
        p = p * f + c
    return p * mx.view((n.astype(mx.int32) + 127) << 23, mx.float32)


@mx.compile
def _softmax(s: mx.array) -> mx.array:
    e = _exp2((s - mx.max(s, axis=-1, keepdims=True)) * LOG2E)
    return e / mx.sum(e, axis=-1, keepdims=True)


@mx.custom_function
def softmax(s: mx.array) -> mx.array:
    """Softmax over the last axis, computed in float32."""
    return _softmax(s.astype(mx.float32)).astype(s.dtype)


@softmax.vjp
def _softmax_vjp(primals, cotangent, output):
    p, g = output.astype(mx.float32), cotangent.astype(mx.float32)
    return (p * (g - mx.sum(g * p, axis=-1, keepdims=True))).astype(cotangent.dtype)


@functools.lru_cache(maxsize=64)  # a batch's lengths repeat; a server sees many, so bounded
def causal_mask(q_len: int, k_len: int) -> mx.array:
    """Additive causal mask: query i sees keys up to i + (k_len - q_len)."""
    return mx.triu(mx.full((q_len, k_len), -mx.inf), k=k_len - q_len + 1)


def _additive_mask(mask, q_len: int, k_len: int):
    if mask is None:
        return None
    if isinstance(mask, str):  # "causal"
        return causal_mask(q_len, k_len)
    if mask.dtype == mx.bool_:
        return mx.where(mask, 0.0, -mx.inf)
    return mask


def _fast_path(cache, mask, sinks) -> bool:
    if cache is not None or sinks is not None or mx.default_device() != mx.cpu:
        return False
    if isinstance(mask, str):
        return mask == "causal"
    return mask is None or (isinstance(mask, mx.array) and mask.ndim == 2)


def attention(queries, keys, values, cache=None, scale: float = 1.0, mask=None, sinks=None):
    """Drop-in for mlx_lm.models.base.scaled_dot_product_attention (B, heads, L, head_dim)."""
    if not _fast_path(cache, mask, sinks):
        return stock_attention(
            queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks
        )
    # in float32 whatever the model's dtype: MLX's CPU half-precision GEMMs are ~40x slower
    # than its float32 BLAS ones (accel/fast_half.py), and an additive mask stays exact
    dtype = queries.dtype
    queries, keys, values = (a.astype(mx.float32) for a in (queries, keys, values))
    b, h, q_len, d = queries.shape
    h_kv, k_len = keys.shape[1], keys.shape[2]
    rep = h // h_kv
    # The `rep` query heads of one KV head share its keys: one GEMM over their stacked rows.
    s = (queries * scale).reshape(b, h_kv, rep * q_len, d) @ keys.swapaxes(-1, -2)
    add = _additive_mask(mask, q_len, k_len)
    if add is not None:
        s = (s.reshape(b, h_kv, rep, q_len, k_len) + add).reshape(b, h_kv, rep * q_len, k_len)
    out = softmax(s) @ values
    return out.reshape(b, h, q_len, values.shape[-1]).astype(dtype)


class FastAttention(gemma3_text.Attention):
    """mlx-lm's Gemma 3 attention (same projections, norms and RoPE) calling `attention` when
    there is no KV cache; with one, mlx-lm's own code runs."""

    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        if cache is not None:
            return super().__call__(x, mask, cache)
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = self.rope(self.q_norm(q)), self.rope(self.k_norm(k))
        out = attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))
