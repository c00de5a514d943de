"""mlx-rsg: Russian SuperGLUE on Apple MLX."""

from mlx_rsg.accel import blas  # noqa: F401  (must run before anything imports mlx)

__version__ = "0.1.0"


def __getattr__(name: str):
    # `mlx_rsg.load(RUN_DIR)` without importing mlx at `import mlx_rsg` time.
    if name == "load":
        from mlx_rsg.predict import load

        return load
    raise AttributeError(f"module 'mlx_rsg' has no attribute {name!r}")
