"""Units -> token ids -> length-bucketed, right-padded batches; the loss of a batch.

Each batch holds units of one task. Units scored against each other (a PARus pair, a RuCoS
query's candidates) always share a batch. Batches are filled with units of similar length, so
padding stays small without padding everything to a global maximum.

With `min_shared`, the units of one record (a MuSeRC passage's answers) are also kept together,
in balanced chunks of at most a batch, and each batch names its runs of rows that share a token
prefix of at least `min_shared` tokens (`Batch.segments`): the classifier runs such a prefix once
for its run (`model/shared_prefix.py`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_rsg.arch import top_block
from mlx_rsg.tasks import REGISTRY, Unit, encode_unit

# Training batches are drawn from pools of this many batches' worth of units sorted by length:
# batches stay tight in length while their order (and membership) still varies by seed.
BUCKET_POOL = 50


@dataclass
class EncodedUnit:
    unit: Unit
    ids: list[int]
    spans: list[tuple[int, int]]  # token [start, end) of each marked piece


@dataclass
class Batch:
    tokens: mx.array  # (B, L) int32, right-padded with 0
    lengths: mx.array  # (B,) int32
    head: str
    task: str
    labels: mx.array | None  # (B,) int32; None when unlabelled
    keys: list[tuple]  # unit keys, row by row
    ids: list[tuple]  # (task, key) per row: the prefix cache's example ids
    groups: mx.array | None = None  # (B,) group number within the batch (choice tasks)
    spans: mx.array | None = None  # (B, S, 2) token spans pooled (span tasks)
    pool_width: int = 1  # at least this many pooled positions per row (take_rows: the batch's)
    # (start, end, n): rows [start, end) all begin with the same n tokens and each has more
    segments: tuple[tuple[int, int, int], ...] = ()


def bos_id(tokenizer) -> int | None:
    """The BOS id if the tokenizer adds one by itself (Gemma, Llama), else None (Qwen)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    return bos if tokenizer.encode("a")[:1] == [bos] else None


def encode_units(units: Sequence[Unit], tokenizer, max_len: int) -> list[EncodedUnit]:
    """Token ids of every unit: pieces encoded one by one without special tokens, BOS first when
    the tokenizer adds one. Repeated pieces (a MuSeRC passage for each of its answers) are
    encoded once."""
    memo: dict[str, list[int]] = {}

    def encode(text: str) -> list[int]:
        if text not in memo:
            memo[text] = tokenizer.encode(text, add_special_tokens=False)
        return memo[text]

    bos = bos_id(tokenizer)
    out = []
    for u in units:
        ids, spans = encode_unit(u, encode, max_len, bos)
        out.append(EncodedUnit(u, ids, spans))
    return out


def common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """How many leading token ids every row has in common."""
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return n


def _blocks(encoded: Sequence[EncodedUnit]) -> list[list[EncodedUnit]]:
    """Units that must share a batch: a choice group, or a single unit."""
    blocks: list[list[EncodedUnit]] = []
    last_group: Any = object()
    for e in encoded:
        if e.unit.group is not None and e.unit.group == last_group:
            blocks[-1].append(e)
        else:
            blocks.append([e])
        last_group = e.unit.group
    return blocks


def _record_blocks(encoded: Sequence[EncodedUnit], batch_size: int) -> list[list[EncodedUnit]]:
    """Units kept together because they share their record's text: a record's units (a choice
    group is never split), in as few balanced chunks of at most batch_size rows as fit."""
    records: dict[tuple, list[list[EncodedUnit]]] = {}
    for block in _blocks(encoded):
        records.setdefault((block[0].unit.task, block[0].unit.key[0]), []).append(block)
    out = []
    for blocks in records.values():
        rows = sum(len(b) for b in blocks)
        target = rows / max(1, -(-rows // batch_size))  # balanced chunk size
        chunk: list[EncodedUnit] = []
        for block in blocks:
            if chunk and (len(chunk) + len(block) > batch_size or len(chunk) >= target):
                out.append(chunk)
                chunk = []
            chunk = chunk + block
        out.append(chunk)
    return out


def shared_segments(rows: Sequence[EncodedUnit], min_shared: int) -> tuple:
    """Batch.segments of `rows`: each run of consecutive rows of one record whose ids share at
    least `min_shared` leading tokens, every row keeping at least one token of its own (the one
    pooled)."""
    out, start = [], 0
    for end in range(1, len(rows) + 1):
        if end < len(rows) and _record(rows[end]) == _record(rows[start]):
            continue
        if end - start > 1:
            ids = [e.ids for e in rows[start:end]]
            n = min(common_prefix_len(ids), min(len(r) for r in ids) - 1)
            if n >= min_shared:
                out.append((start, end, n))
        start = end
    return tuple(out)


def _record(e: EncodedUnit) -> tuple:
    return e.unit.task, e.unit.key[0]


def _pack(blocks: list[list[EncodedUnit]], batch_size: int) -> list[list[EncodedUnit]]:
    """Consecutive blocks into batches of at most batch_size rows (a bigger block goes alone)."""
    batches: list[list[EncodedUnit]] = []
    rows: list[EncodedUnit] = []
    for block in blocks:
        if rows and len(rows) + len(block) > batch_size:
            batches.append(rows)
            rows = []
        rows = rows + block
    if rows:
        batches.append(rows)
    return batches


def make_batches(
    encoded: Sequence[EncodedUnit],
    batch_size: int,
    rng: random.Random | None = None,
    min_shared: int | None = None,
) -> list[Batch]:
    """Length-bucketed batches of one task's units. rng=None: deterministic, sorted by length
    (inference). With an rng: blocks are shuffled, sorted by length within pools of
    BUCKET_POOL batches, packed, and the batches shuffled (training). `min_shared`: keep each
    record's units together and mark the rows that share a prefix (module docstring)."""
    if not encoded:
        return []
    blocks = _blocks(encoded) if min_shared is None else _record_blocks(encoded, batch_size)

    def length(block):
        return max(len(e.ids) for e in block)

    if rng is None:
        groups = _pack(sorted(blocks, key=length), batch_size)
    else:
        rng.shuffle(blocks)
        pool = BUCKET_POOL * batch_size
        groups = []
        for i in range(0, len(blocks), pool):
            groups += _pack(sorted(blocks[i : i + pool], key=length), batch_size)
        rng.shuffle(groups)
    return [collate(rows, min_shared) for rows in groups]


def collate(rows: Sequence[EncodedUnit], min_shared: int | None = None) -> Batch:
    task = rows[0].unit.task
    spec = REGISTRY[task]
    L = max(len(e.ids) for e in rows)
    tokens = np.zeros((len(rows), L), np.int32)
    for j, e in enumerate(rows):
        tokens[j, : len(e.ids)] = e.ids
    labels = [e.unit.label for e in rows]
    groups = None
    if spec.choice:
        numbers: dict[Any, int] = {}
        groups = mx.array([numbers.setdefault(e.unit.group, len(numbers)) for e in rows])
    spans = None
    if spec.pooling == "span":
        spans = mx.array(np.array([e.spans for e in rows], np.int32).reshape(len(rows), -1, 2))
    return Batch(
        tokens=mx.array(tokens),
        lengths=mx.array([len(e.ids) for e in rows], dtype=mx.int32),
        head=spec.head,
        task=task,
        labels=None if any(x is None for x in labels) else mx.array(labels, dtype=mx.int32),
        keys=[e.unit.key for e in rows],
        ids=[(task, e.unit.key) for e in rows],
        groups=groups,
        spans=spans,
        segments=() if min_shared is None else shared_segments(rows, min_shared),
    )


def loss_fn(model, batch: Batch, h0: mx.array | None = None,
            head_only: bool = False) -> tuple[mx.array, int]:  # fmt: skip
    """Mean cross-entropy and how many examples it averages. Label tasks: over the head's
    classes per unit. Choice tasks: a softmax over each group's unit scores (groups may differ
    in size, as RuCoS candidates do), the target being the unit labelled 1. `head_only`: the
    loss reaches the head alone (no gradient into the backbone; the same loss)."""
    features = model.features(batch, h0)
    if head_only:
        features = mx.stop_gradient(features)
    logits = model.head_logits(features, model.head_for(batch))
    if not REGISTRY[batch.task].choice:
        return nn.losses.cross_entropy(logits, batch.labels, reduction="mean"), logits.shape[0]
    scores = logits[:, 0]
    n_groups = int(batch.groups.max().item()) + 1
    member = batch.groups[None, :] == mx.arange(n_groups)[:, None]  # (G, B)
    masked = mx.where(member, scores[None, :], -mx.inf)
    gold = (member * (batch.labels == 1)[None, :] * scores[None, :]).sum(axis=1)
    return (mx.logsumexp(masked, axis=1) - gold).mean(), n_groups


def examples_in(batch: Batch) -> int:
    """What loss_fn averages over: rows, or choice groups."""
    if batch.groups is None:
        return len(batch.keys)
    return len(set(batch.groups.tolist()))


def shard_range(batch: Batch, rank: int, size: int) -> tuple[int, int]:
    """Rows [start, end) of `batch` for `rank` of `size`: about equal shares, never splitting a
    choice group (its units are scored against each other). May be empty."""
    n = len(batch.keys)
    groups = batch.groups.tolist() if batch.groups is not None else list(range(n))
    starts = [i for i in range(n) if i == 0 or groups[i] != groups[i - 1]] + [n]

    def cut(r: int) -> int:  # the first group start at or after r's equal share
        return min(s for s in starts if s >= round(r * n / size))

    return cut(rank), cut(rank + 1)


def take_rows(batch: Batch, start: int, end: int) -> Batch:
    """Rows [start, end) of a batch, still padded to the batch's length (so dropout masks and
    shapes match the whole batch's rows); choice groups renumbered from 0."""
    groups = None
    if batch.groups is not None:
        groups = batch.groups[start:end]
        groups = groups - groups.min()
    width = batch.pool_width
    if batch.spans is not None:  # the positions the whole batch pools at (last: always 1)
        at = top_block.pooled_positions(np.array(batch.lengths), np.array(batch.spans), "span",
                                        width)  # fmt: skip
        width = at[0].shape[1]
    return Batch(
        tokens=batch.tokens[start:end],
        lengths=batch.lengths[start:end],
        head=batch.head,
        task=batch.task,
        labels=None if batch.labels is None else batch.labels[start:end],
        keys=batch.keys[start:end],
        ids=batch.ids[start:end],
        groups=groups,
        spans=None if batch.spans is None else batch.spans[start:end],
        pool_width=width,
        segments=segments_within(batch.segments, start, end),
    )


def segments_within(segments: tuple, start: int, end: int) -> tuple:
    """Batch.segments of rows [start, end) of a batch: the runs that reach into them, cut to
    them and renumbered from 0."""
    return tuple((max(s, start) - start, min(e, end) - start, n) for s, e, n in segments
                 if s < end and e > start)  # fmt: skip
