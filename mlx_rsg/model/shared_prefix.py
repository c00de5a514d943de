"""Units that share a passage: its keys and values computed once, each unit's own tokens alone.

A MuSeRC passage is asked ~24 answers about, a RuCoS query has ~15 candidate entities: every unit
of such a record starts with the same long run of tokens. Attention is causal, so the hidden
states of those shared tokens do not depend on what follows them. We run the shared tokens once
(batch 1), keep every layer's keys and values, and run each unit's own tokens (the suffix, a
question and answer) with those keys and values in front: the same function as the unshared
forward, computed on P + B x S tokens instead of B x (P + S). Only the floating-point summation
order differs (tested).

Which units share is found on the token ids, not on the text: the units of one record (one task's
`key[0]`) whose ids have a common prefix of at least `MIN_SHARED` tokens. Truncation may cut a
passage at different points for different answers; the common prefix then ends at the first cut.

The classifier's mlx-lm blocks are called as usual, with a cache object that prepends the shared
keys and values (`update_and_fetch`) and gives the RoPE offset; masks are built for the offset
(and the sliding window of a Gemma 3 layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np
from mlx_lm.models.base import create_causal_mask

from mlx_rsg.accel.cpu_parallel import batch_rows
from mlx_rsg.model.backbone import embed, final_norm, layer_window
from mlx_rsg.model.classifier import pool, pooling_weights
from mlx_rsg.model.methods.mlp_adapter import block_hooks
from mlx_rsg.tasks import REGISTRY

# Below this many shared tokens a separate batch-1 pass over them costs more than it saves.
MIN_SHARED = 64


@dataclass
class SharedGroup:
    """Units of one record whose token ids all start with `prefix`."""

    prefix: list[int]
    members: list  # EncodedUnit, each with len(ids) > len(prefix)


def pools_last_token(model, task: str) -> bool:
    """Whether the classifier reads `task` at the last token only (the suffix pass sees nothing
    of the prefix's hidden states, so mean and span pooling run unshared)."""
    return model.cfg.pooling == "last" and REGISTRY[task].pooling != "span"


def common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return n


def group_shared(
    encoded: Sequence, min_shared: int | None = None
) -> tuple[list[SharedGroup], list]:
    """Split units into groups that share a prefix of >= `min_shared` tokens (default
    MIN_SHARED; units of one record, two or more) and the rest. Every member keeps at least one
    token of its own: the pooled last token is computed in the suffix pass."""
    min_shared = MIN_SHARED if min_shared is None else min_shared
    by_record: dict = {}
    for e in encoded:  # record idx repeat across tasks (training fills all tasks at once)
        by_record.setdefault((e.unit.task, e.unit.key[0]), []).append(e)
    groups, rest = [], []
    for members in by_record.values():
        n = common_prefix_len([e.ids for e in members]) if len(members) > 1 else 0
        n = min(n, min(len(e.ids) for e in members) - 1)
        if n >= min_shared:
            groups.append(SharedGroup(list(members[0].ids[:n]), members))
        else:
            rest.extend(members)
    return groups, rest


class _Recorder:
    """A layer's cache in the prefix pass: keeps the keys and values it is given."""

    offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.keys, self.values = keys, values
        return keys, values


class _SharedKV:
    """A layer's cache in the suffix pass: the prefix's keys and values (batch 1) broadcast to
    the batch, in front of the suffix's own; `offset` places the suffix after the prefix."""

    def __init__(self, recorded: _Recorder):
        self.keys, self.values = recorded.keys, recorded.values
        self.offset = self.keys.shape[2]

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        def join(shared: mx.array, own: mx.array) -> mx.array:
            shared = mx.broadcast_to(shared, (own.shape[0], *shared.shape[1:]))
            return mx.concatenate([shared, own.astype(shared.dtype)], axis=2)

        return join(self.keys, keys), join(self.values, values)


def _run(model, h: mx.array, end: int, caches: list, offset: int) -> mx.array:
    """Blocks [0, end) of the classifier's backbone (with its adapters) on h, each with its
    cache; masks causal from `offset` on, within the layer's sliding window."""
    bb = model.backbone
    hooks = block_hooks(model.adapters)
    masks: dict = {}
    for i in range(end):
        window = layer_window(bb, i)
        if window not in masks:
            masks[window] = create_causal_mask(h.shape[1], offset, window_size=window)
        h = bb.layers[i](h, masks[window], caches[i])
        if i in hooks:
            h = hooks[i](h)
    return h


class PrefixState:
    """The shared tokens run once through blocks [0, end): their hidden states and every
    block's keys and values, ready for any number of suffix batches."""

    def __init__(self, model, prefix: Sequence[int], end: int):
        self.model, self.end, self.length = model, end, len(prefix)
        recorders = [_Recorder() for _ in range(end)]
        self.hidden = _run(model, embed(model.backbone, mx.array([list(prefix)])), end,
                           recorders, 0)  # fmt: skip
        self.caches = [_SharedKV(r) for r in recorders]
        mx.eval(self.hidden, [(c.keys, c.values) for c in self.caches])

    def suffix_hidden(self, tokens: mx.array) -> mx.array:
        """Hidden states (B, S, D) after block `end` of right-padded suffix tokens (B, S)."""
        h = embed(self.model.backbone, tokens)
        return _run(self.model, h, self.end, self.caches, self.length)


def suffix_batch(batch, prefix_len: int):
    """`batch` (whole units, every one longer than prefix_len) as its suffixes: tokens and
    lengths shifted by the prefix."""
    tokens = batch.tokens[:, prefix_len:]
    return replace(batch, tokens=tokens, lengths=batch.lengths - prefix_len, spans=None)


def shared_logits(model, state: PrefixState, batch) -> mx.array:
    """The classifier's logits (evaluated) for a batch of whole units that all start with the
    state's prefix (last-token pooling): the suffixes run against the shared keys and values,
    one row chunk per CPU core."""

    def run(part) -> mx.array:
        suffix = suffix_batch(part, state.length)
        h = final_norm(model.backbone, state.suffix_hidden(suffix.tokens))
        return model.head_logits(pool(h, pooling_weights(suffix, "last")), model.head_for(part))

    return batch_rows(run, batch)


def shared_rows(state: PrefixState, batch) -> list[np.ndarray]:
    """Each unit's whole hidden states after block `state.end` (prefix rows then suffix rows),
    unpadded, as float32 numpy: what the frozen-prefix cache stores."""
    suffix = suffix_batch(batch, state.length)
    h = state.suffix_hidden(suffix.tokens).astype(mx.float32)
    head = np.array(state.hidden[0].astype(mx.float32))
    tails = np.array(h)
    return [
        np.concatenate([head, tail[:n]]) for tail, n in zip(tails, suffix.lengths.tolist(),
                                                             strict=True)
    ]  # fmt: skip
