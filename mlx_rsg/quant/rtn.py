"""Round-to-nearest affine quantization: mlx-lm's own `quantize_model` with a per-path predicate."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import compute_bits_per_weight, get_total_parameters, quantize_model

from mlx_rsg.accel import fastpaths
from mlx_rsg.quant.recipe import Recipe


def quantize_backbone(model, config: dict[str, Any], recipe: Recipe) -> tuple[dict, dict]:
    """Quantize the mlx-lm model in place; returns (config with its quantization block, counts).

    Every module with `to_quantized` (Linear, Embedding) whose input width divides its group size
    is quantized; mlx-lm writes a per-path entry for every module whose parameters differ from
    the recipe's defaults, which is the format its loader reads back."""
    counts = {"quantized": 0, "skipped": []}
    qconfig = quantize_modules(model, config, recipe, counts=counts)
    counts["bits_per_weight"] = bits_per_weight(model)
    fastpaths.apply(model, qconfig)  # the new layers run as they will when loaded back
    return qconfig, counts


def quantize_modules(model, config: dict[str, Any], recipe: Recipe, under: tuple[str, ...] = ("",),
                     counts: dict | None = None) -> dict:  # fmt: skip
    """Quantize in place, as `recipe` says, the modules whose paths start with one of `under`
    (mlx-lm's `quantize_model`, its print silenced); returns the config with mlx-lm's
    quantization block. A module whose input width does not divide its group stays as it is
    (in `counts["skipped"]`, the others counted in `counts["quantized"]`, when given)."""
    default = {"bits": recipe.bits, "group_size": recipe.group_size}

    def predicate(path: str, module) -> bool | dict:
        if not path.startswith(under):
            return False
        p = recipe.params_for(path)
        if module.weight.shape[-1] % p["group_size"]:
            if counts is not None:
                counts["skipped"].append(path)
            return False
        if counts is not None:
            counts["quantized"] += 1
        return True if p == default else {**p, "mode": "affine"}

    with contextlib.redirect_stdout(io.StringIO()):  # mlx-lm prints bits per weight; we log it
        _, qconfig = quantize_model(
            model, config, recipe.group_size, recipe.bits, mode="affine", quant_predicate=predicate
        )
    return qconfig


def cast_scales(model, dtype: mx.Dtype) -> float:
    """Every quantized module's scales and biases in `dtype`, in place (float16 scales take
    q4 at group 64 from 5 to 4.5 bits per weight); returns the new bits per weight. The layers
    compute in the input's dtype as before (`embed` casts the gathered rows back)."""
    for _, module in model.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            module.scales = module.scales.astype(dtype)
            if module.get("biases") is not None:
                module.biases = module.biases.astype(dtype)
    mx.eval(model.parameters())
    return bits_per_weight(model)


def bits_per_weight(model) -> float:
    """Bits per weight as mlx-lm counts them (all bytes over all parameters), as the manifest
    records them."""
    return round(float(compute_bits_per_weight(model)), 3)


def stored(module: nn.Module) -> dict[str, int]:
    """What `module` stores: its parameters as mlx-lm counts them (a quantized weight as its
    unpacked size) and the bytes of every array it holds."""
    nbytes = sum(v.nbytes for _, v in tree_flatten(module.parameters()))
    return {"parameters": int(get_total_parameters(module)), "bytes": int(nbytes)}


def stored_bits_per_weight(parts: dict[str, dict[str, int]]) -> dict:
    """`parts` ({name: stored(...)}) with the bits per weight over all of them: what a copy
    stores, the RWSD language model's own blocks and the heads beside its backbone."""
    params = sum(p["parameters"] for p in parts.values())
    nbytes = sum(p["bytes"] for p in parts.values())
    return {**parts, "bits_per_weight": round(8 * nbytes / params, 3) if params else None}
