"""An embedding whose rows have two widths: every row at the recipe's width (the table mlx-lm
reads), and the rows a run's text uses again at a higher width (a quantize recipe's
`[embedding_rows]`, `quant/quantize.py`).

On Gemma-3-270M the tied embedding is 63 % of the parameters, and at 4 bits its rounding makes a
third of a 4-bit run's changed decisions (docs/quantization.md); the task text of RSG touches
~14 k of its 262 k rows. The high rows live in their own file beside the model,
`embedding_rows.safetensors`, which `mlx_lm.load` does not read (it loads `model*.safetensors`):
there the model has every row at the low width; mlx-rsg's loader (`backbone.load_checked`) puts
the high rows in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

from mlx_rsg.errors import UserError

FILE = "embedding_rows.safetensors"


@dataclass(frozen=True)
class _Slots:
    """Each token's row in the high table, -1 where it has none: derived from `high_ids` when the
    module is made, so kept out of the parameter tree (never saved, not a weight)."""

    of: mx.array


class RowPrecisionEmbedding(nn.QuantizedEmbedding):
    """A QuantizedEmbedding (weight, scales, biases: every row at `bits`) that also stores the
    rows `high_ids` at `high_bits` (high_weight, high_scales, high_biases, the same group size)
    and reads those rows from there, as an embedding and as the tied output layer."""

    def __init__(self, low: nn.QuantizedEmbedding, ids: mx.array, weight: mx.array,
                 scales: mx.array, biases: mx.array, high_bits: int):  # fmt: skip
        nn.Module.__init__(self)
        self.group_size, self.bits, self.mode = low.group_size, low.bits, low.mode
        self.num_embeddings, self.dims = low.weight.shape[0], low.dims
        self.weight, self.scales, self.biases = low.weight, low.scales, low.get("biases")
        self.high_bits = high_bits
        self.high_ids = ids.astype(mx.int32)
        self.high_weight, self.high_scales, self.high_biases = weight, scales, biases
        slots = np.full(self.num_embeddings, -1, dtype=np.int32)
        slots[np.array(self.high_ids)] = np.arange(ids.size, dtype=np.int32)
        self._slots = _Slots(mx.array(slots))
        self.freeze()

    def low(self) -> nn.QuantizedEmbedding:
        """The low-width table alone (the same arrays), as mlx-lm stores and loads it."""
        emb = nn.QuantizedEmbedding(1, self.dims, self.group_size, self.bits, self.mode)
        emb.weight, emb.scales, emb.biases = self.weight, self.scales, self.get("biases")
        emb.num_embeddings = self.num_embeddings
        return emb

    def rows(self, ids: mx.array | slice) -> mx.array:
        """Rows `ids` (any shape, or a slice of the vocabulary) dequantized, in the scales'
        dtype: each from the high table where it has a row there."""
        if isinstance(ids, slice):
            ids = mx.arange(*ids.indices(self.num_embeddings))
        low = super().__call__(ids)
        slot = self._slots.of[ids]
        at = mx.maximum(slot, 0)
        high = mx.dequantize(self.high_weight[at], self.high_scales[at], self.high_biases[at],
                             group_size=self.group_size, bits=self.high_bits)  # fmt: skip
        return mx.where(mx.expand_dims(slot >= 0, -1), high.astype(low.dtype), low)

    def __call__(self, x: mx.array) -> mx.array:
        return self.rows(x)

    def as_linear(self, x: mx.array) -> mx.array:
        out = super().as_linear(x)
        out[..., self.high_ids] = mx.quantized_matmul(
            x, self.high_weight, self.high_scales, self.high_biases, transpose=True,
            group_size=self.group_size, bits=self.high_bits,
        ).astype(out.dtype)  # fmt: skip
        return out

    def _extra_repr(self) -> str:
        return f"{super()._extra_repr()}, {self.high_ids.size} rows at {self.high_bits} bits"


def raise_rows(model: nn.Module, path: str, float_rows: mx.array, ids: list[int],
               high_bits: int) -> RowPrecisionEmbedding:  # fmt: skip
    """Replace the quantized embedding at `path` by one that also keeps `float_rows` (the float
    rows of `ids`) at `high_bits`, in its group size and scales' dtype; returns it."""
    low = dict(model.named_modules())[path]
    w, s, b = mx.quantize(float_rows.astype(mx.float32), low.group_size, high_bits)
    emb = RowPrecisionEmbedding(low, mx.array(ids), w, s.astype(low.scales.dtype),
                                b.astype(low.scales.dtype), high_bits)  # fmt: skip
    mx.eval(emb.parameters())
    model.update_modules(tree_unflatten([(path, emb)]))
    return emb


def _found(model: nn.Module) -> list[tuple[str, RowPrecisionEmbedding]]:
    return [(p, m) for p, m in model.named_modules() if isinstance(m, RowPrecisionEmbedding)]


@contextlib.contextmanager
def low_rows_only(model: nn.Module) -> Iterator[None]:
    """The model with its embeddings' low-width tables only, as mlx-lm saves and reads them;
    the high rows back afterwards."""
    found = _found(model)
    model.update_modules(tree_unflatten([(p, m.low()) for p, m in found]))
    try:
        yield
    finally:
        model.update_modules(tree_unflatten(found))


def save(model: nn.Module, model_dir: Path) -> None:
    """MODEL_DIR/embedding_rows.safetensors, if the model has a two-width embedding."""
    for path, m in _found(model):  # one: the embedding
        arrays = {"ids": m.high_ids, "weight": m.high_weight, "scales": m.high_scales,
                  "biases": m.high_biases}  # fmt: skip
        meta = {"path": path, "bits": str(m.high_bits)}
        mx.save_safetensors(str(model_dir / FILE), arrays, metadata=meta)


def attach(model: nn.Module, model_dir: Path) -> None:
    """Put MODEL_DIR/embedding_rows.safetensors's rows, if there is the file, in the embedding
    it names; a file that does not fit the model is one UserError naming it."""
    f = model_dir / FILE
    if not f.is_file():
        return
    try:
        arrays, meta = mx.load(str(f), return_metadata=True)
        path, bits = meta["path"], int(meta["bits"])
        ids, weight, scales, biases = (arrays[k] for k in ("ids", "weight", "scales", "biases"))
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"{f}: not an embedding-rows file ({type(e).__name__}: {e})") from None
    low = dict(model.named_modules()).get(path)
    if not isinstance(low, nn.QuantizedEmbedding):
        raise UserError(f"{f}: field 'path': {path!r} is not a quantized embedding of the model")
    n = low.weight.shape[0]
    in_range = ids.size == 0 or 0 <= int(ids.min().item()) <= int(ids.max().item()) < n
    ok = (in_range and ids.ndim == 1 and weight.shape[-1] * 32 == low.dims * bits
          and weight.shape[0] == scales.shape[0] == biases.shape[0] == ids.size
          and scales.shape == low.scales[: ids.size].shape)  # fmt: skip
    if not ok:
        raise UserError(f"{f}: the rows do not fit {path} ({n} rows of {low.dims})")
    model.update_modules(tree_unflatten([(path, RowPrecisionEmbedding(low, ids, weight, scales,
                                                                      biases, bits))]))


def extra_bits(rows: int, dims: int, high_bits: int, group_size: int, scale_bits: int) -> int:
    """What `rows` high rows add to a model: their codes, a scale and a bias per group, an int32
    id each (what `mlx_lm`'s bits-per-weight count sees of them)."""
    return rows * (dims * high_bits + 2 * scale_bits * dims // group_size + 32)
