"""Bias correction of a quantized run's heads, on unlabelled train records.

Quantization error does not average out at a head: it moves the mean of what each head sees, and
a moved mean against the decision thresholds folded into the head biases (`train/calibrate.py`)
flips decisions one way (on the run before the fixes, GPTQ flipped TERRa not_entailment ->
entailment 34 times and back 4). The correction is Nagel et al.'s bias correction ("Data-Free
Quantization Through Weight Equalization and Bias Correction", 2019, section 4.2) measured on
data, at the only layer whose outputs decide: score the same train records with the float model
before quantization and with the quantized model after, and add each head's mean logit
difference (float - quantized) to its bias, so that on those records the quantized head's mean
logits are the float head's. No label is read; a head whose output is one score per choice
(PARus) moves all choices alike, which changes none of its decisions.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_rsg.data.sample import examples_in
from mlx_rsg.predict import score_units
from mlx_rsg.quant.distill import draw_records

BATCH_SIZE = 8


def sample_records(data_dir: str | Path, heads: list[str], units: int,
                   seed: int) -> dict[str, list]:  # fmt: skip
    """Train records drawn whole until they hold `units` units (or the split ends), for every
    task that has a head and a train split: distillation's draw, without held-out records."""
    return draw_records(data_dir, heads, units, 0, seed, "to correct the heads' biases on")[0]


def head_means(model, tokenizer, records: dict[str, list]) -> dict[str, np.ndarray]:
    """Each task head's mean logits (n_out,) over the units of its records."""
    model.eval()
    out = {}
    for task, recs in records.items():
        _, logits = score_units(model, tokenizer, task, recs, BATCH_SIZE)
        out[task] = logits.astype(np.float64).mean(axis=0)
    return out


def correct(model, before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> dict:
    """Add before - after to each head's bias (in place); returns the shifts, per head."""
    shifts = {}
    for task, mean in before.items():
        head = model.heads[task]
        shift = mean - after[task]
        head.bias = head.bias + mx.array(shift, dtype=head.bias.dtype)
        shifts[task] = [round(float(s), 5) for s in shift]
    mx.eval(model.parameters())
    return shifts


class BiasCorrection:
    """Measure the float heads (`before`), quantize, then `apply` on the quantized model."""

    def __init__(self, model, tokenizer, data_dir: str | Path, units: int, seed: int):
        start = time.perf_counter()
        self.model, self.tokenizer = model, tokenizer
        self.records = sample_records(data_dir, list(model.heads), units, seed)
        self.settings = {"data": str(Path(data_dir).resolve()), "split": "train",
                         "units_per_task": units, "seed": seed}  # fmt: skip
        self.before = head_means(model, tokenizer, self.records)
        self.seconds = time.perf_counter() - start

    def apply(self) -> dict:
        """Correct the (now quantized) model's heads; what the manifest records."""
        start = time.perf_counter()
        after = head_means(self.model, self.tokenizer, self.records)
        shifts = correct(self.model, self.before, after)
        return {
            **self.settings,
            "records": {t: len(r) for t, r in self.records.items()},
            "units": {t: sum(examples_in(t, x) for x in r) for t, r in self.records.items()},
            "shifts": shifts,
            "seconds": round(self.seconds + time.perf_counter() - start, 1),
        }
