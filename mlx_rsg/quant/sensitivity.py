"""Precision chosen by sensitivity: which modules of a run keep more bits (a recipe's
`[sensitivity]`), measured on what the classifier decides.

mlx-lm's `dynamic_quant` estimates each layer's sensitivity to the first order: the gradient of
the KL divergence between the float and the low-bit model's next-token distributions, taken at the
low-bit weights, dotted with (low-bit weight - high-bit weight), per million parameters; the most
sensitive layers go to the high width until a bits-per-weight budget is spent. Here the KL is the
one distillation matches (`distill.py`): every task head's probabilities, float run -> all
quantizable modules rounded to the recipe's width at once, on unlabelled train units. Modules are
then taken in order of sensitivity per extra bit until the next one would pass the budget (the
greedy rule, not a knapsack: a smaller module further down is not tried); they become the
recipe's per-path overrides, ahead of its own.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mlx_rsg.quant.distill import draw_records, kl_sum, log_probs, task_batches
from mlx_rsg.quant.recipe import Recipe

BATCH_SIZE = 4


def quantizable(lm: nn.Module, recipe: Recipe) -> dict[str, nn.Module]:
    """The modules the recipe quantizes (Linear, Embedding whose width divides the group), by
    path in the backbone's parameter tree."""
    out = {}
    for path, module in tree_flatten(lm.leaf_modules(), is_leaf=nn.Module.is_module):
        if hasattr(module, "to_quantized"):
            if module.weight.shape[-1] % recipe.params_for(path)["group_size"] == 0:
                out[path] = module
    return out


def round_trip(w: mx.array, bits: int, group_size: int) -> mx.array:
    """w quantized and dequantized (round to nearest, affine)."""
    q, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
    return mx.dequantize(q, scales, biases, group_size=group_size, bits=bits)


def bits_per_weight(sizes: dict[str, int], widths: dict[str, dict], other: int,
                    scale_bits: int, reserved: int = 0) -> float:  # fmt: skip
    """Bits per weight as mlx-lm counts them (all bytes over all parameters): each quantized
    module's codes plus a scale and a bias per group, `other` float parameters at 32 bits, and
    `reserved` bits that add no parameter (`[embedding_rows]`' rows)."""
    bits = sum(n * (p["bits"] + 2 * scale_bits / p["group_size"]) for n, p in
               ((sizes[k], widths[k]) for k in sizes))  # fmt: skip
    return (bits + 32 * other + reserved) / (sum(sizes.values()) + other)


def sensitivities(model, batches: list, recipe: Recipe, high_bits: int) -> dict[str, float]:
    """Each quantizable module's first-order KL increase from its low-bit rounding (all modules
    rounded at once), per million parameters. Leaves the model frozen, its weights as before."""
    modules = quantizable(model.lm, recipe)
    model.eval()
    targets = []
    for batch in batches:
        targets.append(log_probs(model(batch), batch))
        mx.eval(targets[-1])
    original = {p: m.weight for p, m in modules.items()}
    low = {p: round_trip(w, **recipe.params_for(p)) for p, w in original.items()}
    model.freeze()
    try:
        model.lm.update(tree_unflatten([(f"{p}.weight", w) for p, w in low.items()]))
        for m in modules.values():
            m.unfreeze(keys=["weight"], recurse=False)

        def loss(m, batch, target):
            return kl_sum(log_probs(m(batch), batch), target)

        grad_fn = nn.value_and_grad(model, loss)
        totals: dict[str, mx.array] = {}
        for batch, target in zip(batches, targets, strict=True):
            _, grads = grad_fn(model, batch, target)
            flat = {k.removeprefix("lm.").removesuffix(".weight"): g
                    for k, g in tree_flatten(grads)}  # fmt: skip
            for p in modules:
                totals[p] = totals[p] + flat[p] if p in totals else flat[p]
            mx.eval(totals)
        out = {}
        for p, w in original.items():
            high = round_trip(w, high_bits, recipe.params_for(p)["group_size"])
            out[p] = (totals[p] * (low[p] - high)).sum().item() / (w.size / 1e6)
    finally:  # the float weights back, whatever happened; the model stays frozen
        model.lm.update(tree_unflatten([(f"{p}.weight", w) for p, w in original.items()]))
        model.freeze()
    return out


def choose(sens: dict[str, float], sizes: dict[str, int], recipe: Recipe, other: int,
           budget: float, high_bits: int, reserved: int = 0,
           keep: tuple[str, ...] = ()) -> dict[str, dict]:  # fmt: skip
    """Overrides raising the most sensitive modules (per extra bit) to `high_bits` while the
    bits per weight, `reserved` bits included, stay within `budget`; the recipe's own widths
    elsewhere, and for the modules in `keep`."""
    scale_bits = 16 if recipe.scale_dtype in ("float16", "bfloat16") else 32
    widths = {p: recipe.params_for(p) for p in sizes}
    chosen: dict[str, dict] = {}
    for p in sorted(sens, key=lambda p: sens[p] / max(1, high_bits - widths[p]["bits"]),
                    reverse=True):  # fmt: skip
        if widths[p]["bits"] >= high_bits or sens[p] <= 0 or p in keep:
            continue
        trial = {**widths, p: {**widths[p], "bits": high_bits}}
        if bits_per_weight(sizes, trial, other, scale_bits, reserved) > budget:
            break
        widths, chosen[p] = trial, {"bits": high_bits}
    return chosen


class Sensitivity:
    """Measure on the float run, then `recipe` gives the recipe with the chosen overrides."""

    def __init__(self, model, tokenizer, data_dir: str | Path, recipe: Recipe, units: int,
                 budget: float, high_bits: int, seed: int, reserved: int = 0,
                 keep: tuple[str, ...] = ()):  # fmt: skip
        """`reserved`: bits the recipe adds outside the modules' widths, spent from the budget
        first; `keep`: modules not to raise. (`[embedding_rows]` reserves its rows and keeps the
        embedding, whose rows it raises itself.)"""
        start = time.perf_counter()
        train, _ = draw_records(data_dir, list(model.heads), units, 0, seed)
        batches = task_batches(model, tokenizer, train, BATCH_SIZE)
        self.sens = sensitivities(model, batches, recipe, high_bits)
        modules = quantizable(model.lm, recipe)
        sizes = {p: m.weight.size for p, m in modules.items()}
        other = sum(v.size for _, v in tree_flatten(model.lm.parameters())) - sum(sizes.values())
        self.overrides = choose(self.sens, sizes, recipe, other, budget, high_bits, reserved,
                                keep)  # fmt: skip
        self.record = {"data": str(Path(data_dir).resolve()), "split": "train",
                       "units_per_task": units, "seed": seed, "budget": budget,
                       "high_bits": high_bits, "reserved_bits": reserved,
                       "raised": sorted(self.overrides),
                       "sensitivity": {p: round(s, 6) for p, s in self.sens.items()},
                       "parameters": sizes,
                       "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip

    def recipe(self, recipe: Recipe) -> Recipe:
        return dataclasses.replace(recipe, overrides={**self.overrides, **recipe.overrides})
