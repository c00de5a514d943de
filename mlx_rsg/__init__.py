"""mlx-rsg: Russian SuperGLUE on Apple MLX.

`import mlx_rsg` loads a fast BLAS for MLX's CPU backend (mlx_rsg/accel/blas.py) when mlx is not
imported yet, unless MLX_RSG_BLAS=none; `mlx_rsg.load(RUN_DIR)` is the Python API (predict.py).
"""

from mlx_rsg.accel import blas  # noqa: F401  (first: before anything imports mlx)
from mlx_rsg.version import __version__

__all__ = ["__version__", "load"]


def __getattr__(name: str):
    # `mlx_rsg.load(RUN_DIR)` without importing mlx at `import mlx_rsg` time.
    if name == "load":
        from mlx_rsg.predict import load

        return load
    raise AttributeError(f"module 'mlx_rsg' has no attribute {name!r}")
