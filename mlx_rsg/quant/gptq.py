"""Calibrated (GPTQ) quantization of a backbone on RSG training examples.

Round-to-nearest rounds every weight on its own. GPTQ (mlx-lm's `mlx_lm.quant.gptq`) rounds the
columns of each Linear one by one and pushes every rounding error onto the columns not yet
rounded, weighted by the layer's input Hessian H = sum x x^T over calibration tokens, so the
layer's *outputs* on inputs like the calibration set move as little as possible.

We reuse mlx-lm's `gptq_quantize` unchanged except for two things:
- the forward it calibrates on is ours, `backbone.hidden_states` (embedding, layers, final norm),
  not the 262k-vocab LM head classification never runs;
- the Hessian counts real tokens only: calibration batches are right-padded (pad id 0), and our
  Catcher zeroes the pad rows before accumulating x x^T (causal attention means pads never
  change a real token's activations, so this is exact).
The embedding table is not a Linear: mlx-lm's fallback quantizes it round-to-nearest with
`embed_bits` / `embed_group_size` (it is only gathered, so there is no Hessian for it).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.quant import gptq

from mlx_rsg.accel import fastpaths
from mlx_rsg.data import available_splits, load_split
from mlx_rsg.distributed import SINGLE, World
from mlx_rsg.errors import UserError
from mlx_rsg.model.backbone import Backbone, hidden_states, load_tokenizer
from mlx_rsg.model.batching import encode_units
from mlx_rsg.quant import rtn
from mlx_rsg.tasks import REGISTRY, make_units

PAD_ID = 0  # batching.collate's right padding
CALIB_BATCH = 8  # rows per calibration forward


def calibration_tasks(data_dir: str | Path) -> list[str]:
    """The tasks with a train split under data_dir (LiDiRus has none)."""
    return [t for t in REGISTRY if "train" in available_splits(data_dir, t)]


def calibration_batches(
    data_dir: str | Path,
    tasks: list[str] | None,
    tokenizer,
    n_examples: int = 128,
    max_len: int = 128,
    seed: int = 0,
) -> list[mx.array]:
    """Token batches (B, L) int32, right-padded with PAD_ID, of about n_examples units sampled
    evenly from the *train* splits of `tasks` (None: every task with a train split), encoded
    exactly as training encodes them. Rows are sorted by length so padding stays small."""
    tasks = calibration_tasks(data_dir) if tasks is None else list(tasks)
    if not tasks:
        raise UserError(f"{data_dir}: no task has a train split to calibrate on")
    rng = np.random.default_rng(seed)
    per_task = math.ceil(n_examples / len(tasks))
    rows: list[list[int]] = []
    for task in tasks:
        units = make_units(task, load_split(data_dir, task, "train"), train=True, rng=rng,
                           max_negatives=4)
        if not units:
            continue
        pick = rng.choice(len(units), size=min(per_task, len(units)), replace=False)
        encoded = encode_units([units[i] for i in sorted(pick)], tokenizer, max_len)
        rows += [e.ids for e in encoded if e.ids]
    if not rows:
        raise UserError(f"{data_dir}: the train splits of {', '.join(tasks)} hold no examples")
    rows = sorted(rows[:n_examples], key=len)  # the last task may lose a few to the cap
    batches = []
    for i in range(0, len(rows), CALIB_BATCH):
        chunk = rows[i : i + CALIB_BATCH]
        width = max(len(r) for r in chunk)
        batches.append(mx.array([r + [PAD_ID] * (width - len(r)) for r in chunk], dtype=mx.int32))
    return batches


def real_token_mask(tokens: mx.array) -> mx.array:
    """(B, L) 1.0 up to each row's last non-pad token, 0.0 on the right padding. (Tokenizers
    map text to id 0 only if it is their pad or unk piece - Gemma: <pad> - so a trailing 0 is
    padding in practice.)"""
    nonpad = tokens != PAD_ID
    last = tokens.shape[1] - mx.argmax(nonpad[:, ::-1], axis=1)  # one past the last real token
    last = mx.where(nonpad.any(axis=1), last, 0)
    return (mx.arange(tokens.shape[1])[None, :] < last[:, None]).astype(mx.float32)


@dataclass
class _Current:
    mask: mx.array | None = None  # (B, L) real-token mask of the batch being run


def _masked_catcher(current: _Current, world: World):
    """A drop-in for mlx-lm's gptq Catcher whose Hessian skips pad tokens. With several ranks
    each accumulates its share of the batches; reading H sums the shares over the ranks."""
    class MaskedCatcher(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
            self.local_H = mx.array(0.0)

        @property
        def H(self) -> mx.array:
            return world.all_sum(self.local_H)

        @H.deleter
        def H(self) -> None:
            del self.local_H

        def __call__(self, x, *args, **kwargs):
            xm = x if current.mask is None else x * current.mask[..., None].astype(x.dtype)
            xf = xm.flatten(0, -2).astype(mx.float32)
            self.local_H = self.local_H + xf.T @ xf
            return self.module(x, *args, **kwargs)

    return MaskedCatcher


class _ClassifierForward(nn.Module):
    """What GPTQ calibrates: embedding + decoder layers + final norm. Its only child is the
    mlx-lm decoder under the name `model`, so module paths ("model.layers.0.mlp.up_proj",
    "model.embed_tokens") are the mlx-lm Model's own and the config GPTQ writes is loadable."""

    def __init__(self, bb: Backbone, current: _Current):
        super().__init__()
        self.model = bb.decoder
        self._bb = bb  # not an array or module: not part of the parameter tree
        self._current = current

    def __call__(self, batches: list[mx.array]) -> mx.array:
        out = None
        for tokens in batches:  # gptq_quantize hands us data[s:s+1], a list of one batch
            self._current.mask = real_token_mask(tokens)
            out = hidden_states(self._bb, tokens)
        return out


def gptq_quantize_backbone(
    bb: Backbone,
    batches: list[mx.array],
    bits: int,
    group_size: int,
    embed_bits: int,
    embed_group_size: int,
    log=None,
    world: World = SINGLE,
) -> tuple[nn.Module, dict[str, Any]]:
    """GPTQ every Linear of bb's decoder (bits, group_size) on `batches`, round-to-nearest the
    embedding (embed_bits, embed_group_size); in place. Returns (bb.model, config) where config
    is bb.config plus mlx-lm's "quantization" block with per-path entries (what mlx_lm.load and
    load_backbone read back). `world`: each rank runs its share of the batches (the Hessians are
    summed over ranks), then every rank quantizes the same way."""
    if len(batches) < world.size:
        raise UserError(f"gptq: {len(batches)} calibration batches for {world.size} ranks")
    if bits not in (2, 4, 8) or embed_bits not in (2, 3, 4, 5, 6, 8):
        raise UserError(f"gptq: bits {bits} not in (2, 4, 8)")
    for path, m in tree_flatten(bb.decoder.leaf_modules(), is_leaf=nn.Module.is_module):
        if isinstance(m, nn.Linear):
            _check_group(path, m, group_size)
    if bb.decoder.embed_tokens.weight.shape[-1] % embed_group_size:
        raise UserError(f"gptq: embedding width is not a multiple of {embed_group_size}")

    # mlx-lm's GPTQ picks the layers it quantizes by their exact type (nn.Linear): our CPU fast
    # class for half precision would make it skip every one of them silently. Modules already
    # rounded (a width of their own) get the quantized fast path where it wins: with stock
    # MLX's quantized matmul on the CPU, Gemma-3-270M's Hessian pass with 54 8-bit modules took
    # ~20 s per batch of 512-token units instead of ~5.
    rounded = any(isinstance(m, nn.QuantizedLinear) for m in bb.model.modules())
    quant = fastpaths.decide(fastpaths.Shapes.of(bb.config), ("quant",)) if rounded else {}
    fastpaths.apply(bb.model, bb.config, use={"half": False, **quant})
    current = _Current()
    wrapper = _ClassifierForward(bb, current)
    quiet = contextlib.redirect_stderr(_Sink()) if log is None else contextlib.nullcontext()
    with quiet, _patched(gptq, "Catcher", _masked_catcher(current, world)):
        _, qblock = gptq.gptq_quantize(
            wrapper, world.shard(list(batches)), bits, group_size, embed_bits, embed_group_size,
            batch_size=1,
        )  # fmt: skip
    current.mask = None
    for key, value in list(qblock.items()):
        if isinstance(value, dict):
            qblock[key] = {**value, "mode": "affine"}
    qblock["mode"] = "affine"
    config = copy.deepcopy(bb.config)
    config["quantization"] = qblock
    config["quantization_config"] = copy.deepcopy(qblock)
    fastpaths.apply(bb.model, config)  # the new layers run as they will when loaded back
    return bb.model, config


def _round_own_widths(bb: Backbone, recipe) -> dict[str, dict[str, int]]:
    """Round to nearest, in place, every Linear the recipe gives a width of its own (an override,
    or `[sensitivity]`'s 8-bit choices): mlx-lm's GPTQ runs at one width and quantizes only the
    Linears left. Their Hessians are then collected through these rounded modules, as the model
    will run. Returns {config path: width}."""
    default = {"bits": recipe.bits, "group_size": recipe.group_size}
    rounded, widths = [], {}
    for path, m in tree_flatten(bb.decoder.leaf_modules(), is_leaf=nn.Module.is_module):
        params = recipe.params_for(f"model.{path}")
        if isinstance(m, nn.Linear) and params != default:
            _check_group(path, m, params["group_size"])
            rounded.append((path, m.to_quantized(**params)))
            widths[f"model.{path}"] = params
    bb.decoder.update_modules(tree_unflatten(rounded))
    return widths


def _check_group(path: str, linear: nn.Linear, group_size: int) -> None:
    """GPTQ and rounding both quantize in groups along a Linear's input."""
    if linear.weight.shape[-1] % group_size:
        raise UserError(f"gptq: {path} input width {linear.weight.shape[-1]} is not a multiple "
                        f"of group size {group_size}")


class _Sink:
    def write(self, _s: str) -> int:
        return 0

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def _patched(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def quantize_gptq(
    model: nn.Module,
    config: dict[str, Any],
    recipe,
    calib_data: str | Path,
    tokenizer_dir: str | Path,
    log=None,
    world: World = SINGLE,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What quantize.py calls for a `method = "gptq"` recipe: same contract as
    quantize.quantize_backbone (model quantized in place; returns (config, counts)), with the
    calibration set described in counts["calibration"] for the manifest."""
    bb = Backbone(model=model, config=config)
    own = _round_own_widths(bb, recipe)
    emb = recipe.params_for("model.embed_tokens")
    cal = recipe.calibration
    data_dir = Path(calib_data)
    if not data_dir.is_dir():
        raise UserError(f"--calib-data: {data_dir}: no such directory")
    start = time.perf_counter()
    tasks = calibration_tasks(data_dir)
    batches = calibration_batches(
        data_dir, tasks, load_tokenizer(tokenizer_dir), cal["examples"], cal["max_len"],
        cal["seed"],
    )
    _, qconfig = gptq_quantize_backbone(
        bb, batches, recipe.bits, recipe.group_size, emb["bits"], emb["group_size"], log=log,
        world=world,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    for key in ("quantization", "quantization_config"):
        qconfig[key].update({path: {**p, "mode": "affine"} for path, p in own.items()})
    head = getattr(model, "lm_head", None)  # untied LM heads (not Gemma): unused here, so RTN
    if isinstance(head, nn.Linear) and head.weight.shape[-1] % emb["group_size"] == 0:
        model.lm_head = head.to_quantized(group_size=emb["group_size"], bits=emb["bits"])
        qconfig["quantization"]["lm_head"] = {**emb, "mode": "affine"}
        qconfig["quantization_config"] = qconfig["quantization"]
    n_quantized = sum(
        1 for _, m in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
    )
    counts = {
        "quantized": n_quantized,
        "skipped": [],
        "bits_per_weight": rtn.bits_per_weight(model),
        "calibration": {
            "method": "gptq",
            "data": str(data_dir.resolve()),
            "split": "train",
            "tasks": tasks,
            "examples": sum(int(b.shape[0]) for b in batches),
            "tokens": int(sum(real_token_mask(b).sum().item() for b in batches)),
            "max_len": cal["max_len"],
            "seed": cal["seed"],
            "seconds": round(seconds, 1),
        },
    }
    return qconfig, counts
