"""Classifier-aware distillation of a quantized run's backbone: a recipe's `[distill]` (q4-dwq).

mlx-lm's DWQ (`mlx_lm/quant/dwq.py`) learns the scales and biases of a quantized LM so that its
next-token distribution matches the float model's. A classifier decides by its heads, not by its
next token, so here the same parameters are learned so that every task head on the quantized
backbone gives the float run's probabilities: the KL divergence float -> quantized, at a
temperature, on unlabelled train records of the run's tasks (never val; no label is read). A label
head decides by its softmax over classes; a choice task (PARus, RuCoS) by the softmax over its
record's choices, so that is what is matched there.

Only scales and biases of the modules below 8 bits move (mlx-lm's rule: at 8 bits the loss starts
too low to learn from); the codes, the norms and the float heads do not, so the size is the
size before. The teacher's probabilities are computed once, before quantizing, on fixed batches;
training visits them in a seeded order, with dropout off on both sides. Train records drawn apart
from those (`holdout` units per task) are scored after every epoch, and the epoch of the lowest
held-out KL is kept — the rounded model itself if no epoch beats it, so a learning rate too large
for a model cannot leave it worse on them than round-to-nearest. The manifest has the KL on both
sets before and after.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from mlx_rsg.data import load_split
from mlx_rsg.data.sample import examples_in, sample_examples, tasks_with_train
from mlx_rsg.errors import UserError
from mlx_rsg.model.batching import Batch, encode_units, make_batches
from mlx_rsg.model.batching import examples_in as batch_examples
from mlx_rsg.progress import Progress
from mlx_rsg.tasks import REGISTRY, make_units


def draw_records(data_dir: str | Path, heads: list[str], units: int, holdout: int, seed: int,
                 purpose: str = "to distil the heads on") -> tuple[dict, dict]:  # fmt: skip
    """Per task with a head and a train split: records drawn whole until they hold `units`
    units (`data.sample.sample_examples`, the draw `bench --max-per-task` makes), and apart from
    those, records holding `holdout` units (none when 0). Counted in units because the heads are
    matched per unit, and tasks differ: a MuSeRC passage holds ~24 answers, a TERRa record one.
    `purpose` ends the error line when there is nothing to draw."""
    tasks = tasks_with_train(Path(data_dir), tuple(t for t in REGISTRY if t in heads))
    if not tasks:
        raise UserError(f"--calib-data: {data_dir}: no train split of the run's tasks "
                        f"({', '.join(heads)}) {purpose}")  # fmt: skip
    train, held = {}, {}
    for task in tasks:
        pool = load_split(data_dir, task, "train")
        train[task] = sample_examples(task, pool, units, seed, "train")
        taken = {r.idx for r in train[task]}
        rest = [r for r in pool if r.idx not in taken]
        held[task] = sample_examples(task, rest, holdout, seed + 1, "train") if holdout else []
    return train, held


def task_batches(model, tokenizer, records: dict[str, list], batch_size: int) -> list[Batch]:
    """Fixed batches of every task's units (one task per batch, a choice group never split)."""
    out = []
    for task, recs in records.items():
        units = make_units(task, recs, train=False, prompt=model.cfg.prompt)
        encoded = encode_units(units, tokenizer, model.cfg.max_len_for(task))
        out += make_batches(encoded, batch_size, rng=None)
    return out


def log_probs(logits: mx.array, batch: Batch) -> mx.array:
    """The log-probabilities the task decides by, (rows, classes): a label head's log-softmax
    over its classes; a choice task's (one score per row) over each group's rows, (rows, 1)."""
    if batch.groups is None:
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    scores = logits[:, 0]
    n_groups = int(batch.groups.max().item()) + 1
    member = batch.groups[None, :] == mx.arange(n_groups)[:, None]  # (G, rows)
    norm = mx.logsumexp(mx.where(member, scores[None, :], -mx.inf), axis=1)
    return (scores - norm[batch.groups])[:, None]


def kl_sum(student: mx.array, teacher: mx.array) -> mx.array:
    """Sum over examples of KL(teacher || student), both log-probabilities (rows, classes): a
    choice group's rows together make one distribution, so the sum is per example either way."""
    return (mx.exp(teacher) * (teacher - student)).sum()


def unfreeze_quantization(model: nn.Module) -> int:
    """Freeze everything, then unfreeze the scales and biases of the modules quantized below 8
    bits; returns how many values are now trainable."""
    model.freeze()

    def unfreeze(_, m):
        if getattr(m, "mode", None) == "affine" and getattr(m, "bits", 8) < 8:
            m.unfreeze(keys=["scales", "biases"], recurse=False)

    model.apply_to_modules(unfreeze)
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


class Distillation:
    """The float heads' probabilities (`__init__`, before quantizing), then `apply` on the
    quantized model: learn its scales and biases until its heads give the same."""

    def __init__(self, model, tokenizer, data_dir: str | Path, units: int, holdout: int,
                 epochs: int, batch_size: int, lr: float, temperature: float,
                 seed: int):  # fmt: skip
        start = time.perf_counter()
        self.model, self.epochs, self.lr, self.seed = model, epochs, lr, seed
        self.temperature = temperature
        train, held = draw_records(data_dir, list(model.heads), units, holdout, seed)
        self.counts = {
            "records": {t: len(r) for t, r in train.items()},
            "units": {t: sum(examples_in(t, x) for x in r) for t, r in train.items()},
            "holdout_units": {t: sum(examples_in(t, x) for x in r) for t, r in held.items()},
        }
        self.settings = {"data": str(Path(data_dir).resolve()), "split": "train",
                         "units_per_task": units, "holdout_per_task": holdout, "epochs": epochs,
                         "batch_size": batch_size, "lr": lr, "temperature": temperature,
                         "seed": seed}  # fmt: skip
        self.batches = task_batches(model, tokenizer, train, batch_size)
        self.held = task_batches(model, tokenizer, held, batch_size)
        model.eval()
        self.targets = [self._log_probs(b) for b in self.batches]
        self.held_targets = [self._log_probs(b) for b in self.held]
        self.seconds = time.perf_counter() - start

    def _log_probs(self, batch: Batch) -> mx.array:
        out = log_probs(self.model(batch) / self.temperature, batch)
        mx.eval(out)
        return out

    def loss(self, model, batch: Batch, target: mx.array) -> mx.array:
        """Mean KL per example at the temperature, times its square (Hinton et al.'s scaling:
        gradients comparable across temperatures)."""
        student = log_probs(model(batch) / self.temperature, batch)
        return kl_sum(student, target) / batch_examples(batch) * self.temperature**2

    def mean_kl(self, batches: list[Batch], targets: list[mx.array]) -> dict[str, float]:
        """Mean KL per example at the temperature, per task and over all tasks."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for batch, target in zip(batches, targets, strict=True):
            student = log_probs(self.model(batch) / self.temperature, batch)
            sums[batch.task] = sums.get(batch.task, 0.0) + kl_sum(student, target).item()
            counts[batch.task] = counts.get(batch.task, 0) + batch_examples(batch)
        out = {t: round(sums[t] / counts[t], 6) for t in sums}
        if counts:
            out["all"] = round(sum(sums.values()) / sum(counts.values()), 6)
        return out

    def apply(self, log=None) -> dict:
        """Learn the quantized model's scales and biases (in place); what the manifest records.
        With held-out units, the epoch of the lowest held-out KL is kept (none: as rounded)."""
        start = time.perf_counter()
        model = self.model  # quantized by rtn or gptq, with their fast paths applied
        model.eval()
        before = self.mean_kl(self.batches, self.targets)
        held = [self.mean_kl(self.held, self.held_targets)]
        trainable = unfreeze_quantization(model)
        best = (held[0].get("all", 0.0), 0, model.trainable_parameters())
        optimizer = optim.Adam(learning_rate=self.lr)
        step = nn.value_and_grad(model, self.loss)
        rng = np.random.default_rng(self.seed)
        losses = []
        for epoch in range(1, self.epochs + 1):
            total = 0.0
            bar = Progress(len(self.batches), f"distill {epoch}/{self.epochs}") if log else None
            for i in rng.permutation(len(self.batches)):
                loss, grads = step(model, self.batches[i], self.targets[i])
                optimizer.update(model, grads)
                mx.eval(loss, model.trainable_parameters(), optimizer.state)
                total += loss.item()
                if bar is not None:
                    bar.update(1, batch_examples(self.batches[i]), loss.item())
            if bar is not None:
                bar.close()
            losses.append(round(total / max(1, len(self.batches)), 6))
            if self.held:
                held.append(self.mean_kl(self.held, self.held_targets))
                if held[-1]["all"] < best[0]:  # arrays are immutable: these stay as they are
                    best = (held[-1]["all"], epoch, model.trainable_parameters())
            elif epoch == self.epochs:  # nothing held out: the last epoch
                best = (0.0, epoch, model.trainable_parameters())
            if log is not None:
                log(f"distill: epoch {epoch}/{self.epochs}: mean KL {losses[-1]:.5f}"
                    + (f", held-out {held[-1]['all']:.5f}" if self.held else ""))
        model.update(best[2])
        model.freeze()
        return {
            **self.settings,
            **self.counts,
            "trainable": trainable,
            "steps": self.epochs * len(self.batches),
            "epoch_loss": losses,
            "kept_epoch": best[1],
            "kl": {"train": {"before": before, "after": self.mean_kl(self.batches, self.targets)},
                   "holdout": {"before": held[0], "after": held[best[1]] if self.held else {},
                               "by_epoch": held}},  # fmt: skip
            "seconds": round(self.seconds + time.perf_counter() - start, 1),
        }
