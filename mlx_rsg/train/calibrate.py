"""Decision offsets chosen on the dev split, each for the metric its task is scored by. A run
keeps them in run.json (`calibration`) and `predict.load` adds them to the heads' biases
(`model/offsets.py`), so predict, bench, quantize and serve decide as the run did.

A head trained with cross-entropy on unbalanced data does not decide where its official metric
peaks: MuSeRC's F1a rewards saying "correct" more often than its 1:2 label ratio suggests, an MCC
is 0 while a head says one class for almost everything, and RCB's macro-F1 counts its rare
contradiction class as much as the others. Per task an offset vector is added to the logits.

Each task's official dev score is searched over candidate offsets (binary heads: ~200 thresholds
between the dev margins; RCB: an offset per class on a grid, entailment fixed at 0; MuSeRC decoded
per question; LiDiRus: MCC on TERRa's dev records, for its own copy of the TERRa head: sharing
TERRa's accuracy threshold it said entailment for 84 % of LiDiRus, gold 42 %), shrunk by the
one-standard-error rule: the offset nearest 0 (the trained decision) whose dev score is within
one bootstrap standard error of the best. The plain best of ~200 thresholds on ~160 records fits
the labels' noise (on logits without signal it scores 0.56 on dev where a fresh sample gets 0.50,
and its sign flips between runs); the rule keeps the trained decision unless dev says clearly
otherwise. Platt scaling (a logistic fit of the labels on the margin, deciding at 1/2) was tried
for the accuracy tasks and measured worse, chosen on one half of dev and scored on the other:
with a weak slope its threshold -b/a runs far from 0 (`benchmarks/dev_fixes.py`, docs/training.md).

Prior shift: a task whose `scored_prior` differs from its training data's label share (DaNetQA:
train 60.7 % True, val 50.2 %) gets its threshold moved by the difference of the two log-odds,
which is where the Bayes decision moves when only the prior changes (logit adjustment).

Choice tasks (PARus, RuCoS) pick the best candidate per group and have no offset.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlx_rsg.distributed import SINGLE, World
from mlx_rsg.predict import score_units
from mlx_rsg.tasks import REGISTRY, decode, task_score

# Candidate thresholds tried per binary task (each one a decode + official score of dev).
MAX_CANDIDATES = 200
# RCB: offsets of its two other classes, each on this grid (25 x 25 candidates).
CLASS_OFFSETS = np.linspace(-3.0, 3.0, 25)
BOOTSTRAP = 100  # resamples of dev for the standard error of the best score


@dataclass(frozen=True)
class Choice:
    """An offset vector (added to the head's logits) and the dev scores behind it."""

    offsets: tuple[float, ...]
    score: float  # dev score at `offsets`
    raw: float  # dev score at offsets 0 (the trained decision)
    best: float  # the best dev score of any candidate
    se: float  # bootstrap standard error of `best`


def official_score(task: str, records: list, keys: list, logits: np.ndarray,
                   metric: str | None = None) -> float:  # fmt: skip
    """The official score of deciding `task` by its decode of `logits` (one row per unit key),
    scored as `metric` scores (default: the task itself; LiDiRus: MCC of TERRa records)."""
    predictions = decode(task, records, keys, logits)
    metric = metric or task
    return task_score(metric, REGISTRY[metric].score(records, predictions))


def binary_tasks(tasks) -> list[str]:
    return [t for t in tasks if not REGISTRY[t].choice and len(REGISTRY[t].labels) == 2]


def calibrated_tasks(tasks) -> list[str]:
    """The trained tasks that get offsets: every label task (binary and RCB's three classes)."""
    return [t for t in tasks if not REGISTRY[t].choice and REGISTRY[t].has_train]


def candidates(task: str, logits: np.ndarray) -> np.ndarray:
    """Offset vectors to try (n, classes), the zero vector first. Binary: minus the midpoints
    between neighbouring margins and one past either end (at most MAX_CANDIDATES, evenly spaced
    in rank); more classes: the CLASS_OFFSETS grid for every class but the first."""
    n_classes = logits.shape[1]
    if n_classes == 2:
        margins = np.unique(logits[:, 1] - logits[:, 0])
        edges = np.concatenate([[margins[0] - 1], margins, [margins[-1] + 1]])
        mids = (edges[1:] + edges[:-1]) / 2
        if len(mids) > MAX_CANDIDATES:
            mids = mids[np.linspace(0, len(mids) - 1, MAX_CANDIDATES).round().astype(int)]
        thresholds = np.unique(np.concatenate([[0.0], mids]))
        out = np.zeros((len(thresholds), 2))
        out[:, 1] = -thresholds
    else:
        grids = np.meshgrid(*[CLASS_OFFSETS] * (n_classes - 1), indexing="ij")
        out = np.zeros((grids[0].size, n_classes))
        for c, grid in enumerate(grids, start=1):
            out[:, c] = grid.ravel()
    order = np.argsort(np.linalg.norm(out, axis=1), kind="stable")
    out = out[order]
    if np.any(out[0]):
        out = np.concatenate([np.zeros((1, n_classes)), out])
    return out


def choose_offsets(task: str, records: list, keys: list, logits: np.ndarray,
                   metric: str | None = None) -> Choice:  # fmt: skip
    """The task's offsets on these dev logits, scored as `metric` (default: the task itself):
    the searched offsets nearest 0 within one bootstrap standard error of the best."""
    metric = metric or task
    raw = official_score(task, records, keys, logits, metric)
    cands = candidates(task, logits)
    scores = np.array([official_score(task, records, keys, logits + c, metric) for c in cands])
    best = int(np.argmax(scores))
    se = _bootstrap_se(task, records, keys, logits + cands[best], metric)
    # candidates are sorted by norm: the first one within one SE of the best is the nearest 0
    chosen = next(i for i, s in enumerate(scores) if s >= scores[best] - se - 1e-12)
    return Choice(tuple(float(x) for x in cands[chosen]), float(scores[chosen]), raw,
                  float(scores[best]), se)  # fmt: skip


def _bootstrap_se(task: str, records: list, keys: list, logits: np.ndarray,
                  metric: str | None) -> float:  # fmt: skip
    """Standard deviation of the score over BOOTSTRAP resamples of the records (seeded)."""
    rows: dict = {}
    for i, k in enumerate(keys):
        rows.setdefault(k[0], []).append(i)
    rng = np.random.default_rng(len(records))
    scores = []
    for _ in range(BOOTSTRAP):
        picked = rng.integers(0, len(records), len(records))
        # resampled records get fresh idx values so that repeats stay distinct records
        sample, sample_keys, sample_rows = [], [], []
        for new_idx, j in enumerate(picked):
            r = records[j]
            sample.append(_renumbered(r, new_idx))
            for i in rows[r.idx]:
                sample_keys.append((new_idx, *keys[i][1:]))
                sample_rows.append(i)
        scores.append(official_score(task, sample, sample_keys, logits[sample_rows], metric))
    return float(np.std(scores))


def _renumbered(record, idx: int):
    return dataclasses.replace(record, idx=idx)


def log_odds(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def prior_shift(task: str, train_share: float | None) -> float:
    """How far class 1's logit moves for a task whose scored splits have another prior than
    its training data (`Task.scored_prior`); 0 otherwise."""
    target = REGISTRY[task].scored_prior
    if target is None or train_share is None:
        return 0.0
    return log_odds(target) - log_odds(train_share)


def class1_share(task: str, records: list) -> float | None:
    """The share of class 1 among the records' labels (binary label tasks), None if unknown."""
    values = [v for r in records for v in REGISTRY[task].label_values(r)]
    if not values or any(v is None for v in values):
        return None
    return sum(v == REGISTRY[task].labels[1] for v in values) / len(values)


def calibrated_scores(tasks: dict[str, dict], logits: dict[str, tuple]) -> dict[str, float]:
    """Each task's dev score as the run will decide if this epoch is chosen: label tasks at
    their chosen offsets (`logits`: evaluate's (records, keys, logits) per task), the others as
    scored. Epochs are compared on it: a head whose raw dev score swings with its bias must not
    choose the epoch when calibration moves that bias anyway."""
    out = {t: s["score"] for t, s in tasks.items()}
    for task in calibrated_tasks(tasks):
        if task in logits:
            out[task] = choose_offsets(task, *logits[task]).score
    return out


def choose_calibration(model, tokenizer, dev: dict[str, list], batch_size: int,
                       log: Callable[[str], None], world: World = SINGLE,
                       train: dict[str, list] | None = None) -> dict[str, dict]:  # fmt: skip
    """Per label task (and LiDiRus, with TERRa): the offsets `apply_calibration` adds to its
    head's bias, with the dev scores behind them. `train`: the training records, for the prior
    shift. `world`: dev scored in shards; every rank gets all logits and the same offsets."""
    model.eval()
    out = {}
    for task in calibrated_tasks(dev):
        records = dev[task]
        if not records:
            continue
        units, logits = score_units(model, tokenizer, task, records, batch_size, world=world)
        keys = [u.key for u in units]
        if task == "TERRa":
            choice = choose_offsets(task, records, keys, logits, metric="LiDiRus")
            out["LiDiRus"] = _entry(choice, 0.0, "MCC of TERRa's dev records")
            log(_line("LiDiRus", choice, 0.0, " (a copy of the TERRa head, by MCC)"))
        choice = choose_offsets(task, records, keys, logits)
        shift = prior_shift(task, class1_share(task, (train or {}).get(task, [])))
        out[task] = _entry(choice, shift, "official dev score")
        log(_line(task, choice, shift, ""))
    return out


def _entry(choice: Choice, shift: float, metric: str) -> dict:
    return {"offsets": list(choice.offsets), "prior_shift": shift, "metric": metric,
            "dev_before": choice.raw, "dev_after": choice.score, "dev_best": choice.best,
            "dev_se": choice.se}  # fmt: skip


def _line(task: str, choice: Choice, shift: float, what: str) -> str:
    offsets = ", ".join(f"{x:+.2f}" for x in choice.offsets[1:])
    how = f"best {choice.best:.4f} +- {choice.se:.4f}"
    prior = f", prior shift {shift:+.3f}" if shift else ""
    return (f"{task}: offsets {offsets} on dev{what}{prior}: score {choice.raw:.4f} -> "
            f"{choice.score:.4f} ({how})")
