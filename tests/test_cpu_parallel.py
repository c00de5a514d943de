"""Row-parallel CPU inference gives exactly the single-stream forward's results."""

from __future__ import annotations

import os
import sys

import mlx.core as mx
import pytest
from tiny_model import tiny_model_dir  # noqa: F401

from mlx_rsg.accel import blas
from mlx_rsg.accel.cpu_parallel import blas_threads, row_parallel
from mlx_rsg.model.backbone import hidden_states, load_backbone


def test_row_parallel_equals_one_stream(tiny_model_dir):  # noqa: F811
    bb = load_backbone(tiny_model_dir)
    tokens = mx.random.randint(3, 300, (5, 11)).astype(mx.int32)
    want = hidden_states(bb, tokens)
    for parts, chunks in ((1, [5]), (2, [2, 3]), (3, [1, 2, 2]), (8, [1] * 5)):
        got = row_parallel(lambda t: hidden_states(bb, t), tokens, parts=parts)
        # Bit for bit the chunks computed one after another on the default stream ...
        lo, one_by_one = 0, []
        with blas_threads(1):
            for n in chunks:
                one_by_one.append(hidden_states(bb, tokens[lo : lo + n]))
                mx.eval(one_by_one[-1])
                lo += n
        assert mx.array_equal(got, mx.concatenate(one_by_one)).item(), parts
        # ... and the whole batch up to GEMM blocking order (rounding).
        assert mx.allclose(got, want, rtol=1e-4, atol=1e-4).item(), parts


def test_blas_threads_restored():
    before = blas.get_threads()
    if before is None:  # the install brings a BLAS to Linux; only an opt-out has none
        assert sys.platform != "linux" or os.environ.get("MLX_RSG_BLAS") == "none", blas.describe()
        pytest.skip("no preloaded BLAS here (macOS, or MLX_RSG_BLAS=none): nothing to set")
    with blas_threads(1):
        assert blas.get_threads() == 1
    assert blas.get_threads() == before
