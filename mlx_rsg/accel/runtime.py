"""What runs where for one loaded model, decided once when it loads and kept on its Backbone.

    device      MLX's default device at load ("cpu" or "gpu")
    blas        what MLX's CPU GEMMs run on (the dynamic linker's choice: one per process)
    fast_paths  which CPU fast paths its modules got (`fastpaths.apply`; none on a GPU)
    row_parts   inference batches are split into this many row chunks, one per core (`rows`)
    keep_dequantized  its quantized layers keep their dequantized weights (MLX_RSG_DEQUANT_CACHE=1)

Nothing here is process-wide: a second model loaded in the same process decides for itself and
leaves the first one as it was (tests/test_fastpaths.py). The model's compute dtype is its
classifier's (`ClassifierConfig.dtype`, model/precision.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from mlx_rsg.accel import blas, fast_quant, fastpaths
from mlx_rsg.accel.cpu_parallel import cpu_cores


@dataclass(frozen=True)
class Runtime:
    device: str = "cpu"
    blas: str = ""
    fast_paths: dict[str, bool] = field(default_factory=dict)
    row_parts: int = 1
    keep_dequantized: bool = False


def place(model: nn.Module, config: dict, log=None, use: dict[str, bool] | None = None) -> Runtime:
    """Decide (or take `use`) the fast paths for `model` and give them to its modules; the
    Runtime that says what was decided."""
    used = fastpaths.apply(model, config, log=log, use=use)
    keep = os.environ.get("MLX_RSG_DEQUANT_CACHE") == "1"
    fast_quant.keep_dequantized(model, keep)
    on_cpu = mx.default_device() == mx.cpu
    return Runtime(
        device="cpu" if on_cpu else "gpu",
        blas=blas.describe() if on_cpu else "",
        fast_paths=used,
        row_parts=cpu_cores() if on_cpu and used.get("rows") else 1,
        keep_dequantized=keep,
    )
