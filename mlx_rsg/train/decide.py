"""How a run decides RWSD (`--rwsd-decision`): by its head, or by substitution through the base
language model (`model/substitution.py`), chosen on dev like every other decision.

The rule (`dev`): substitution when its dev accuracy is higher than the calibrated head's on the
same dev records, the head otherwise (and without a dev split). RWSD's dev split holds whole
schemas (`plan.split_dev` draws groups), so every twin is decided with its pair there too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlx_rsg.distributed import SINGLE, World
from mlx_rsg.model import substitution
from mlx_rsg.model.offsets import calibrated
from mlx_rsg.predict import evaluate


def choose_rwsd_decision(model, tokenizer, model_dir: Path, rule: str, dev: list | None,
                         calibration: dict, batch_size: int, log: Callable[[str], None],
                         world: World = SINGLE) -> dict[str, Any]:  # fmt: skip
    """run.json's `decisions.RWSD` by `rule` (head | substitution | dev), with the dev scores
    it was chosen on; the model decides RWSD that way when this returns (model.substitution)."""
    model.substitution = None
    if rule == "head" or (rule == "dev" and not dev):
        return {"by": "head"}
    entry = substitution.decision_entry(model_dir, model.trainable_start(), {})
    lm = substitution.build(model.backbone, entry, tokenizer, verify=False, cores=world.cores)
    if dev:
        with calibrated(model, calibration):
            head = evaluate(model, tokenizer, {"RWSD": dev}, batch_size, world=world)
        model.substitution = lm
        by_lm = evaluate(model, tokenizer, {"RWSD": dev}, batch_size, world=world)
        scores = {"head": head["score"], "substitution": by_lm["score"], "records": len(dev)}
        entry["dev"] = scores
        if rule == "dev" and scores["substitution"] <= scores["head"]:
            model.substitution = None
            log(f"RWSD: decided by its head (dev {scores['head']:.4f}; substitution "
                f"{scores['substitution']:.4f})")  # fmt: skip
            return {"by": "head", "dev": scores}
        log(f"RWSD: decided by substitution (dev {scores['substitution']:.4f}; its head "
            f"{scores['head']:.4f})")  # fmt: skip
    model.substitution = lm
    return entry
