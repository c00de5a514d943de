"""A model directory's files: the hashes of its weights (what a run depends on), the files a
standalone copy needs, and its manifest (how `convert` or `quantize` made it)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from mlx_rsg.errors import UserError
from mlx_rsg.io import write_json

# Files of a model directory that a standalone copy needs (weights, config, tokenizer).
_MODEL_FILE_GLOBS = ("*.safetensors", "*.json", "tokenizer.model", "*.txt", "*.jinja")
_WEIGHTS_INDEX = "model.safetensors.index.json"  # which shard holds each weight


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weight_hashes(model_dir: Path) -> dict[str, str]:
    """sha256 of every *.safetensors file of a model directory (the weights a run depends on)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir}: no *.safetensors weights (is it a converted model dir?)")
    return {f.name: sha256_file(f) for f in files}


def copy_model_dir(src: Path, dst: Path, weights: bool = True) -> None:
    """Copy the files that make a loadable model directory (not caches, not adapters).
    `weights=False`: all of them but the weights and their index, for a caller that writes
    weights of its own (a quantized or trained copy), so the source's are never copied."""
    dst.mkdir(parents=True, exist_ok=True)
    for pattern in _MODEL_FILE_GLOBS:
        for f in Path(src).glob(pattern):
            if weights or not (f.suffix == ".safetensors" or f.name == _WEIGHTS_INDEX):
                shutil.copy2(f, dst / f.name)


MANIFEST = "mlx_rsg.json"  # how a model directory was made (convert, quantize)


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> None:
    write_json(Path(model_dir) / MANIFEST, manifest)
