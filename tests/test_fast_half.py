"""The CPU's half-precision Linear: a float32 GEMM on up-cast operands (accel/fast_half.py)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlx_rsg.accel.fast_half import FastHalfLinear


def _layers(dtype, bias: bool):
    mx.random.seed(0)
    stock = nn.Linear(96, 48, bias=bias)
    if bias:  # a non-zero bias, so that its cast is tested too
        stock.bias = mx.random.normal((48,))
    stock.set_dtype(dtype)
    fast = nn.Linear(96, 48, bias=bias)
    fast.update(stock.parameters())
    fast.__class__ = FastHalfLinear
    return stock, fast


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_half_precision_is_a_float32_product_rounded(dtype, bias):
    stock, fast = _layers(dtype, bias)
    x = mx.random.normal((7, 5, 96)).astype(dtype)
    got = fast(x)
    assert got.dtype == dtype
    w = stock.weight.astype(mx.float32)
    want = x.astype(mx.float32) @ w.T + (stock.bias.astype(mx.float32) if bias else 0)
    assert mx.array_equal(got, want.astype(dtype)).item()
    # and MLX's own half-precision GEMM agrees to its rounding
    assert mx.allclose(got.astype(mx.float32), stock(x).astype(mx.float32), rtol=2e-2,
                       atol=2e-2).item()  # fmt: skip


def test_gradients_flow_in_the_layers_dtype():
    stock, fast = _layers(mx.bfloat16, True)
    x = mx.random.normal((8, 96)).astype(mx.bfloat16)

    def loss(model):
        return model(x).astype(mx.float32).square().sum()

    _, got = nn.value_and_grad(fast, loss)(fast)
    _, want = nn.value_and_grad(stock, loss)(stock)
    for k in ("weight", "bias"):
        assert got[k].dtype == mx.bfloat16
        rel = mx.abs(got[k].astype(mx.float32) - want[k].astype(mx.float32)).max()
        assert (rel / mx.abs(want[k].astype(mx.float32)).max()).item() < 2e-2


def test_float32_runs_mlx_s_own_call():
    stock, fast = _layers(mx.float32, True)
    x = mx.random.normal((4, 96))
    assert mx.array_equal(fast(x), stock(x)).item()
