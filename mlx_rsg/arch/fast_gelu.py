"""Gemma's tanh-GELU for the CPU: a rational tanh instead of MLX's scalar `tanh`.

Why: on the CPU, MLX's transcendental ops are scalar, so `gelu_approx(gate) * up` took about as
long as all of a Gemma layer's matmuls. Here tanh is x * P(x^2) / Q(x^2) on [-7.905, 7.905] (the
coefficients of Eigen's float `ptanh`; max error 4e-7 against `mx.tanh`), and GELU times the up
projection is one compiled kernel, outputs within 4e-6 of mlx-lm's. Timings: docs/benchmarks.md
(`mlx-rsg info`, Benchmarks).

It is ordinary MLX arithmetic, so gradients flow through it (training uses it too). A bfloat16
or float16 model's GELU runs it too, in float32 between its half-precision projections. On a
GPU mlx-lm's own MLP runs unchanged. `FastMLP` is mlx-lm's Gemma 3 MLP
with this kernel; `mlx_rsg.accel.fastpaths` gives it to our models' MLPs where it measures faster,
and no other model in the process is touched.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import gemma3_text

# tanh(x) ~= x * P(x^2) / Q(x^2), |x| <= _CLAMP (beyond it tanh is +-1 in float32).
_CLAMP = 7.90531110763549805
_P = (
    4.89352455891786e-03,
    6.37261928875436e-04,
    1.48572235717979e-05,
    5.12229709037114e-08,
    -8.60467152213735e-11,
    2.00018790482477e-13,
    -2.76076847742355e-16,
)
_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
_SQRT_2_OVER_PI = 0.7978845608028654


def tanh(x: mx.array) -> mx.array:
    x = mx.clip(x, -_CLAMP, _CLAMP)
    x2 = x * x
    p = _P[-1]
    for c in reversed(_P[:-1]):
        p = p * x2 + c
    q = _Q[-1]
    for c in reversed(_Q[:-1]):
        q = q * x2 + c
    return x * p / q


@mx.compile
def _gelu_mul(gate: mx.array, up: mx.array) -> mx.array:
    inner = _SQRT_2_OVER_PI * (gate + 0.044715 * gate * gate * gate)
    return 0.5 * gate * (1.0 + tanh(inner)) * up


@mx.compile
def _gelu_mul_vjp(gate: mx.array, up: mx.array, cotangent: mx.array):
    g2 = gate * gate
    t = tanh(_SQRT_2_OVER_PI * (gate + 0.044715 * g2 * gate))
    gelu = 0.5 * gate * (1.0 + t)
    dgelu = 0.5 * (1.0 + t) + 0.5 * gate * (1.0 - t * t) * _SQRT_2_OVER_PI * (
        1.0 + 3 * 0.044715 * g2
    )
    return cotangent * up * dgelu, cotangent * gelu


@mx.custom_function
def gelu_mul(gate: mx.array, up: mx.array) -> mx.array:
    """gelu_approx(gate) * up in one fused kernel, forward and backward. The backward is written
    out because differentiating the compiled forward gave ~40 unfused element-wise passes
    (docs/benchmarks.md: a trained layer's step)."""
    return _gelu_mul(gate, up)


@gelu_mul.vjp
def _gelu_mul_grad(primals, cotangent, output):
    return _gelu_mul_vjp(*primals, cotangent)


def _use_fast(x: mx.array) -> bool:
    return x.dtype in (mx.float32, mx.bfloat16, mx.float16) and mx.default_device() == mx.cpu


def stock_gelu_mul(gate: mx.array, up: mx.array) -> mx.array:
    """What mlx-lm's Gemma 3 MLP computes between its projections."""
    return nn.gelu_approx(gate) * up


class FastMLP(gemma3_text.MLP):
    """mlx-lm's Gemma 3 MLP with `gelu_mul` on the CPU, in float32: a half-precision model's
    too (its projections' outputs up-cast, the product rounded back), as MLX's CPU half-precision
    element-wise kernels are slower than this float32 one (~3x in a bfloat16 MLP)."""

    def __call__(self, x: mx.array) -> mx.array:
        if not _use_fast(x):
            return super().__call__(x)
        gate, up = self.gate_proj(x), self.up_proj(x)
        h = gelu_mul(gate.astype(mx.float32), up.astype(mx.float32))
        return self.down_proj(h.astype(x.dtype))
