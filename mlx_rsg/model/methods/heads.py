"""heads: the backbone stays frozen; only the classification heads train, so the whole backbone
output is cacheable (the prefix cache then makes every epoch after the first cheap)."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_rsg.model.methods.base import Method


@dataclass(frozen=True)
class Heads(Method):
    def depth(self, cfg, num_layers: int) -> int:
        return 0


METHOD = Heads("heads")
