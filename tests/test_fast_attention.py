"""The CPU attention path against MLX's own attention: values, gradients, fallbacks."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.base import create_causal_mask

from mlx_rsg.arch.fast_attention import attention, softmax


def reference(q, k, v, scale, mask):
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)


def qkv(b=2, h=4, h_kv=1, q_len=9, k_len=9, d=16, seed=0):
    mx.random.seed(seed)
    return (
        mx.random.normal((b, h, q_len, d)) * 2,
        mx.random.normal((b, h_kv, k_len, d)) * 2,
        mx.random.normal((b, h_kv, k_len, d)),
    )


def test_softmax_matches_and_exact_zero_for_masked():
    s = mx.random.normal((3, 7, 50)) * 20
    assert mx.allclose(softmax(s), mx.softmax(s, axis=-1, precise=True), atol=2e-6).item()
    s = mx.concatenate([s, mx.full((3, 7, 1), -mx.inf)], axis=-1)
    p = softmax(s)
    assert p[..., -1].max().item() < 1e-30
    assert mx.allclose(p.sum(-1), mx.ones((3, 7)), atol=1e-6).item()


@pytest.mark.parametrize("h, h_kv", [(4, 1), (4, 2), (2, 2)])
@pytest.mark.parametrize("mask", [None, "causal", "window"])
def test_attention_matches_mlx(h, h_kv, mask):
    q, k, v = qkv(h=h, h_kv=h_kv)
    if mask == "window":  # what run_layers passes for sliding layers longer than the window
        mask = create_causal_mask(9, window_size=4)
    got = attention(q, k, v, cache=None, scale=0.25, mask=mask)
    want = reference(q, k, v, 0.25, mask)
    assert got.shape == want.shape
    assert mx.allclose(got, want, atol=1e-5).item()


def test_gradients_match_mlx():
    q, k, v = qkv()

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v) * mx.arange(16)).sum()

    ours = mx.grad(loss(lambda q, k, v: attention(q, k, v, scale=0.3, mask="causal")), (0, 1, 2))
    theirs = mx.grad(loss(lambda q, k, v: reference(q, k, v, 0.3, "causal")), (0, 1, 2))
    for a, b in zip(ours(q, k, v), theirs(q, k, v), strict=True):
        assert mx.allclose(a, b, atol=1e-4).item()


def test_falls_back_with_a_cache_or_unknown_mask():
    q, k, v = qkv(b=2)
    mask4d = mx.ones((2, 1, 9, 9), dtype=mx.bool_)  # per-example mask: not the fast path
    assert mx.allclose(
        attention(q, k, v, scale=0.25, mask=mask4d), reference(q, k, v, 0.25, mask4d), atol=1e-6
    ).item()
