"""Use every CPU core for batched inference: one row chunk per core, each on its own MLX stream.

On the CPU, MLX runs each stream on its own thread, but its elementwise kernels (GELU, norms,
softmax, RoPE) are single-threaded; only the GEMMs are threaded, by the BLAS. A forward is thus
one-core for a large share of its time. Splitting the batch rows into one chunk per core, each
chunk on its own CPU stream, with the BLAS set to one thread while they run (two threaded GEMMs on
two cores would oversubscribe), keeps every core busy the whole time: the `rows` fast path
(`mlx_rsg.accel.fastpaths` decides per machine; benchmarks/bench_inference.py, "mlx-rows"). Rows
never interact in inference, so the result is the single-stream one up to rounding (a GEMM
over fewer rows may sum in another order): ~1e-6 relative.

Not used for training: with MLX 0.32 the backward passes of two row chunks on two streams do not
overlap (their forwards do); bisecting did not pin the cause down (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import mlx.core as mx

from mlx_rsg.model.batching import segments_within


def cpu_cores(sharers: int = 1) -> int:
    """The cores a process may keep busy: the machine's (its affinity), split among the
    `sharers` processes on it (the ranks of a distributed run on one host: `World.cores`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, sharers))


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Set the preloaded BLAS's thread count for the duration (no-op without one)."""
    from mlx_rsg.accel import blas

    before = blas.get_threads()
    if before is None:
        yield
        return
    blas.set_threads(n)
    try:
        yield
    finally:
        blas.set_threads(before)


@functools.cache  # a CPU stream is a thread of MLX's: made once per process, reused by all
def _stream(i: int):
    return mx.new_stream(mx.cpu)


def row_parallel(fn: Callable[..., mx.array], *arrays: mx.array, parts: int):
    """fn(*arrays) computed and evaluated as `parts` row chunks in parallel; rows concatenated.

    Every array is split along axis 0. `parts`: a model's `Runtime.row_parts` (one per core
    where the `rows` fast path measured faster on this machine, else 1). Falls back to one
    evaluated call on a GPU, with one part, or with fewer rows than parts.
    """
    return _in_chunks(lambda lo, hi: fn(*(a[lo:hi] for a in arrays)), arrays[0].shape[0], parts)


def model_rows(model, batch, h0: mx.array | None = None, parts: int | None = None) -> mx.array:
    """model(batch, h0) for an inference batch, as row chunks in parallel (evaluated); `parts`
    None: the model's own `Runtime.row_parts`.

    Every field of the batch dataclass that has one entry per row (arrays, lists) is cut; the
    rest (head, task) is shared. Choice groups may be cut apart: inference scores every row on
    its own; groups only matter to the loss and to decoding.
    """
    rows = batch.tokens.shape[0]
    parts = model.backbone.runtime.row_parts if parts is None else parts

    def call(lo: int, hi: int) -> mx.array:
        part = _cut_batch(batch, rows, lo, hi)
        return model(part, None if h0 is None else h0[lo:hi])

    return _in_chunks(call, rows, parts)


def batch_rows(fn: Callable[[Any], mx.array], batch, parts: int) -> mx.array:
    """fn(batch) for an inference batch whose rows fn treats independently, as row chunks in
    parallel (evaluated), the batch cut as `model_rows` cuts it."""
    rows = batch.tokens.shape[0]
    return _in_chunks(lambda lo, hi: fn(_cut_batch(batch, rows, lo, hi)), rows, parts)


def _cut_batch(batch, rows: int, lo: int, hi: int):
    import numpy as np

    def cut(name: str, v):
        if name == "segments":  # (start, end, n) runs of rows: those within the cut
            return segments_within(v, lo, hi)
        if isinstance(v, (mx.array, np.ndarray)) and v.ndim and v.shape[0] == rows:
            return v[lo:hi]
        if isinstance(v, (list, tuple)) and len(v) == rows:
            return type(v)(v[lo:hi])
        return v

    return dataclasses.replace(
        batch, **{f.name: cut(f.name, getattr(batch, f.name)) for f in dataclasses.fields(batch)}
    )


def _in_chunks(make: Callable[[int, int], mx.array], rows: int, parts: int) -> mx.array:
    parts = min(parts, rows)
    if parts <= 1 or mx.default_device() != mx.cpu:
        out = make(0, rows)
        mx.eval(out)
        return out
    from mlx_rsg.accel.fast_quant import shared_dequant

    bounds = [rows * i // parts for i in range(parts + 1)]
    outs = []
    with shared_dequant():  # a quantized layer's weight is dequantized once, for every chunk
        for i, lo, hi in zip(range(parts), bounds, bounds[1:], strict=False):
            with mx.stream(_stream(i)):
                outs.append(make(lo, hi))
    with blas_threads(1):
        mx.eval(outs)
    out = mx.concatenate(outs)
    mx.eval(out)
    return out
