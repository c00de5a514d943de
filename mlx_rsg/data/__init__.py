"""Russian SuperGLUE data on disk: the official layouts (files.py) and `mlx-rsg data` (info.py).
The records themselves are the task modules' (`mlx_rsg.tasks`)."""

from mlx_rsg.data.files import SPLITS, available_splits, load_split
from mlx_rsg.errors import DataError

__all__ = ["SPLITS", "DataError", "available_splits", "load_split"]
