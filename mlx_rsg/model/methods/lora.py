"""lora: mlx-lm's LoRA layers on `lora_targets` of the top `lora_layers` blocks (scale = alpha /
rank, as in PEFT); mergeable into the backbone's Linear layers (`fuse_lora`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import mlx.nn as nn
from mlx.utils import tree_unflatten

from mlx_rsg.errors import UserError
from mlx_rsg.model.config import ClassifierConfig
from mlx_rsg.model.methods.base import Method

# Model types whose attention projections are one fused Linear: where the default targets
# (q_proj, v_proj) do not exist, LoRA goes on the fused one, as PEFT's default targets do.
FUSED_ATTENTION = {"phi3": ("qkv_proj",)}


def default_targets(targets: tuple[str, ...], model_type: str) -> tuple[str, ...]:
    """`targets`, or the fused projection of a model type that has no q_proj / v_proj when
    `targets` are the defaults."""
    if tuple(targets) == ClassifierConfig().lora_targets and model_type in FUSED_ATTENTION:
        return FUSED_ATTENTION[model_type]
    return tuple(targets)


def lora_keys(layer: nn.Module, targets: tuple[str, ...], model_type: str) -> list[str]:
    """Paths inside a block of the linear layers named in `targets` ("q_proj" or
    "self_attn.q_proj")."""
    linears = [
        p for p, m in layer.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))
    ]
    keys = []
    for t in targets:
        found = [p for p in linears if p == t or p.endswith("." + t)]
        if not found:
            names = sorted({p.rsplit(".", 1)[-1] for p in linears})
            raise UserError(
                f"--lora-targets: {t!r} is no linear layer of {model_type} "
                f"(one of {', '.join(names)})"
            )
        keys += found
    return keys


def fuse_lora(model: nn.Module) -> int:
    """Replace every mlx-lm LoRA layer in the model by its fused Linear; return how many."""
    from mlx_lm.tuner.lora import LoRALinear  # mlx_lm.tuner imports transformers: seconds

    fused = [(n, m.fuse()) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    if fused:
        model.update_modules(tree_unflatten(fused))
    return len(fused)


@dataclass(frozen=True)
class LoRA(Method):
    def apply(self, classifier, depth: int) -> None:
        if not depth:
            return
        from mlx_lm.tuner.utils import linear_to_lora_layers  # imports transformers: seconds

        cfg, bb = classifier.cfg, classifier.backbone
        keys = lora_keys(bb.layers[0], tuple(cfg.lora_targets), bb.config["model_type"])
        config = {"rank": cfg.lora_rank, "scale": cfg.lora_alpha / cfg.lora_rank, "dropout": 0.0,
                  "keys": keys}  # fmt: skip
        linear_to_lora_layers(classifier.lm, depth, config)
        if any(isinstance(m, nn.QuantizedLinear) for m in bb.layers[-depth].modules()):
            # LoRA over quantized layers (QLoRA) scores in one row chunk: with the LoRA branch
            # beside each layer's dequantized weight, which the chunks share across CPU streams,
            # MLX 0.32 orders the graph so that two chunks ran at 0.6x one (docs/quantization.md)
            bb.runtime = replace(bb.runtime, row_parts=1)


METHOD = LoRA("lora", depth_field="lora_layers")
