"""Shared fixtures. Importing mlx_rsg first loads OpenBLAS before any test module imports mlx."""

import mlx_rsg  # noqa: F401
from tiny_model import tiny_model_dir, tiny_rsg_dir  # noqa: F401
