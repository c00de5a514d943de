"""benchmarks/ablation.py --folds: the folds of a configuration pooled into one cross-validated
score per epoch, weighted by the records each fold held out."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import ablation  # noqa: E402


def _run(config, fold, epochs, val):
    """A run as run_one records it: each epoch (PARus accuracy, log-loss, records held out)."""
    return {"name": f"{config} (fold {fold})", "config": config, "seed": 0, "fold": fold,
            "seconds": 60.0, "val": {"total": val, "tasks": {"PARus": val}}, "flags": [],
            "trainable_parameters": 1, "dev": {"score": epochs[0][0]}, "dev_loss": epochs[0][1],
            "epochs": [{"tasks": {"PARus": acc}, "dev_loss": {"PARus": loss},
                        "records": {"PARus": n}} for acc, loss, n in epochs]}  # fmt: skip


def test_folds_pool_by_the_records_they_held_out():
    # fold 1 holds out 30 records, fold 2 holds out 10: pooled accuracy is correct / 40
    runs = [_run("a", 1, [(0.5, 0.70, 30), (0.6, 0.80, 30)], 0.55),
            _run("a", 2, [(0.9, 0.60, 10), (0.1, 0.50, 10)], 0.45)]  # fmt: skip
    cv = ablation.cross_validation({"runs": runs})["a"]
    e1, e2 = cv["epochs"]
    assert e1["score"] == pytest.approx((15 + 9) / 40) and e2["score"] == pytest.approx(19 / 40)
    assert e1["loss"] == pytest.approx((0.7 * 30 + 0.6 * 10) / 40)  # 0.675
    assert e2["loss"] == pytest.approx((0.8 * 30 + 0.5 * 10) / 40)  # 0.725
    assert cv["best_epoch"] == 1 and e1["records"] == {"PARus": 40}
    assert cv["folds"] == 2 and cv["minutes"] == 2.0 and cv["val"] == pytest.approx(0.5)
    table = ablation.table({"runs": runs})
    row = "| a | 2 | PARus 40 | 2.0 | 0.600 | 0.475 | 1 | 0.600 ± 0.077 | 0.6750 | 0.500 |"
    assert row in table.split("The folds pooled:")[1]
    assert "Mean over the seeds" not in table  # folds are not seeds


def test_runs_without_folds_have_no_pooling():
    run = _run("a", 1, [(0.5, 0.7, 30)], 0.5)
    del run["fold"]
    assert ablation.cross_validation({"runs": [run]}) == {}
    assert ablation.fold_table({"runs": [run]}) == ""
