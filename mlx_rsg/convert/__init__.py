"""Conversion to an MLX model directory: from a Hugging Face directory or Hub id (hf.py) or from a
GGUF file (gguf.py), with per-architecture recipes in the top-level `convert/` folder."""

from dataclasses import dataclass

from mlx_rsg.model.config import DTYPES
from mlx_rsg.options import opt


@dataclass
class ConvertOptions:
    """Every `mlx-rsg convert` option but SOURCE and -o (the CLI's options are made from these
    fields); `convert(source, out, **asdict(options))`."""

    dtype: str = opt("float32", "Floating-point type of the saved weights.", choices=list(DTYPES))
    force: bool = opt(False, "Overwrite OUT.")
