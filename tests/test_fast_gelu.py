"""The CPU GELU against mlx-lm's: tanh error, MLP values and gradients, the model forward."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import gemma3_text
from tiny_model import tiny_model_dir  # noqa: F401

from mlx_rsg.accel import fastpaths
from mlx_rsg.arch import fast_gelu
from mlx_rsg.model.backbone import hidden_states, load_backbone


def test_rational_tanh_matches_tanh_everywhere():
    x = mx.linspace(-30, 30, 600001)
    assert mx.max(mx.abs(fast_gelu.tanh(x) - mx.tanh(x))).item() < 1e-6
    assert fast_gelu.tanh(mx.array([0.0])).item() == 0.0


def test_gelu_mul_values_and_gradients_match_mlx():
    mx.random.seed(0)
    g = mx.random.normal((3, 17, 64)) * 3
    u = mx.random.normal((3, 17, 64))

    def ref(g, u):
        return nn.gelu_approx(g) * u

    assert mx.allclose(fast_gelu.gelu_mul(g, u), ref(g, u), atol=1e-5).item()
    grads = mx.grad(lambda g, u: fast_gelu.gelu_mul(g, u).sum(), argnums=(0, 1))(g, u)
    expected = mx.grad(lambda g, u: ref(g, u).sum(), argnums=(0, 1))(g, u)
    for a, b in zip(grads, expected, strict=True):
        assert mx.allclose(a, b, atol=1e-4).item()


def test_fast_mlp_equals_mlx_lm_mlp(tiny_model_dir):  # noqa: F811
    bb = load_backbone(tiny_model_dir)  # MLX_RSG_FAST_PATHS=all in the tests (conftest)
    assert all(type(layer.mlp) is fast_gelu.FastMLP for layer in bb.layers)
    tokens = mx.array([[2, 17, 45, 99, 3, 250, 7, 8]])
    fast = hidden_states(bb, tokens)
    fastpaths.apply(bb.model, bb.config, use={"gelu": False})
    assert all(type(layer.mlp) is gemma3_text.MLP for layer in bb.layers)
    slow = hidden_states(bb, tokens)
    assert mx.max(mx.abs(fast - slow)).item() < 1e-4
    # bf16: the GELU in float32 on the up-cast projections, rounded; mlx-lm's bf16 MLP agrees
    # to bf16's rounding
    mlp = bb.layers[0].mlp
    mlp.__class__ = fast_gelu.FastMLP
    x = mx.random.normal((1, 4, bb.hidden_size)).astype(mx.bfloat16)
    mlp.set_dtype(mx.bfloat16)
    got = mlp(x)
    gate, up = (p(x).astype(mx.float32) for p in (mlp.gate_proj, mlp.up_proj))
    want = mlp.down_proj((nn.gelu_approx(gate) * up).astype(mx.bfloat16))
    assert got.dtype == mx.bfloat16
    assert mx.allclose(got.astype(mx.float32), want.astype(mx.float32), atol=1e-2).item()
    stock = gemma3_text.MLP.__call__(mlp, x).astype(mx.float32)
    assert mx.allclose(got.astype(mx.float32), stock, rtol=2e-2, atol=2e-2).item()
