"""fast_quant: the CPU dequantize+GEMM path for nn.QuantizedLinear against MLX's own kernel."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from tiny_model import tiny_model_dir  # noqa: F401

from mlx_rsg.accel import fast_quant


def _layer(n_in: int, n_out: int, bits: int, group: int, bias: bool, seed: int = 0):
    mx.random.seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias)
    if bias:
        lin.bias = mx.random.normal((n_out,))
    q = nn.QuantizedLinear.from_linear(lin, group_size=group, bits=bits)
    q.__class__ = fast_quant.FastQuantizedLinear
    return lin, q


def _mlx_kernel(q: nn.QuantizedLinear, x: mx.array) -> mx.array:
    return nn.QuantizedLinear.__call__(q, x)


def _rounding_bound(q: nn.QuantizedLinear, x: mx.array) -> mx.array:
    """Two float32 sums of K products differ by at most ~2*K*eps*sum|x_i w_i| (both orders'
    worst case); the sums here see the same dequantized weights, so that is all they may differ."""
    w = fast_quant.dequantized_weight(q)
    k = x.shape[-1]
    bound = 2 * k * 2.0**-24 * (mx.abs(x) @ mx.abs(w).T)
    if "bias" in q:
        bound = bound + 2.0**-23 * mx.abs(q["bias"])
    return bound


@pytest.mark.parametrize("bits,group", [(8, 64), (4, 64), (4, 32), (8, 128)])
@pytest.mark.parametrize("bias", [False, True])
def test_fast_path_equals_mlx_quantized_matmul(bits, group, bias):
    _, q = _layer(256, 96, bits, group, bias)
    x = mx.random.normal((3, 16, 256), key=mx.random.key(7))
    fast, ref = q(x), _mlx_kernel(q, x)
    assert fast.shape == ref.shape == (3, 16, 96)
    assert (mx.abs(fast - ref) <= _rounding_bound(q, x)).all().item()
    assert not mx.array_equal(fast, mx.zeros_like(fast)).item()


def test_few_rows_keep_mlx_kernel(monkeypatch):
    """Below MIN_ROWS (single-token decode) the layer calls MLX's kernel: bit-identical."""
    _, q = _layer(128, 64, 4, 64, False)
    calls = []
    monkeypatch.setattr(
        fast_quant, "dequantized_weight", lambda *a, **k: calls.append(1) or 1 / 0
    )
    for rows in range(1, fast_quant.MIN_ROWS):
        x = mx.random.normal((1, rows, 128))
        assert mx.array_equal(q(x), _mlx_kernel(q, x)).item()
    assert not calls
    with pytest.raises(ZeroDivisionError):  # MIN_ROWS rows take the fast path
        q(mx.random.normal((fast_quant.MIN_ROWS, 128)))


def test_gpu_or_other_device_untouched(monkeypatch):
    monkeypatch.setattr(mx, "default_device", lambda: mx.gpu)
    assert not fast_quant._use_fast(mx.zeros((64, 128)))


def test_cache_keeps_one_float_copy_and_follows_weight_changes():
    _, q = _layer(128, 64, 8, 64, True)
    x = mx.random.normal((32, 128))
    y0 = q(x)
    assert fast_quant._CACHE_ATTR not in q.__dict__  # not kept by default
    fast_quant.keep_dequantized(q, True)
    y1 = q(x)
    assert mx.array_equal(y0, y1).item()
    assert q.__dict__[fast_quant._CACHE_ATTR][1].shape == (64, 128)
    assert fast_quant._CACHE_ATTR not in dict(q.items())  # not a parameter: never saved
    _, other = _layer(128, 64, 8, 64, True, seed=1)
    q.update(other.parameters())  # new weights must not reuse the stale dequantized copy
    assert (mx.abs(q(x) - _mlx_kernel(q, x)) <= _rounding_bound(q, x)).all().item()
    q(x)
    q.scales = q.scales * 1.5  # learned scales (quant/distill.py), the codes unchanged
    q.biases = q.biases - 0.01
    assert (mx.abs(q(x) - _mlx_kernel(q, x)) <= _rounding_bound(q, x)).all().item()


@pytest.mark.parametrize("bits,limit", [(8, 0.01), (4, 0.15)])
def test_fast_layer_within_quantization_error_of_fp32(bits, limit):
    """Relative error vs the float32 Linear: the weight's relative rounding error (~0.4% at 8
    bits, ~7% at 4 bits for Gaussian weights, group 64), as E|dW x|^2 = |dW|_F^2 for random x."""
    lin, q = _layer(512, 256, bits, 64, True)
    x = mx.random.normal((64, 512))
    w = lin.weight
    rel_w = (mx.linalg.norm(fast_quant.dequantized_weight(q) - w) / mx.linalg.norm(w)).item()
    y, yq = lin(x) - lin.bias, q(x) - q["bias"]
    rel_y = (mx.linalg.norm(yq - y) / mx.linalg.norm(y)).item()
    assert rel_w < limit
    assert 0.5 * rel_w < rel_y < 2 * rel_w


def test_whole_model_fast_equals_kernel(tiny_model_dir, tmp_path):  # noqa: F811
    from mlx_rsg.accel import fastpaths
    from mlx_rsg.model.backbone import hidden_states, load_backbone
    from mlx_rsg.quant.quantize import quantize

    out = quantize(tiny_model_dir, tmp_path / "q4", bits=4, group_size=32, log=print)
    bb = load_backbone(out)  # MLX_RSG_FAST_PATHS=all in the tests (conftest)
    layers = [m for m in bb.model.modules() if isinstance(m, nn.QuantizedLinear)]
    assert layers and all(type(m) is fast_quant.FastQuantizedLinear for m in layers)
    tokens = mx.random.randint(0, 400, (2, 20), key=mx.random.key(3))
    fast = hidden_states(bb, tokens)
    fastpaths.apply(bb.model, bb.config, use={"quant": False})
    assert all(type(m) is nn.QuantizedLinear for m in layers)
    ref = hidden_states(bb, tokens)
    rel = (mx.linalg.norm(fast - ref, axis=-1) / mx.linalg.norm(ref, axis=-1)).max().item()
    assert rel < 1e-4  # float32 summation order only, through two blocks


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("shape", [(96, 256), (5, 128), (1, 384)])
def test_unpack_affine_bit_identical_to_dequantize(bits, group, shape):
    w = 3 * mx.random.normal(shape, key=mx.random.key(bits + group))
    q, s, b = mx.quantize(w, group, bits)
    want = mx.dequantize(q, s, b, group_size=group, bits=bits)
    assert mx.array_equal(fast_quant.unpack_affine(q, s, b, group, bits), want).item()


def test_other_widths_fall_back_to_dequantize():
    _, q = _layer(128, 64, 3, 64, False)  # 3-bit codes straddle bytes: mx.dequantize
    x = mx.random.normal((16, 128))
    assert (mx.abs(q(x) - _mlx_kernel(q, x)) <= _rounding_bound(q, x)).all().item()


def test_row_chunks_share_one_dequantized_weight(tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    from mlx_rsg.accel.cpu_parallel import row_parallel
    from mlx_rsg.model.backbone import hidden_states, load_backbone
    from mlx_rsg.quant.quantize import quantize

    bb = load_backbone(quantize(tiny_model_dir, tmp_path / "q8", bits=8, group_size=32))
    n_linear = sum(isinstance(m, nn.QuantizedLinear) for m in bb.model.modules())
    tokens = mx.random.randint(0, 400, (4, 20), key=mx.random.key(4))
    want = hidden_states(bb, tokens)
    calls = []
    real = fast_quant.unpack_affine
    monkeypatch.setattr(fast_quant, "unpack_affine", lambda *a: calls.append(1) or real(*a))
    got = row_parallel(lambda t: hidden_states(bb, t), tokens, parts=2)
    assert len(calls) == n_linear  # once per layer, not once per chunk
    assert mx.allclose(got, want, rtol=1e-4, atol=1e-4).item()
    row_parallel(lambda t: hidden_states(bb, t), tokens, parts=2)
    assert len(calls) == 2 * n_linear  # nothing outlives the call
