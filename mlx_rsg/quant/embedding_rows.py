"""The embedding rows of a run's own text at more bits: a recipe's `[embedding_rows]`.

Every row of a 4-bit embedding is rounded alike, but a classifier reads few of them: RSG's train
text holds ~14 k of Gemma-3-270M's 262 k tokens. Measured on the real run
(`benchmarks/embedding_rows.py`, docs/quantization.md): those rows at 8 bits took the best 4-bit
recipe's changed decisions from 5.74 % to 3.76 %, the float embedding's ceiling being 3.73 %.
So before quantizing, the float rows of every token the run's train units hold (encoded as the
run encodes them, at its lengths) are kept; once the embedding is quantized they are rounded
again at `bits` and stored beside it (`model/row_embedding.py`), where the model reads them.
Their cost is counted in bits per weight and, in a recipe with `[sensitivity]`, taken from its
budget before any module is raised.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from mlx_rsg.data import load_split
from mlx_rsg.data.sample import tasks_with_train
from mlx_rsg.errors import UserError
from mlx_rsg.model.backbone import weight_rows
from mlx_rsg.model.batching import encode_units
from mlx_rsg.model.row_embedding import extra_bits, raise_rows
from mlx_rsg.quant.recipe import Recipe
from mlx_rsg.tasks import REGISTRY, make_units


def train_token_ids(model, tokenizer, data_dir: str | Path) -> tuple[list[int], list[str]]:
    """Sorted ids of every token in the train units of the run's tasks, as the run encodes them;
    and those tasks."""
    tasks = tasks_with_train(Path(data_dir), tuple(t for t in REGISTRY if t in model.heads))
    if not tasks:
        raise UserError(f"--calib-data: {data_dir}: no train split of the run's tasks "
                        f"({', '.join(model.heads)}) to choose embedding rows from")  # fmt: skip
    seen: set[int] = set()
    for task in tasks:
        units = make_units(task, load_split(data_dir, task, "train"), prompt=model.cfg.prompt)
        for e in encode_units(units, tokenizer, model.cfg.max_len_for(task)):
            seen.update(e.ids)
    return sorted(seen), list(tasks)


class EmbeddingRows:
    """Keep the float rows of the run's train tokens (before quantizing), then `apply` them at
    `bits` beside the quantized embedding."""

    def __init__(self, model, tokenizer, data_dir: str | Path, bits: int):
        start = time.perf_counter()
        self.ids, tasks = train_token_ids(model, tokenizer, data_dir)
        emb = model.backbone.decoder.embed_tokens
        self.path = next(p for p, m in model.lm.named_modules() if m is emb)
        self.dims = emb.weight.shape[-1]
        self.float_rows = weight_rows(emb, mx.array(self.ids))
        mx.eval(self.float_rows)
        self.bits = bits
        self.record = {"data": str(Path(data_dir).resolve()), "split": "train", "tasks": tasks,
                       "rows": len(self.ids), "bits": bits}  # fmt: skip
        self.seconds = time.perf_counter() - start

    def reserved_bits(self, recipe: Recipe) -> int:
        """What the rows will add to the model at `recipe`'s embedding group and scale dtype."""
        scale_bits = 16 if recipe.scale_dtype in ("float16", "bfloat16") else 32
        group = recipe.params_for(self.path)["group_size"]
        return extra_bits(len(self.ids), self.dims, self.bits, group, scale_bits)

    def apply(self, lm: nn.Module) -> dict:
        """The rows at `bits` beside the (now quantized) embedding of `lm`; what the manifest
        records. An embedding the recipe left in float (its width not a multiple of the group)
        is left as it is; one at `bits` or more cannot be (the recipe refuses it, and
        `[sensitivity]` does not raise it)."""
        emb = dict(lm.named_modules())[self.path]
        if not isinstance(emb, nn.QuantizedEmbedding):
            return {**self.record, "rows": 0, "skipped": "the embedding is not quantized",
                    "seconds": round(self.seconds, 1)}  # fmt: skip
        raise_rows(lm, self.path, self.float_rows, self.ids, self.bits)
        return {**self.record, "seconds": round(self.seconds, 1)}
