"""An mlx-lm decoder used as a feature extractor: layer by layer, no LM head.

We build on mlx-lm's model classes and loader and only re-order *how* the inner model is called,
so the training code can run the frozen prefix once and cache its output (`run_layers` with a
start/end), and so Gemma's embedding scale is exact in float32 (see `embed`).

Padding: batches are right-padded and attention is causal, so a real token never attends to a
pad; pooling picks real positions only. No padding mask is needed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_attention_mask
from mlx_lm.utils import load_model
from mlx_lm.utils import load_tokenizer as _load

from mlx_rsg.accel import blas, runtime
from mlx_rsg.accel.runtime import Runtime
from mlx_rsg.errors import UserError
from mlx_rsg.io import check_safetensors
from mlx_rsg.model import row_embedding

# Model types whose embeddings are multiplied by sqrt(hidden_size).
_SCALED_EMBEDDINGS = {"gemma", "gemma2", "gemma3", "gemma3_text"}


@dataclass
class Backbone:
    """An mlx-lm `Model` plus what we need to call it piecewise."""

    model: nn.Module  # the mlx-lm Model (its `.model` is the decoder stack)
    config: dict[str, Any]
    runtime: Runtime = field(default_factory=Runtime)  # what runs where (accel/runtime.py)

    @property
    def decoder(self) -> nn.Module:
        return self.model.model

    @property
    def layers(self) -> list[nn.Module]:
        return self.decoder.layers

    @property
    def hidden_size(self) -> int:
        return self.config["hidden_size"]

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def keep_blocks(bb: Backbone, n: int) -> int:
    """Keep blocks [0, n) of bb, in place, config included: all a classifier reading block n's
    output (`--feature-layer n`) runs, so the blocks above need not be stored. Per-layer config
    lists (Gemma 3's `layer_types`) are cut to match. Returns how many blocks were dropped."""
    old = bb.num_layers
    if n >= old:
        return 0
    bb.decoder.layers = bb.decoder.layers[:n]
    for key, value in list(bb.config.items()):
        if isinstance(value, list) and len(value) == old:
            bb.config[key] = value[:n]
    bb.config["num_hidden_layers"] = n
    return old - n


def load_backbone(path: str | Path, lazy: bool = False, cores: int | None = None) -> Backbone:
    """Load a converted model directory with mlx-lm's own loader, with the CPU fast paths that
    measure faster on this machine (`mlx_rsg.accel.fastpaths`) given to this model only, and
    its Runtime (`mlx_rsg.accel.runtime`). `cores`: what the process may keep busy (default:
    the machine's; a distributed rank passes `World.cores`)."""
    blas.warn_if_slow()  # once per process: a reference BLAS makes everything 20-40x slower
    model, config = load_checked(Path(path), lazy=lazy)
    check_architecture(model, config, path)
    placed = runtime.place(model, config, log=lambda m: print(m, file=sys.stderr, flush=True),
                           cores=cores)
    return Backbone(model=model, config=config, runtime=placed)


def load_checked(model_dir: Path, lazy: bool = False,
                 strict: bool = True) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """mlx-lm's `load_model` for every command that loads a model (train, predict, quantize,
    serve, bench), with what can be wrong in the directory as one-line errors: a truncated
    weights file (checked by its header first), a config field of the wrong type, weights that
    do not fit the config, a `model_file` (custom code mlx-lm rightly does not run).
    `strict=False`: weights the directory lacks keep their initial values, unevaluated with
    `lazy`, for a caller that puts its own modules there (`model/substitution.py`)."""
    for f in sorted(model_dir.glob("*.safetensors")):
        check_safetensors(f, exact=False)
    try:
        model, config = load_model(model_dir, lazy=lazy, strict=strict)
    except Exception as e:  # noqa: BLE001 - mlx-lm raises ValueError, TypeError, KeyError...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{model_dir}: cannot load the model: {msg}") from None
    row_embedding.attach(model, model_dir)  # a recipe's [embedding_rows], which mlx-lm skips
    return model, config


def check_architecture(model: nn.Module, config: dict[str, Any], where: str | Path) -> None:
    """Refuse, in one line, a model whose layers mlx-rsg cannot call: it runs an mlx-lm decoder
    block by block (`model.model.embed_tokens`, `.layers`, `.norm`, each layer called as
    `layer(h, mask, cache)`), which a state-space or hybrid model (Mamba, RWKV, ...) does not
    have. Checked on a 3-token forward when a model is converted or loaded, so it fails there,
    not mid-training."""
    kind = config.get("model_type", "?")
    decoder = model.get("model") if isinstance(model, dict) else None
    missing = [k for k in ("embed_tokens", "layers", "norm")
               if not isinstance(decoder, dict) or k not in decoder]  # fmt: skip
    why = f"no decoder.{missing[0]}" if missing else None
    if why is None:
        try:
            mx.eval(hidden_states(Backbone(model=model, config=config), mx.array([[1, 2, 3]])))
        except Exception as e:  # noqa: BLE001 - any failure means we cannot run its layers
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if why is not None:
        raise UserError(f"{where}: mlx-rsg cannot run a {kind!r} model block by block ({why}); "
                        "it runs decoder-only transformers (docs/cli.md#architectures)")


def load_tokenizer(path: str | Path):
    """mlx-lm's TokenizerWrapper over the directory's Hugging Face tokenizer; a damaged tokenizer
    file is one UserError (transformers, tokenizers and sentencepiece each fail in their own
    exception types, some of them bare Exceptions)."""
    try:
        return _load(Path(path))
    except Exception as e:  # noqa: BLE001 - any failure to read the files is the files' fault
        why = (str(e).strip().splitlines() or [""])[0][:300]
        raise UserError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {why}); "
                        "its tokenizer files are missing or damaged") from None  # fmt: skip


def check_vocabulary(bb: Backbone, tokenizer, where: str | Path) -> None:
    """Refuse a tokenizer whose vocabulary has ids past the embedding's rows: MLX would read out
    of bounds and train on garbage (NaN losses) instead of failing. Special tokens transformers
    adds on its own beyond the vocabulary (a Gemma tokenizer's `<mask>` for a GGUF that lacks
    it) are not counted: task text yields them only if it spells them out literally."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    n_tokens = getattr(hf, "vocab_size", None) or len(hf)
    rows = bb.decoder.embed_tokens.weight.shape[0]
    if n_tokens > rows:
        raise UserError(f"{where}: the tokenizer has {n_tokens} tokens but the embedding only "
                        f"{rows} rows (a tokenizer from another model?)")  # fmt: skip


def embed(bb: Backbone, tokens: mx.array) -> mx.array:
    """Token embeddings in the model's dtype, scaled as the reference implementation scales them.

    mlx-lm's Gemma 3 multiplies by sqrt(hidden) rounded to bfloat16 even in float32 (25.25 vs
    25.298 at 640), which moves fp32 hidden states by up to 7.0 from transformers. Transformers
    casts the scale to the embedding dtype, so we do the same: exact in fp32, bf16 in bf16.
    """
    h = bb.decoder.embed_tokens(tokens)
    h = h.astype(bb.decoder.norm.weight.dtype)  # quantized rows come in their scales' dtype
    if bb.config.get("model_type") in _SCALED_EMBEDDINGS:
        h = h * mx.array(bb.hidden_size**0.5, dtype=h.dtype)
    return h


# Architectures whose attention applies the mask itself (no `scaled_dot_product_attention`) and
# so needs it as an array, not mlx-lm's "causal" shorthand (their own forward asks for arrays).
_ARRAY_MASKS = {"gemma2"}


def layer_window(bb: Backbone, i: int) -> int | None:
    """The sliding-window size of layer i, or None for full causal attention."""
    attn = getattr(bb.layers[i], "self_attn", None)
    if getattr(attn, "is_sliding", False):
        return bb.config.get("sliding_window")
    return None


def run_layers(
    bb: Backbone,
    h: mx.array,
    start: int = 0,
    end: int | None = None,
    hooks: dict[int, Any] | None = None,
    checkpoint: bool = False,
) -> mx.array:
    """Apply decoder layers [start, end) to hidden states h of shape (B, L, D); `hooks[i]`, if
    given, is applied to layer i's output (the classifier's adapters). `checkpoint` recomputes
    each layer's activations in the backward pass instead of keeping them (less memory, ~1/3
    more compute)."""
    end = bb.num_layers if end is None else end
    masks: dict[int | None, Any] = {}
    as_array = bb.config.get("model_type") in _ARRAY_MASKS
    for i in range(start, end):
        window = layer_window(bb, i)
        if window not in masks:
            masks[window] = create_attention_mask(h, None, window_size=window,
                                                  return_array=as_array)  # fmt: skip
        layer = bb.layers[i]
        h = _checkpointed(layer, masks[window])(h) if checkpoint else layer(h, masks[window], None)
        if hooks and i in hooks:
            h = hooks[i](h)
    return h


def _checkpointed(layer: nn.Module, mask: Any):
    """layer(h) under mx.checkpoint, with the layer's trainable parameters as explicit inputs so
    their gradients flow through the recomputation (as mlx-lm's trainer does)."""

    def inner(params, h):
        layer.update(params)
        return layer(h, mask, None)

    return lambda h: mx.checkpoint(inner)(layer.trainable_parameters(), h)


def final_norm(bb: Backbone, h: mx.array) -> mx.array:
    return bb.decoder.norm(h)


def output_layer(bb: Backbone) -> nn.Module:
    """The language model's output projection: its own LM head where it has one, else the input
    embedding it is tied to (Gemma, SmolLM2)."""
    layer = getattr(bb.model, "lm_head", None)
    return bb.decoder.embed_tokens if layer is None else layer


def weight_rows(layer: nn.Module, rows: mx.array | slice) -> mx.array:
    """Rows of a Linear's or Embedding's weight (output rows, input width), float32;
    dequantized if the layer is quantized."""
    if isinstance(layer, row_embedding.RowPrecisionEmbedding):
        return layer.rows(rows).astype(mx.float32)
    if hasattr(layer, "scales"):  # QuantizedLinear / QuantizedEmbedding
        biases = layer.biases[rows] if getattr(layer, "biases", None) is not None else None
        w = mx.dequantize(layer.weight[rows], layer.scales[rows], biases,
                          group_size=layer.group_size, bits=layer.bits)  # fmt: skip
    else:
        w = layer.weight[rows]
    return w.astype(mx.float32)


def output_rows(bb: Backbone, ids: list[int]) -> mx.array:
    """Rows (len(ids), D) of the language model's output projection (`output_layer`), float32:
    its logit for token i is final_norm(h) . row i."""
    return weight_rows(output_layer(bb), mx.array(ids))


def hidden_states(bb: Backbone, tokens: mx.array) -> mx.array:
    """Final normalised hidden states (B, L, D): what transformers calls last_hidden_state."""
    return final_norm(bb, run_layers(bb, embed(bb, tokens)))
