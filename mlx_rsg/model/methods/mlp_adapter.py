"""mlp-adapter: a Houlsby adapter (down, GELU, up, residual) after each of the top
`adapter_layers` blocks. The up-projection starts at zero, so training starts from the backbone's
own features. Not linear, so never merged into the backbone."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_rsg.model.dropout import Dropout
from mlx_rsg.model.methods.base import Method


class Adapter(nn.Module):
    """Houlsby et al. (2019) bottleneck: h + up(gelu(down(h))), with up initialised to zero."""

    def __init__(self, dims: int, size: int, dropout: float):
        super().__init__()
        self.down = nn.Linear(dims, size)
        self.up = nn.Linear(size, dims)
        self.up.weight = mx.zeros_like(self.up.weight)
        self.up.bias = mx.zeros_like(self.up.bias)
        self.dropout = Dropout(dropout)

    def __call__(self, h: mx.array) -> mx.array:
        return h + self.dropout(self.up(nn.gelu(self.down(h))))


def block_hooks(adapters: dict) -> dict[int, Adapter]:
    """{block index: adapter} from the classifier's `adapters` dict ("block9": ...)."""
    return {int(key.removeprefix("block")): a for key, a in adapters.items()}


@dataclass(frozen=True)
class MLPAdapter(Method):
    def apply(self, classifier, depth: int) -> None:
        # Keyed "block<i>", not "<i>": MLX turns all-digit keys of a flattened tree back into a
        # list (tree_unflatten), and the optimizer's gradients then no longer match the dict.
        cfg, n = classifier.cfg, classifier.n_blocks
        size = classifier.backbone.hidden_size
        classifier.adapters = {
            f"block{i}": Adapter(size, cfg.adapter_size, cfg.adapter_dropout)
            for i in range(n - depth, n)
        }


METHOD = MLPAdapter("mlp-adapter", depth_field="adapter_layers", mergeable=False)
