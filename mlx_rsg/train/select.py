"""How a run chooses its epoch on dev (`--select`).

`loss` (the default): the lowest mean over tasks of the heads' dev log-loss, the quantity training
minimises, on records it did not train on. Every record's confidence counts, where an official
score counts right or wrong: with ~160 dev records per task a task's accuracy moves by +-0.04
between epochs from noise alone, and a near-constant head whose threshold is then fitted to dev
(a barely trained epoch) scores well in-sample. `score`: the highest mean official dev score,
each label head at its calibrated offsets (`calibrate.calibrated_scores`; raw with
--no-calibrate).
"""

from __future__ import annotations

import numpy as np

from mlx_rsg.tasks import REGISTRY, make_units


def log_loss(task: str, records: list, keys: list, logits: np.ndarray) -> float:
    """Mean cross-entropy of the records' gold labels under `logits` (one row per unit key, in
    `make_units` order), as training's loss defines it: over the head's classes per unit for
    label tasks, over each group's units for choice tasks (groups without a gold unit skipped)."""
    units = make_units(task, records)
    assert [u.key for u in units] == list(keys), "logits must be in make_units order"
    if not REGISTRY[task].choice:
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-np.mean([logp[i, u.label] for i, u in enumerate(units)]))
    groups: dict = {}
    for i, u in enumerate(units):
        groups.setdefault(u.group, []).append(i)
    losses = []
    for rows in groups.values():
        gold = [i for i in rows if units[i].label == 1]
        if not gold:
            continue
        s = logits[rows, 0]
        losses.append(float(np.log(np.exp(s - s.max()).sum()) + s.max() - logits[gold[0], 0]))
    return float(np.mean(losses)) if losses else float("nan")
