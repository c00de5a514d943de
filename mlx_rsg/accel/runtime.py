"""What runs where for one loaded model, decided once when it loads and kept on its Backbone.

    device      MLX's default device at load ("cpu" or "gpu")
    blas        what MLX's CPU GEMMs run on (the dynamic linker's choice: one per process)
    fast_paths  which CPU fast paths its modules got (`fastpaths.apply`; none on a GPU)
    cores       the cores it may keep busy: the machine's, or a rank's share (`World.cores`)
    row_parts   inference batches are split into this many row chunks, one per core (`rows`)
    keep_dequantized  its quantized layers keep their dequantized weights (MLX_RSG_DEQUANT_CACHE=1)

Nothing here is process-wide: a second model loaded in the same process decides for itself and
leaves the first one as it was (tests/test_fastpaths.py). The model's compute dtype is its
classifier's (`ClassifierConfig.dtype`, model/precision.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlx_rsg.accel import blas, fast_quant, fastpaths
from mlx_rsg.accel.cpu_parallel import cpu_cores


@dataclass(frozen=True)
class Runtime:
    device: str = "cpu"
    blas: str = ""
    fast_paths: dict[str, bool] = field(default_factory=dict)
    cores: int = 1
    row_parts: int = 1
    keep_dequantized: bool = False


def place(model: nn.Module, config: dict, log=None, use: dict[str, bool] | None = None,
          cores: int | None = None) -> Runtime:  # fmt: skip
    """Decide (or take `use`) the fast paths for `model`, run by a process that may keep `cores`
    busy (default: all of the machine's), and give them to its modules; the Runtime that says
    what was decided."""
    cores = cores or cpu_cores()
    used = fastpaths.apply(model, config, log=log, use=use, cores=cores)
    keep = os.environ.get("MLX_RSG_DEQUANT_CACHE") == "1"
    fast_quant.keep_dequantized(model, keep)
    on_cpu = mx.default_device() == mx.cpu
    return Runtime(
        device="cpu" if on_cpu else "gpu",
        blas=blas.describe() if on_cpu else "",
        fast_paths=used,
        cores=cores,
        row_parts=cores if on_cpu and used.get("rows") else 1,
        keep_dequantized=keep,
    )


def record(rt: Runtime) -> dict[str, Any]:
    """What a run's floats depend on besides its flags, data and weights, for run.json: the
    device, the BLAS and the kernels OpenBLAS picked, the fast paths its modules got, and the
    cores (the row split makes one chunk per core). Two machines that differ here train sister
    runs, not the same one; `pinning` asks another machine for the same choices."""
    return {
        "device": rt.device,
        "blas": rt.blas,
        "blas_kernels": blas.corename() if rt.device == "cpu" else None,
        "fast_paths": sorted(p for p, on in rt.fast_paths.items() if on),
        "cores": rt.cores,
    }


def pinning(recorded: dict[str, Any]) -> dict[str, str]:
    """The environment that makes this machine choose what `recorded` says (its kernels where
    OpenBLAS can run them, its fast paths); the cores are the machine's or the launch's."""
    env = {"MLX_RSG_FAST_PATHS": ",".join(recorded.get("fast_paths") or []) or "none"}
    if recorded.get("blas_kernels"):
        env["OPENBLAS_CORETYPE"] = recorded["blas_kernels"]
    return env


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a run's recorded runtime and this process's, one phrase each."""
    return [f"{k} {recorded.get(k)!r} then, {now.get(k)!r} now"
            for k in ("device", "blas_kernels", "fast_paths", "cores")
            if k in recorded and recorded.get(k) != now.get(k)]  # fmt: skip
