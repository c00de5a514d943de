"""RSGClassifier: an mlx-lm backbone, pooling, dropout and one linear head per task.

    bottom K layers (frozen, cacheable)  ->  top layers (trained, LoRA'd or adapted)
      -> final norm -> pooling (last token | mean | marked spans) -> RMS normalisation
      -> dropout -> heads[task]

The pooled vectors are RMS-normalised without a learned scale and the heads start at zero:
Gemma's final hidden states have an RMS of ~7 with single dimensions up to ~140, so a head on the
raw features starts with a loss of ~3 and every Adam step moves its logits by several units.
Normalised, one head learning rate suits any backbone and training starts at chance.

Methods (`ClassifierConfig.method`, one module each in methods/): heads (the backbone frozen; K =
all layers, so the whole backbone output is cacheable), freeze, lora, mlp-adapter. With
`feature_layer` F the classifier reads block F's output: the blocks above F are dropped from the
backbone (they never run) and a method trains the top blocks of those left.

`prefix(tokens)` is everything below the first trained block, with no dropout, so its output is a
pure function of the tokens: the training loop caches it (features.PrefixCache) and feeds it back
as `h0`.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_rsg.arch import top_block
from mlx_rsg.errors import UserError
from mlx_rsg.model import methods, precision, shared_prefix
from mlx_rsg.model.backbone import (
    Backbone,
    embed,
    final_norm,
    keep_blocks,
    layer_window,
    run_layers,
)
from mlx_rsg.model.config import ClassifierConfig
from mlx_rsg.model.dropout import Dropout
from mlx_rsg.model.methods.mlp_adapter import block_hooks
from mlx_rsg.model.pooling import pool, pooling_weights
from mlx_rsg.tasks import REGISTRY


def trained_depth(cfg: ClassifierConfig, num_layers: int) -> int:
    """How many top blocks the method changes; the blocks below them are the cacheable prefix."""
    return methods.get(cfg.method).depth(cfg, num_layers)


class RSGClassifier(nn.Module):
    def __init__(self, backbone: Backbone, cfg: ClassifierConfig, heads: dict[str, int]):
        super().__init__()
        self.backbone = backbone  # a plain dataclass: not part of the parameter tree
        self.lm = backbone.model
        self.cfg = cfg
        n = backbone.num_layers
        if cfg.feature_layer is not None and not 1 <= cfg.feature_layer <= n:
            raise UserError(f"--feature-layer: {cfg.feature_layer} is not a block in 1..{n}")
        # Read an earlier block's output: the blocks above it never run, so they are not kept
        # (and the methods train the top blocks of what is left).
        layer = cfg.feature_layer
        self.blocks_dropped = 0 if layer is None else keep_blocks(backbone, layer)
        trained = trained_depth(cfg, self.n_blocks)
        self.k = self.n_blocks - trained
        self.lm.freeze()
        self.adapters = {}  # "block<i>" -> module run after block i (mlp-adapter)
        methods.get(cfg.method).apply(self, trained)
        # Span-pooled tasks concatenate their spans: the head sees hidden * spans features.
        self.heads = {}
        for name, n_out in heads.items():
            spans = REGISTRY[name].spans if name in REGISTRY else 0
            head = nn.Linear(backbone.hidden_size * max(1, spans), n_out)
            head.weight = mx.zeros_like(head.weight)
            head.bias = mx.zeros_like(head.bias)
            self.heads[name] = head
        self.dropout = Dropout(cfg.dropout)
        self.substitution = None  # RWSD decided by the base LM (model/substitution.py), not a head
        precision.to_dtype(self, cfg.dtype)  # the heads stay float32

    @property
    def n_blocks(self) -> int:
        """The classifier runs blocks [0, n_blocks): the backbone's, less a feature layer's."""
        return self.backbone.num_layers

    def trainable_start(self) -> int:
        """The first block whose output training can change; blocks below it never do."""
        return self.k

    def prefix(self, tokens: mx.array) -> mx.array:
        """Embeddings and the blocks below `trainable_start()`: the input of block K."""
        return run_layers(self.backbone, embed(self.backbone, tokens), 0, self.k)

    def features(self, batch, h0: mx.array | None = None) -> mx.array:
        """Pooled final hidden states (B, S, hidden): S = 1, or the marked spans. h0: the input
        of block K (`prefix`), or None to run the whole backbone. A batch's `segments` (rows
        that share a prefix) run it once (`shared_prefix.segment_features`)."""
        if batch.segments:
            return shared_prefix.segment_features(self, batch, h0)
        bb, n = self.backbone, self.n_blocks
        first = 0 if h0 is None else self.k  # the first block this call runs
        at = None  # the top block runs only at the positions pooling reads (same values)
        if first < n and top_block.supports(bb.layers[n - 1]):
            spans = None if batch.spans is None else np.array(batch.spans)
            at = top_block.pooled_positions(np.array(batch.lengths), spans, self.cfg.pooling,
                                            batch.pool_width)  # fmt: skip
        end = n if at is None else n - 1  # blocks run whole
        hooks = block_hooks(self.adapters)
        checkpoint = self.cfg.grad_checkpoint and self.training
        trained = min(max(first, self.k), end)
        h = embed(bb, batch.tokens) if h0 is None else h0
        h = run_layers(bb, h, first, trained)
        h = run_layers(bb, h, trained, end, hooks=hooks, checkpoint=checkpoint)
        weights = pooling_weights(batch, self.cfg.pooling)
        if at is not None:
            positions, valid = mx.array(at[0]), mx.array(at[1])
            h = top_block.block_at(bb.layers[n - 1], h, positions, layer_window(bb, n - 1))
            if n - 1 in hooks:
                h = hooks[n - 1](h)
            weights = mx.take_along_axis(weights, positions[:, None, :], axis=2)
            weights = weights * valid[:, None, :]
        return pool(final_norm(bb, h), weights)

    def __call__(self, batch, h0: mx.array | None = None) -> mx.array:
        return self.head_logits(self.features(batch, h0), self.head_for(batch))

    def head_for(self, batch) -> str:
        """The head that scores the batch: the task's own if the run has one (a calibrated
        LiDiRus head beside TERRa's), else the task's `head` (LiDiRus: TERRa's)."""
        return batch.task if batch.task in self.heads else batch.head

    def head_logits(self, features: mx.array, head: str) -> mx.array:
        """Logits of `head` on pooled features (B, S, hidden): RMS-normalised, dropout, linear,
        in float32 whatever the backbone computes in."""
        x = mx.fast.rms_norm(features.astype(mx.float32), None, 1e-6)
        return self.heads[head](self.dropout(x.reshape(x.shape[0], -1)))
