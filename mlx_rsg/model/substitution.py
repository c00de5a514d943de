"""RWSD decided by the language model itself: put each candidate in the pronoun's place and
compare how likely the words after the pronoun are (Trinh & Le 2018, "A Simple Method for
Commonsense Reasoning", partial scoring). The tail is the same for every candidate of one
pronoun, so its log-likelihoods compare directly; of the records that ask about one pronoun of
one text (`tasks.rwsd.pronoun_key`: a schema's twins), the best-scoring candidate is True and
the others False; a record alone in its group is False (the more common answer in train).

Nothing is trained: the run's decision (run.json `decisions`) names the base model the
classifier was trained from and how many of its bottom blocks the classifier kept as they were
(`shared_blocks`). The language model is the classifier's embedding and those blocks, shared,
then the base model's own blocks above them and its final norm, read by the classifier's
output layer (its LM head, or the tied embedding). On Gemma-3-270M it needs all 18 blocks: read
after block 12 it is at chance (docs/training.md, "RWSD by substitution, measured").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.utils import save_config

from mlx_rsg.accel import runtime
from mlx_rsg.accel.fast_quant import shared_dequant
from mlx_rsg.errors import UserError, located
from mlx_rsg.model.backbone import (
    Backbone,
    embed,
    final_norm,
    load_checked,
    output_layer,
    output_rows,
    run_layers,
    weight_rows,
)
from mlx_rsg.model_files import weight_hashes
from mlx_rsg.quant import rtn
from mlx_rsg.quant.recipe import Recipe
from mlx_rsg.tasks.rwsd import RWSDRecord, pronoun_key, substituted

BATCH = 8  # records per forward through the blocks


@dataclass
class Substitution:
    """The language model that decides RWSD for a run, and its tokenizer."""

    lm: Backbone
    tokenizer: Any
    task: str = "RWSD"

    def logits(self, records: Sequence[RWSDRecord]) -> np.ndarray:
        """(len(records), 2) logits of the RWSD head's shape (False, True), one row per record
        (RWSD's one unit per record), as `group_logits` makes them."""
        pairs = [substituted(r) for r in records]
        return group_logits(records, tail_log_likelihoods(self.lm, self.tokenizer, pairs))


def group_logits(records: Sequence[RWSDRecord], scores: np.ndarray) -> np.ndarray:
    """Per record (False, True) logits: True leads by how far the record's candidate out-scores
    the best other candidate for its pronoun (`pronoun_key`); a record alone gets -1 (False),
    and a tie 0 (False) (no evidence either way: a pronoun that ends the text has no tail)."""
    out = np.zeros((len(records), 2), dtype=np.float32)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[pronoun_key(r)].append(i)
    for members in groups.values():
        for i in members:
            others = [scores[j] for j in members if j != i]
            out[i, 1] = scores[i] - max(others) if others else -1.0
    return out


def tail_log_likelihoods(lm: Backbone, tokenizer, pairs: Sequence[tuple[str, str]],
                         batch_size: int = BATCH) -> np.ndarray:  # fmt: skip
    """Per (head, tail): log P(tail's tokens | head), the tail's tokens those of head + " " +
    tail after the head's own (from the last token they share, where one crosses the space)."""
    rows = []
    for head, tail in pairs:
        prefix = tokenizer.encode(head)
        ids = tokenizer.encode(head + " " + tail) if tail else prefix
        shared = next((i for i, (a, b) in enumerate(zip(prefix, ids, strict=False)) if a != b),
                      min(len(prefix), len(ids)))  # fmt: skip
        rows.append((ids, max(shared, 1)))
    out = np.zeros(len(rows), dtype=np.float64)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # batches of like lengths
    for at in range(0, len(order), WAVE):
        wave = order[at:at + WAVE]
        batches = [wave[b:b + batch_size] for b in range(0, len(wave), batch_size)]
        states, where = _tail_states(lm, [[rows[i] for i in chunk] for chunk in batches])
        if where:
            targets = [rows[batches[k][b]][0][t] for k, b, t in where]
            logp = np.array(token_log_probs(lm, states, targets), dtype=np.float64)
            np.add.at(out, [batches[k][b] for k, b, _ in where], logp)  # in token order
    return out


def _tail_states(lm: Backbone, batches: list[list[tuple[list[int], int]]]) -> tuple:
    """The final-normed states (N, D) that predict each tail token ids[t], t >= first, of every
    (ids, first) of every batch (right-padded: causal, a pad never reaches a real position),
    and the (batch, row, t) each of them predicts. Block by block over all the batches: a
    quantized block is dequantized once for them all (`shared_dequant`), not once per batch."""
    hs = []
    for batch in batches:
        width = max(len(ids) for ids, _ in batch)
        hs.append(embed(lm, mx.array([ids + [0] * (width - len(ids)) for ids, _ in batch])))
    for i in range(lm.num_layers):
        with shared_dequant():
            for k, h in enumerate(hs):
                hs[k] = run_layers(lm, h, i, i + 1)
                mx.eval(hs[k])  # one batch's activations alive at a time
    states, where = [], []
    for k, (batch, h) in enumerate(zip(batches, hs, strict=True)):
        at = [(b, t) for b, (ids, first) in enumerate(batch) for t in range(first, len(ids))]
        if at:
            rows_b, pos = mx.array([b for b, _ in at]), mx.array([t - 1 for _, t in at])
            states.append(final_norm(lm, h[rows_b, pos]).astype(mx.float32))  # per row
            where += [(k, b, t) for b, t in at]
    return (mx.concatenate(states) if states else None), where


def token_log_probs(lm: Backbone, h: mx.array, targets: list[int]) -> mx.array:
    """log P(target | final-normed state) per row of h (N, D), through the output layer
    (`output_layer`: an LM head, or the tied embedding), ROWS_PER_PASS states at a time.
    Each pass reads the output weights OUTPUT_CHUNK rows at a time (dequantized, where the
    layer is quantized) and multiplies them as a plain GEMM: on this CPU MLX's quantized
    matmul over Gemma's 262,144 output rows took 36.8 s for 8 RWSD records of the real run's
    q8 copy, the chunks 3.7 s (the logits are the same: the rows are what the quantized layer
    multiplies by). The passes are what make the rows read once per call, not once per batch
    of records: read per batch of 8, a 3-bit table made a quantized copy's RWSD scoring 2.4 to
    3.6 times slower than the float run's (docs/quantization.md)."""
    h = h.astype(mx.float32)
    out = output_layer(lm)
    bias = out.get("bias") if isinstance(out, nn.Module) else None
    parts = []
    for at in range(0, h.shape[0], ROWS_PER_PASS):
        part, ids = h[at:at + ROWS_PER_PASS], targets[at:at + ROWS_PER_PASS]
        picked = mx.sum(part * output_rows(lm, ids), axis=-1)
        if bias is not None:
            picked = picked + bias[mx.array(ids)].astype(mx.float32)
        total = None
        for start in range(0, out.weight.shape[0], OUTPUT_CHUNK):
            rows = slice(start, start + OUTPUT_CHUNK)
            logits = part @ weight_rows(out, rows).T
            if bias is not None:
                logits = logits + bias[rows].astype(mx.float32)
            lse = mx.logsumexp(logits, axis=-1)
            total = lse if total is None else mx.logaddexp(total, lse)
            mx.eval(total)  # one chunk's rows alive at a time
        parts.append(picked - total)
    return mx.concatenate(parts) if parts else mx.zeros((0,))


OUTPUT_CHUNK = 16384  # output rows read at a time: 40 MB at hidden 640 (float32)
ROWS_PER_PASS = 2048  # states per pass over the output rows: 128 MB of logits per chunk
WAVE = 256  # records whose hidden states are kept between blocks (~2.5 KB per token at 640)
OWN_BLOCKS = "substitution"  # a quantized run's directory of the language model's own blocks


def decision_entry(base_dir: Path, shared_blocks: int, dev: dict[str, Any]) -> dict[str, Any]:
    """run.json's `decisions.RWSD` for a run that decides RWSD by substitution."""
    base_dir = Path(base_dir).resolve()
    return {"by": "substitution", "lm": {"path": str(base_dir), "sha256": weight_hashes(base_dir)},
            "shared_blocks": shared_blocks, "dev": dev}  # fmt: skip


def build(
    classifier_bb: Backbone,
    entry: dict[str, Any],
    tokenizer,
    run_dir: str | Path | None = None,
    verify: bool = True,
    cores: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Substitution:
    """The language model of a decision entry: the classifier's embedding and bottom
    `shared_blocks` blocks (the same modules, quantized where the classifier's are), then the
    base model's own blocks above them and its final norm: read from the base model directory
    (`lm.path`), or, in a quantized run, from its own copy (`lm.copied`: RUN_DIR/substitution,
    quantized as its backbone, `write_own_blocks`). Only the modules it keeps are loaded."""
    where = Path(run_dir or ".") / "run.json"

    def fail(field: str, msg: str) -> UserError:
        return UserError(located(where, None, f"decisions.RWSD.{field}", msg))

    ref = entry["lm"]
    path = Path(run_dir or ".") / ref["path"] if ref.get("copied") else Path(ref["path"])
    if not path.is_dir():
        raise fail("lm.path", f"{path} does not exist (RWSD is decided by substitution with the "
                   "base model it names; move it back)")  # fmt: skip
    if verify and weight_hashes(path) != ref["sha256"]:
        raise fail("lm.sha256", f"the weights in {path} are not the ones this run's decision "
                   "was made with")  # fmt: skip
    model, config = load_checked(path, lazy=True, strict=False)
    lm = Backbone(model=model, config=config)
    shared = entry["shared_blocks"]
    if not 0 <= shared <= min(classifier_bb.num_layers, lm.num_layers):
        raise fail("shared_blocks", f"{shared} is not a block count of both the classifier and "
                   "its base model")  # fmt: skip
    # the classifier's modules in place of the ones not loaded (never evaluated, never stored)
    lm.decoder.embed_tokens = classifier_bb.decoder.embed_tokens
    if "lm_head" in classifier_bb.model:  # an untied output layer: the classifier's, shared
        lm.model.lm_head = classifier_bb.model.lm_head
    for i in range(shared):
        lm.decoder.layers[i] = classifier_bb.layers[i]
    lm.runtime = runtime.place(lm.model, config, use=dict(classifier_bb.runtime.fast_paths),
                               cores=cores)  # fmt: skip
    mx.eval(lm.model.parameters())
    if log is not None:
        log(f"RWSD: decided by substitution through {lm.num_layers} blocks, the bottom {shared} "
            "shared with the classifier")  # fmt: skip
    return Substitution(lm, tokenizer)


def write_own_blocks(sub: Substitution, shared: int, recipe: Recipe, dst: Path) -> dict:
    """A quantized run's copy of its language model's own blocks (above the `shared` ones) and
    final norm, rounded to nearest as `recipe` rounds the backbone: its bits and group, its
    `[overrides]` by module path (mlx-lm's per-path entries in the copy's config, as the backbone
    records them), its scale dtype; as a model directory `build` reads with its embedding and
    shared blocks from the classifier. A module whose width is not a multiple of its group stays
    as it is, as in the backbone. Returns what it stored (`rtn.stored`)."""
    lm = sub.lm
    own = tuple(f"model.layers.{i}." for i in range(shared, lm.num_layers))
    qconfig = rtn.quantize_modules(lm.model, lm.config, recipe, under=own)
    holder = nn.Module()
    holder.layers = lm.decoder.layers[shared:]
    if recipe.scale_dtype:
        rtn.cast_scales(holder, getattr(mx, recipe.scale_dtype))
    holder.norm = lm.decoder.norm
    keep = own + ("model.norm.",)
    weights = {k: v for k, v in tree_flatten(lm.model.parameters()) if k.startswith(keep)}
    dst.mkdir(parents=True)
    mx.save_safetensors(str(dst / "model.safetensors"), weights)
    save_config(qconfig, config_path=dst / "config.json")
    return rtn.stored(holder)
