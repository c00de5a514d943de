"""Quantized Linear layers on the CPU: dequantize, then one float32 GEMM, for batched inputs.

Why: MLX's CPU `quantized_matmul` is a slow scalar kernel next to a float32 GEMM through a real
BLAS, so a q8/q4 model classified many times slower than float32 (docs/quantization.md).
Dequantizing costs a fixed time per weight, the GEMM is then as fast as float32, so from MIN_ROWS
rows on (a batch, a prompt, any classification input) we
dequantize per call; below it (single-token decode) MLX's own kernel stays. On Metal nothing
changes: MLX's quantized kernels are fast there. QuantizedEmbedding is untouched (a gather
dequantizes only the rows it reads).

The dequantized weight is not kept by default: keeping it holds a float32 copy of every Linear
(more memory than the whole q8 model) to save a little of a batched forward but about half of a
short batch-1 one (benchmarks/bench_quantize.py measures both). `keep_dequantized(model, True)`,
or the environment variable MLX_RSG_DEQUANT_CACHE=1 when a model loads (`runtime.place`), keeps
it per layer of that model when memory does not matter.

`FastQuantizedLinear` is nn.QuantizedLinear with this path; `mlx_rsg.accel.fastpaths` gives it to
our models' quantized layers where it measures faster, and no other model in the process is touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import mlx.core as mx
import mlx.nn as nn

MIN_ROWS = 4  # below this MLX's quantized kernel is as fast or faster (measured, table above)
_CACHE_ATTR = "_mlx_rsg_dequantized"  # in the instance __dict__, outside the parameter tree
_KEEP_ATTR = "_mlx_rsg_keep_dequantized"  # the layer's model keeps its dequantized weights
# the innermost open shared_dequant() scope's weights (None outside one); per thread and task
_SHARED: ContextVar[dict | None] = ContextVar("mlx_rsg_shared_dequant", default=None)


@contextlib.contextmanager
def shared_dequant() -> Iterator[None]:
    """Graphs built inside share each layer's dequantized weight instead of each building one.

    cpu_parallel builds one graph per row chunk (one per core) before evaluating them together;
    without this every chunk dequantized every weight again (q4 ran at 0.86x fp32 in that mode,
    q8 0.92x). Leave the block before evaluating: the graphs hold what they need, so the shared
    weights live no longer than without sharing.
    """
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def dequantized_weight(layer: nn.QuantizedLinear, cache: bool = False) -> mx.array:
    """The layer's weight as float (out, in), optionally kept on the layer for the next call."""
    w = layer["weight"]
    # the arrays it was made from: learned scales (quant/distill.py) make a new one
    made_from = (w, layer["scales"], layer.get("biases"))
    if cache:
        hit = layer.__dict__.get(_CACHE_ATTR)
        if hit is not None and _same(hit[0], made_from):
            return hit[1]
    shared = _SHARED.get()
    if shared is not None:
        hit = shared.get(id(layer))
        if hit is not None and _same(hit[0], made_from):
            return hit[1]
    if layer.mode == "affine" and layer.bits in (4, 8) and w.dtype == mx.uint32:
        dq = unpack_affine(w, layer["scales"], layer["biases"], layer.group_size, layer.bits)
    else:
        dq = mx.dequantize(
            w,
            layer["scales"],
            layer.get("biases"),
            group_size=layer.group_size,
            bits=layer.bits,
            mode=layer.mode,
        )
    if cache:
        mx.eval(dq)
        object.__setattr__(layer, _CACHE_ATTR, (made_from, dq))  # outside the parameter dict
    if shared is not None:
        shared[id(layer)] = (made_from, dq)
    return dq


def _same(a: tuple, b: tuple) -> bool:
    return all(x is y for x, y in zip(a, b, strict=True))


def unpack_affine(
    w: mx.array, scales: mx.array, biases: mx.array, group_size: int, bits: int
) -> mx.array:
    """mx.dequantize for affine 8/4-bit from plain ops, bit-identical and faster on the CPU
    (it measured 1.6-2.6x when written). MLX packs
    codes little-endian, low bits first: as bytes, 8-bit codes are the bytes themselves and each
    byte holds two 4-bit codes, low nibble first."""
    u = w.view(mx.uint8)
    if bits == 4:
        u = mx.stack([u & 0xF, u >> 4], axis=-1)
    rows = w.shape[0]
    u = u.reshape(rows, -1, group_size).astype(scales.dtype)
    return (u * scales[..., None] + biases[..., None]).reshape(rows, -1)


def _use_fast(x: mx.array) -> bool:
    return mx.default_device() == mx.cpu and x.ndim >= 2 and x.size // x.shape[-1] >= MIN_ROWS


class FastQuantizedLinear(nn.QuantizedLinear):
    """nn.QuantizedLinear that dequantizes and runs one float GEMM for MIN_ROWS+ rows on the CPU;
    `keep_dequantized` keeps the dequantized weight on the layer."""

    def __call__(self, x: mx.array) -> mx.array:
        if not _use_fast(x):
            return super().__call__(x)
        w = dequantized_weight(self, cache=self.__dict__.get(_KEEP_ATTR, False))
        y = x @ w.astype(x.dtype).T
        if "bias" in self:
            y = y + self["bias"]
        return y


def keep_dequantized(model: nn.Module, keep: bool) -> None:
    """Keep (True) or recompute (False) the dequantized weights of `model`'s quantized layers
    from their next call on; other models are not touched."""
    for m in model.modules():
        if isinstance(m, nn.QuantizedLinear):
            object.__setattr__(m, _KEEP_ATTR, keep)  # outside the parameter tree
