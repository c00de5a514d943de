"""Decision offsets: what a run's calibration (run.json `calibration`, chosen on dev by
`train/calibrate.py`) adds to its heads' biases when the run is loaded.

The weights file keeps the heads as trained; run.json, written last, carries the offsets. A run
killed between the two is resumed from trained weights and calibrated again, never twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn

from mlx_rsg.tasks import REGISTRY


def apply_calibration(model, calibration: dict[str, dict]) -> None:
    """Add each task's offsets (and prior shift) to its head's bias. A task without a head of
    its own (LiDiRus) gets a copy of the head it is scored with (TERRa's, as trained) first."""
    for task in calibration:
        if task not in model.heads:
            model.heads[task] = _copy_head(model.heads[REGISTRY[task].head])
    for task, entry in calibration.items():
        head = model.heads[task]
        head.bias = head.bias + mx.array(entry_offsets(entry), dtype=head.bias.dtype)
        mx.eval(head.bias)


def entry_offsets(entry: dict) -> list[float]:
    """What one task's calibration entry adds to each of its head's logits: its offsets, with
    the prior shift on class 1."""
    offsets = [float(x) for x in entry["offsets"]]
    offsets[1] += float(entry.get("prior_shift", 0.0))
    return offsets


def _copy_head(head: nn.Linear) -> nn.Linear:
    out = nn.Linear(head.weight.shape[1], head.weight.shape[0])
    out.weight, out.bias = mx.array(head.weight), mx.array(head.bias)
    out.freeze()
    return out


@contextmanager
def calibrated(model, calibration: dict[str, dict]) -> Iterator[None]:
    """The model with `calibration` applied inside, its heads as trained again after (the
    biases restored exactly, the heads made for the calibration removed): training scores val
    calibrated and still saves, fuses or copies the heads as trained."""
    trained = {name: head.bias for name, head in model.heads.items()}
    apply_calibration(model, calibration)
    try:
        yield
    finally:
        for name in list(model.heads):
            if name in trained:
                model.heads[name].bias = trained[name]
            else:
                del model.heads[name]
