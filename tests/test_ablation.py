"""benchmarks/ablation.py --folds: the folds of a configuration pooled into one cross-validated
score per epoch, weighted by the records each fold held out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_model import tiny_model_dir, tiny_rsg_dir, tiny_train_config  # noqa: F401

from mlx_rsg.data import load_split
from mlx_rsg.errors import UserError
from mlx_rsg.submission import write_submission

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
    row = "| a | 2 | PARus 40 | 2.0 | 0.600 | 0.475 | 1 | 0.600 ± 0.077 | 0.6750 |  | 0.500 |"
    assert row in table.split("The folds pooled:")[1]
    assert "Mean over the seeds" not in table  # folds are not seeds


def test_runs_without_folds_have_no_pooling():
    run = _run("a", 1, [(0.5, 0.7, 30)], 0.5)
    del run["fold"]
    assert ablation.cross_validation({"runs": [run]}) == {}
    assert ablation.fold_table({"runs": [run]}) == ""


def test_paired_compares_out_of_fold_decisions_on_the_same_records(tmp_path):
    """Two configurations' folds (two of 4 PARus records each) read back from their
    dev_predictions at the chosen epoch: b decides 6 of the 8 right, a 4, on the same records."""
    data = tmp_path / "data"
    (data / "PARus").mkdir(parents=True)
    rows = [{"premise": f"p{i}", "choice1": "a", "choice2": "b", "question": "cause",
             "label": i % 2, "idx": i} for i in range(8)]  # fmt: skip
    (data / "PARus" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_split(data, "PARus", "train")

    def fold_runs(config: str, right: set[int]) -> list[dict]:
        runs = []
        for fold, held in ((1, records[:4]), (2, records[4:])):
            run = tmp_path / f"{config}-fold{fold}"
            (run / "dev_predictions").mkdir(parents=True)
            preds = [r.label if r.idx in right else 1 - r.label for r in held]
            write_submission(run / "dev_predictions" / "epoch2.zip", {"PARus": (held, preds)})
            runs.append({"config": config, "fold": fold, "run": str(run)})
        return runs

    result = {"runs": fold_runs("a", {0, 1, 2, 3}) + fold_runs("b", set(range(6))),
              "cross_validation": {"a": {"best_epoch": 2}, "b": {"best_epoch": 2}}}  # fmt: skip
    p = ablation.paired(result, data)
    assert list(p) == ["b"] and p["b"]["against"] == "a"
    assert p["b"]["tasks"]["PARus"]["difference"] == pytest.approx(6 / 8 - 4 / 8)
    assert p["b"]["mean"]["difference"] == pytest.approx(0.25)
    # two records differ, both for b: the paired SE is that of 2 in 8, sqrt(.25 * .75 / 8) ~ 0.15
    assert 0.1 < p["b"]["mean"]["se"] < 0.2


def test_a_runs_trained_backbone_is_the_base_with_its_trained_blocks(tiny_model_dir,  # noqa: F811
                                                                     tiny_rsg_dir, tmp_path):  # noqa: F811, E501
    """benchmarks/trained_backbone.py (ablation's `trained` base): every weight of the model it
    writes is the run's as `predict.load` gives it (trained block and final norm included), the
    frozen ones the base's; a run that is not `freeze` is one line."""
    from mlx.utils import tree_flatten
    from trained_backbone import trained_backbone

    from mlx_rsg import train as T
    from mlx_rsg.model.backbone import load_backbone
    from mlx_rsg.predict import load

    run = tmp_path / "run"
    T.train(tiny_model_dir, tiny_rsg_dir, run, tiny_train_config(epochs=1), log=lambda m: None)
    names = trained_backbone(run, tmp_path / "made")
    assert names and all(".layers.1." in n or n == "model.norm.weight" for n in names)
    made = dict(tree_flatten(load_backbone(tmp_path / "made").model.parameters()))
    ran = dict(tree_flatten(load(run).model.backbone.model.parameters()))
    base = dict(tree_flatten(load_backbone(tiny_model_dir).model.parameters()))
    assert made.keys() == ran.keys()
    assert all(np.array_equal(np.array(made[k]), np.array(ran[k])) for k in made)
    assert [k for k in made if not np.array_equal(np.array(made[k]), np.array(base[k]))]
    assert json.loads((tmp_path / "made" / "mlx_rsg.json").read_text())["trained_blocks"] == {
        "run": str(run), "weights": len(names)}
    with pytest.raises(UserError, match="exists"):  # never over a directory without --force
        trained_backbone(run, tmp_path / "made")
    heads_run = tmp_path / "heads"
    T.train(tiny_model_dir, tiny_rsg_dir, heads_run, tiny_train_config(epochs=1, method="heads"),
            log=lambda m: None)  # fmt: skip
    with pytest.raises(UserError, match="a heads run; only freeze runs"):
        trained_backbone(heads_run, tmp_path / "made2")


def test_the_trained_base_is_made_again_only_for_another_run(tiny_model_dir, tiny_rsg_dir,  # noqa: F811
                                                            tmp_path):  # noqa: F811
    """ablation's `trained` base under --runs is reused for the same --trained-run, made again
    from another one, and a missing or bad --trained-run is one line."""
    import argparse

    from mlx_rsg import train as T

    runs = {}
    for seed in (0, 1):
        runs[seed] = tmp_path / f"run{seed}"
        T.train(tiny_model_dir, tiny_rsg_dir, runs[seed], tiny_train_config(epochs=1, seed=seed),
                log=lambda m: None)  # fmt: skip
    args = argparse.Namespace(runs=tmp_path / "ablation", trained_run=runs[0])
    path, note = ablation.base_model("parus-trained12-heads", args)
    assert note == {"base": f"the blocks `{runs[0]}` trained, in --model"}
    weights = path / "model.safetensors"
    first = weights.stat().st_mtime_ns
    assert ablation.base_model("parus-trained12-heads", args)[0] == path
    assert weights.stat().st_mtime_ns == first  # reused
    args.trained_run = runs[1]
    ablation.base_model("parus-trained12-heads", args)
    manifest = json.loads((path / "mlx_rsg.json").read_text())
    assert manifest["trained_blocks"]["run"] == str(runs[1])
    for bad, says in ((None, "needs --trained-run"), (tmp_path / "nothing", "--trained-run: ")):
        args.trained_run = bad
        with pytest.raises(SystemExit, match=says):
            ablation.base_model("parus-trained12-heads", args)
