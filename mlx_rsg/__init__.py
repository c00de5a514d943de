"""mlx-rsg: Russian SuperGLUE on Apple MLX."""

from mlx_rsg import _blas  # noqa: F401  (must run before anything imports mlx)

__version__ = "0.1.0"
