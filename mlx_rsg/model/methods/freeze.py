"""freeze: the bottom `freeze_layers` blocks (and the embeddings) are frozen, the blocks above
them and the final norm train in full."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_rsg.model.methods.base import Method


@dataclass(frozen=True)
class Freeze(Method):
    def apply(self, classifier, depth: int) -> None:
        bb = classifier.backbone
        for layer in bb.layers[bb.num_layers - depth :]:
            layer.unfreeze()
        if depth:
            bb.decoder.norm.unfreeze()


METHOD = Freeze("freeze")
