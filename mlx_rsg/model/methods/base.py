"""The interface of a training method: how many top blocks it trains, and what it does to them."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_rsg.errors import UserError


@dataclass(frozen=True)
class Method:
    name: str
    # The ClassifierConfig field that sets how many top blocks it trains; None: the blocks above
    # `freeze_layers`.
    depth_field: str | None = None
    mergeable: bool = True  # its trained weights merge into the backbone (train --fuse, quantize)

    def depth(self, cfg, num_layers: int) -> int:
        """How many top blocks the method changes; the blocks below them are the cacheable
        prefix."""
        k = num_layers if cfg.freeze_layers is None else cfg.freeze_layers
        n = getattr(cfg, self.depth_field) if self.depth_field else None
        n = num_layers - k if n is None else n
        if not 0 <= n <= num_layers:
            flag = "--" + (self.depth_field or "freeze_layers").replace("_", "-")
            raise UserError(f"{flag}: {n} is not within the model's {num_layers} layers")
        return n

    def apply(self, classifier, depth: int) -> None:
        """Make the top `depth` blocks of the (frozen) classifier's backbone trainable."""
