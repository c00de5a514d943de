"""Decision thresholds chosen on the dev split, folded into the heads' biases.

A binary head decides by the sign of its margin (logit 1 - logit 0). Trained with cross-entropy
on unbalanced data, that sign is not where the official metric peaks: MuSeRC's F1a rewards
saying "correct" more often than its 1:2 label ratio suggests, and an MCC (LiDiRus, through the
TERRa head) is 0 as long as the head says one class for almost everything. For each binary label
task we move the threshold to the value that maximises the task's official score on dev (ties:
the one nearest 0), and subtract it from the head's bias of class 1. The run's weights then carry
the calibration: predict, bench and quantize need nothing else. Choice tasks (PARus, RuCoS) pick
the best candidate per group and have no threshold; RCB has three classes and is left as trained.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import numpy as np

from mlx_rsg.distributed import SINGLE, World
from mlx_rsg.predict import score_units
from mlx_rsg.tasks import REGISTRY, decode, score_task, task_score

# Candidate thresholds tried per task (each one a decode + official score of the dev split).
MAX_CANDIDATES = 200


def official_score(task: str, records: list, keys: list, logits: np.ndarray) -> float:
    """The task's official score of deciding by argmax over `logits` (one row per unit key)."""
    return task_score(task, score_task(task, records, decode(task, records, keys, logits)))


def binary_tasks(tasks) -> list[str]:
    return [t for t in tasks if not REGISTRY[t].choice and len(REGISTRY[t].labels) == 2]


def best_threshold(task: str, records: list, keys: list, logits: np.ndarray) -> tuple[float, float]:
    """(threshold, dev score) maximising the official score of deciding class 1 when
    margin > threshold; ties go to the threshold nearest 0."""
    margins = np.unique(logits[:, 1] - logits[:, 0])
    # Midpoints between neighbouring margins (a threshold never sits on one) and one past
    # either end; at most MAX_CANDIDATES of them, evenly spaced in rank.
    edges = np.concatenate([[margins[0] - 1], margins, [margins[-1] + 1]])
    mids = (edges[1:] + edges[:-1]) / 2
    if len(mids) > MAX_CANDIDATES:
        mids = mids[np.linspace(0, len(mids) - 1, MAX_CANDIDATES).round().astype(int)]
    candidates = np.unique(np.concatenate([[0.0], mids]))
    best = (-np.inf, 0.0)
    for t in sorted(candidates, key=abs):
        shifted = logits.copy()
        shifted[:, 1] -= t
        score = official_score(task, records, keys, shifted)
        if score > best[0] + 1e-12:
            best = (score, float(t))
    return best[1], best[0]


def calibrated_scores(tasks: dict[str, dict], logits: dict[str, tuple]) -> dict[str, float]:
    """Each task's dev score as the run will decide if this epoch is chosen: binary label tasks
    at their best threshold (`logits`: evaluate's (records, keys, logits) per task), the others
    as scored. Epochs are compared on it: a head whose raw dev score swings with its bias (RWSD,
    README) must not choose the epoch when calibration moves that bias anyway."""
    out = {t: s["score"] for t, s in tasks.items()}
    for task in binary_tasks(tasks):
        if task in logits:
            out[task] = best_threshold(task, *logits[task])[1]
    return out


def calibrate_heads(model, tokenizer, dev: dict[str, list], batch_size: int,
                    log: Callable[[str], None],
                    world: World = SINGLE) -> dict[str, dict[str, float]]:  # fmt: skip
    """Shift each binary task's head bias by its dev-optimal threshold; returns per task the
    threshold and the dev score before and after. `world`: dev scored in shards, every rank
    gets all logits and so the same thresholds."""
    model.eval()
    out = {}
    for task in binary_tasks(dev):
        records = dev[task]
        if not records:
            continue
        units, logits = score_units(model, tokenizer, task, records, batch_size, world=world)
        keys = [u.key for u in units]
        before = official_score(task, records, keys, logits)
        threshold, after = best_threshold(task, records, keys, logits)
        head = model.heads[REGISTRY[task].head]
        head.bias = head.bias - mx.array([0.0, threshold], dtype=head.bias.dtype)
        mx.eval(head.bias)
        out[task] = {"threshold": round(threshold, 6), "dev_before": before, "dev_after": after}
        log(f"{task}: threshold {threshold:+.3f} on dev, score {before:.4f} -> {after:.4f}")
    return out
