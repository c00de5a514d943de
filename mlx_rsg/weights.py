"""Trained weights as safetensors: saved atomically, loaded into a freshly built classifier
(every name must fit), and a standalone backbone copy with its (fused) weights."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.utils import save_config

from mlx_rsg.errors import UserError
from mlx_rsg.io import atomic_file, check_safetensors, read_json_object
from mlx_rsg.model.precision import set_weights, trained_weights
from mlx_rsg.model_files import copy_model_dir


def save_weights(path: Path, arrays: dict) -> None:
    """Atomically write a flat dict of arrays as safetensors."""
    with atomic_file(path, "wb") as f:
        mx.save_safetensors(f, arrays)


def trainable_weights(model) -> dict:
    """What a run stores of a model: its trainable weights, float32 masters where it computes
    in half precision (`model/precision.py`)."""
    return trained_weights(model)


def load_trainable(model, path: Path) -> None:
    """Load trained weights into a freshly built classifier; every name must exist there."""
    check_safetensors(Path(path))  # a truncated file: one line, not MLX's exception
    weights = mx.load(str(path))
    params = dict(tree_flatten(model.parameters()))
    bad = [k for k, v in weights.items() if k not in params or params[k].shape != v.shape]
    if bad:
        raise UserError(f"{path}: weights do not fit the model built from run.json: {bad[0]}")
    set_weights(model, weights)


def write_backbone(bb, src_dir: Path, dst: Path) -> None:
    """Write a standalone model directory: the (possibly fused) backbone weights plus the source
    directory's tokenizer files and config (bb's own where it kept fewer blocks)."""
    copy_model_dir(src_dir, dst, weights=False)
    if bb.config.get("num_hidden_layers") != read_json_object(dst / "config.json").get(
        "num_hidden_layers"
    ):
        save_config(dict(bb.config), config_path=dst / "config.json")
    weights = dict(tree_flatten(bb.model.parameters()))
    mx.save_safetensors(str(dst / "model.safetensors"), weights, metadata={"format": "mlx"})


def weights_outside_backbone(model) -> dict:
    """float32 copies of a classifier's own weights (heads, MLP adapters): everything not under
    the backbone's `lm.` tree, which a fused or quantized backbone/ carries instead."""
    return {
        k: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v
        for k, v in tree_flatten(model.parameters())
        if not k.startswith("lm.")
    }
