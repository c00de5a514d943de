"""Units that share a passage: its keys and values computed once, each unit's own tokens alone.

A MuSeRC passage is asked ~24 answers about, a RuCoS query has ~15 candidate entities: every unit
of such a record starts with the same long run of tokens. Attention is causal, so the hidden
states of those shared tokens do not depend on what follows them. We run the shared tokens once
(batch 1), keep every layer's keys and values, and run each unit's own tokens (the suffix, a
question and answer) with those keys and values in front: the same function as the unshared
forward, computed on P + B x S tokens instead of B x (P + S). Only the floating-point summation
order differs (tested).

Which units share is found on the token ids, not on the text: units of one task whose sorted ids
have a common prefix of at least `MIN_SHARED` tokens (`group_shared`; a record's units, or records
that repeat a long text). Truncation may cut a passage at different points for different
answers; the common prefix then ends at the first cut. Mean and span pooling read the shared
tokens' hidden states as well.

The classifier's mlx-lm blocks are called as usual, with a cache object that prepends the shared
keys and values (`update_and_fetch`) and gives the RoPE offset; masks are built for the offset
(and the sliding window of a Gemma 3 layer).

Training shares too (`segment_features`, what the classifier runs for a batch with
`Batch.segments`): the prefix and the suffixes run in one differentiable function, so autodiff
sums every suffix's gradient into the prefix's keys and values, and the loss and gradients are
those of the unshared batch (tested). Inference keeps one `PrefixState` per group for all its
batches instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np
from mlx_lm.models.base import create_causal_mask

from mlx_rsg.accel.cpu_parallel import batch_rows
from mlx_rsg.model.backbone import embed, final_norm, layer_window
from mlx_rsg.model.batching import common_prefix_len, take_rows
from mlx_rsg.model.methods.mlp_adapter import block_hooks
from mlx_rsg.model.pooling import pool, pooling_weights
from mlx_rsg.model.precision import numpy_rows

__all__ = ["MIN_SHARED", "PrefixState", "common_prefix_len", "group_shared", "segment_features"]

# Below this many shared tokens a separate batch-1 pass over them costs more than it saves.
MIN_SHARED = 64


@dataclass
class SharedGroup:
    """Units of one task whose token ids all start with `prefix`."""

    prefix: list[int]
    members: list  # EncodedUnit, each with len(ids) > len(prefix)


def group_shared(
    encoded: Sequence, min_shared: int | None = None
) -> tuple[list[SharedGroup], list]:
    """Split units into groups that share a prefix of >= `min_shared` tokens (default
    MIN_SHARED; two or more units of one task) and the rest. Found on the token ids, sorted: a
    MuSeRC passage's answers, a RuCoS query's candidates, and as well the records that repeat a
    text (DaNetQA questions on one passage, RUSSE pairs on one word-in-sentence, LiDiRus pairs
    on one sentence). Every member keeps at least one token of its own (the suffix pass needs
    one). Greedy over the sorted ids: a run grows while its common prefix stays >= min_shared
    and at least half of what it was (a MuSeRC passage's questions share the passage; a
    passage that merely starts like another does not join it)."""
    min_shared = MIN_SHARED if min_shared is None else min_shared
    by_task: dict = {}
    for e in encoded:  # training fills all tasks at once
        by_task.setdefault(e.unit.task, []).append(e)
    groups, rest = [], []
    for units in by_task.values():
        run: list = []
        shared = 0
        for e in sorted(units, key=lambda e: e.ids):
            if run:
                n = min(shared, common_prefix_len([run[0].ids, e.ids]), len(e.ids) - 1)
                # a newcomer that would cut the run's prefix below half starts its own run
                if n >= min_shared and (len(run) == 1 or 2 * n >= shared):
                    run.append(e)
                    shared = n
                    continue
                _close(run, shared, groups, rest)
            run, shared = [e], len(e.ids) - 1
        _close(run, shared, groups, rest)
    return groups, rest


def _close(run: list, shared: int, groups: list, rest: list) -> None:
    if len(run) > 1:
        groups.append(SharedGroup(list(run[0].ids[:shared]), run))
    else:
        rest.extend(run)


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


def _run(model, h: mx.array, start: int, end: int, caches: dict, offset: int) -> mx.array:
    """Blocks [start, end) of the classifier's backbone (with its adapters) on h, block i with
    caches[i]; masks causal from `offset` on, within the layer's sliding window."""
    bb = model.backbone
    hooks = block_hooks(model.adapters)
    masks: dict = {}
    for i in range(start, end):
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
        recorders = {i: _Recorder() for i in range(end)}
        self.hidden = _run(model, embed(model.backbone, mx.array([list(prefix)])), 0, end,
                           recorders, 0)  # fmt: skip
        self.caches = {i: _SharedKV(r) for i, r in recorders.items()}
        mx.eval(self.hidden, [(c.keys, c.values) for c in self.caches.values()])

    def suffix_hidden(self, tokens: mx.array) -> mx.array:
        """Hidden states (B, S, D) after block `end` of right-padded suffix tokens (B, S)."""
        h = embed(self.model.backbone, tokens)
        return _run(self.model, h, 0, self.end, self.caches, self.length)


def suffix_batch(batch, prefix_len: int):
    """`batch` (whole units, every one longer than prefix_len) as its suffixes: tokens and
    lengths shifted by the prefix."""
    tokens = batch.tokens[:, prefix_len:]
    return replace(batch, tokens=tokens, lengths=batch.lengths - prefix_len, spans=None)


def shared_logits(model, state: PrefixState, batch) -> mx.array:
    """The classifier's logits (evaluated) for a batch of whole units that all start with the
    state's prefix: the suffixes run against the shared keys and values, one row chunk per CPU
    core."""

    def run(part) -> mx.array:
        own = state.suffix_hidden(suffix_batch(part, state.length).tokens)
        features = _pooled(model, part, state.hidden, own, state.length)
        return model.head_logits(features, model.head_for(part))

    return batch_rows(run, batch, model.backbone.runtime.row_parts)


def _pooled(model, batch, prefix: mx.array, own: mx.array, n: int) -> mx.array:
    """Pooled features (B, S, D) of `batch`'s rows, which all begin with the same n tokens, from
    the last block's output on those n tokens (1, n, D) and on each row's own tokens (B, W, D):
    the last token is among a row's own; mean and span pooling read the rows whole."""
    bb = model.backbone
    if batch.spans is None and model.cfg.pooling == "last":
        return mx.take_along_axis(final_norm(bb, own), (batch.lengths - n - 1)[:, None, None],
                                  axis=1)  # fmt: skip
    whole = mx.concatenate([mx.broadcast_to(prefix, (own.shape[0], *prefix.shape[1:])), own], 1)
    return pool(final_norm(bb, whole), pooling_weights(batch, model.cfg.pooling))


def shared_rows(state: PrefixState, batch) -> list[np.ndarray]:
    """Each unit's whole hidden states after block `state.end` (prefix rows then suffix rows),
    unpadded, as numpy in the compute dtype: what the frozen-prefix cache stores."""
    suffix = suffix_batch(batch, state.length)
    head = numpy_rows(state.hidden[0])
    tails = numpy_rows(state.suffix_hidden(suffix.tokens))
    return [
        np.concatenate([head, tail[:n]]) for tail, n in zip(tails, suffix.lengths.tolist(),
                                                             strict=True)
    ]  # fmt: skip


def segment_features(model, batch, h0: mx.array | None = None) -> mx.array:
    """What `model.features(batch, h0)` returns, with each of the batch's `segments` (rows that
    share a prefix) running its prefix once: the prefix as a batch of one through the blocks the
    call runs (recording their keys and values), then the rows' own tokens after it. Rows
    outside the segments run whole. Differentiable: one graph, so the prefix's gradient is the
    sum of its rows'. `h0`: block K's input, as for `features`.

    With last-token pooling the last block's work on the prefix past its keys and values feeds
    nothing and is never evaluated (MLX computes only what the output needs). Without
    --grad-checkpoint's recomputation: the shared graph keeps P + B x S positions' activations,
    not B x (P + S)."""
    parts, row = [], 0
    for start, end, n in batch.segments:
        if row < start:
            parts.append(_whole(model, batch, h0, row, start))
        parts.append(_shared(model, batch, h0, start, end, n))
        row = end
    if row < len(batch.keys):
        parts.append(_whole(model, batch, h0, row, len(batch.keys)))
    return mx.concatenate(parts) if len(parts) > 1 else parts[0]


def _rows(batch, start: int, end: int):
    """Rows [start, end) of the batch, cut to their own longest length, without segments."""
    width = max(batch.lengths[start:end].tolist())
    part = take_rows(batch, start, end)
    return replace(part, tokens=part.tokens[:, :width], segments=()), width


def _whole(model, batch, h0, start: int, end: int) -> mx.array:
    part, width = _rows(batch, start, end)
    return model.features(part, None if h0 is None else h0[start:end, :width])


def _shared(model, batch, h0, start: int, end: int, n: int) -> mx.array:
    """Features of rows [start, end), which all begin with the same n tokens."""
    bb = model.backbone
    first = 0 if h0 is None else model.k
    part, width = _rows(batch, start, end)
    if h0 is None:
        prefix, own = embed(bb, part.tokens[:1, :n]), embed(bb, part.tokens[:, n:])
    else:
        prefix, own = h0[start : start + 1, :n], h0[start:end, n:width]
    recorders = {i: _Recorder() for i in range(first, model.n_blocks)}
    prefix = _run(model, prefix, first, model.n_blocks, recorders, 0)
    shared = {i: _SharedKV(r) for i, r in recorders.items()}
    own = _run(model, own, first, model.n_blocks, shared, n)
    return _pooled(model, part, prefix, own, n)
