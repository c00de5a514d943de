"""Load a real OpenBLAS before MLX on Linux.

The `mlx[cpu]` wheel links a slow reference BLAS (~3-6 GFLOP/s fp32 GEMM on this class of
machine). MLX resolves `cblas_sgemm` dynamically, so a real OpenBLAS loaded with RTLD_GLOBAL
*before* `import mlx` takes over every GEMM (~35x faster measured). This is the one place that
does it; `mlx_rsg/__init__.py` imports this module first. Set MLX_RSG_BLAS=none to disable, or
MLX_RSG_BLAS=/path/libopenblas.so to choose a library.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

BLAS_PATH: str | None = None  # the library we loaded, reported by `mlx-rsg info`
BLAS_ERROR: str | None = None


def _candidates() -> list[str]:
    env = os.environ.get("MLX_RSG_BLAS")
    if env:
        return [] if env == "none" else [env]
    paths = [
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
        "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
        "/usr/lib64/libopenblas.so.0",
    ]
    # cmeel-openblas (PyPI) needs the system libgfortran5 to load.
    for site in sys.path:
        paths += sorted(glob.glob(os.path.join(site, "cmeel.prefix/lib/libopenblas.so.0")))
    return paths


def preload() -> None:
    global BLAS_PATH, BLAS_ERROR
    if not sys.platform.startswith("linux") or "mlx.core" in sys.modules:
        return
    for path in _candidates():
        if not os.path.exists(path):
            continue
        try:
            ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
        except OSError as e:
            BLAS_ERROR = f"{path}: {e}"
            continue
        BLAS_PATH = path
        return


preload()
