"""--dev-per-task: a dev split carved out of train chooses the epoch and calibrates the binary
heads' thresholds; val is scored once and its predictions written in the official format."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from test_model import model_for
from tiny_model import tiny_model_dir, tiny_rsg_dir, tiny_train_config  # noqa: F401

from mlx_rsg import train as T
from mlx_rsg.data import load_split
from mlx_rsg.errors import UserError
from mlx_rsg.model.backbone import load_tokenizer
from mlx_rsg.predict import load, score_units
from mlx_rsg.submission import read_submission
from mlx_rsg.tasks import decode, parse_record, score_task, task_score
from mlx_rsg.train.calibrate import (
    best_threshold,
    binary_tasks,
    calibrate_heads,
    calibrated_scores,
)
from mlx_rsg.train.plan import split_dev


def test_dev_is_whole_records_out_of_train_drawn_from_the_seed():
    records = [parse_record("TERRa", {"premise": "a", "hypothesis": "b", "label": "entailment",
                                      "idx": i}) for i in range(40)]  # fmt: skip
    cfg = tiny_train_config(dev_per_task=10, seed=3)
    train, dev = split_dev("TERRa", records, cfg)
    assert len(dev) == 10 and len(train) == 30
    assert {r.idx for r in train} | {r.idx for r in dev} == set(range(40))
    assert not {r.idx for r in train} & {r.idx for r in dev}
    assert [r.idx for r in dev] != list(range(10))  # drawn, not the first records
    assert split_dev("TERRa", records, cfg)[1] == dev  # the same for the same seed
    assert split_dev("TERRa", records, tiny_train_config(seed=4, dev_per_task=10))[1] != dev
    assert split_dev("TERRa", records, tiny_train_config())[1] == []
    with pytest.raises(UserError, match="--dev-per-task 40: it would take all of TERRa's 40"):
        split_dev("TERRa", records, tiny_train_config(dev_per_task=40))


def test_best_threshold_maximises_the_official_score():
    gold = ["not_entailment", "not_entailment", "entailment", "entailment"]
    records = [parse_record("TERRa", {"premise": "a", "hypothesis": "b", "label": g, "idx": i})
               for i, g in enumerate(gold)]  # fmt: skip
    keys = [(i,) for i in range(4)]
    # margin = logit(not_entailment) - logit(entailment): 3, 2, 1, -1. At 0 the third record is
    # wrong (accuracy 3/4); any threshold in (1, 2) gets all four right.
    logits = np.array([[0.0, 3.0], [0.0, 2.0], [0.0, 1.0], [0.0, -1.0]])
    threshold, score = best_threshold("TERRa", records, keys, logits)
    assert 1 < threshold < 2 and score == 1.0
    # Already right at 0: the threshold stays at 0 (ties go to the nearest one).
    logits[2] = [0.0, -0.5]
    assert best_threshold("TERRa", records, keys, logits) == (0.0, 1.0)
    assert binary_tasks(["TERRa", "RCB", "PARus", "MuSeRC", "RUSSE"]) == ["TERRa", "MuSeRC",
                                                                           "RUSSE"]  # fmt: skip


def test_calibrated_scores_move_only_binary_heads():
    terra = [parse_record("TERRa", {"premise": "a", "hypothesis": "b", "label": g, "idx": i})
             for i, g in enumerate(["not_entailment", "entailment"])]  # fmt: skip
    # Both margins > 0: accuracy 1/2 at threshold 0, 1 between them.
    logits = {"TERRa": (terra, [(0,), (1,)], np.array([[0.0, 3.0], [0.0, 1.0]]))}
    tasks = {"TERRa": {"score": 0.5}, "RCB": {"score": 0.25}}
    assert calibrated_scores(tasks, logits) == {"TERRa": 1.0, "RCB": 0.25}
    assert calibrated_scores(tasks, {}) == {"TERRa": 0.5, "RCB": 0.25}  # no logits: as scored


@pytest.fixture(scope="module")
def dev_run(tiny_model_dir, tiny_rsg_dir, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("runs") / "dev"
    cfg = tiny_train_config(dev_per_task=12, epochs=2)
    logs: list[str] = []
    metrics = T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, log=logs.append)
    return run, metrics, logs


def test_epochs_are_chosen_on_dev_and_val_is_scored_once(dev_run, tiny_rsg_dir):  # noqa: F811
    run, metrics, logs = dev_run
    assert metrics["selection"].startswith("best epoch by the mean official dev")
    assert metrics["selection"].endswith("binary heads at their calibrated thresholds")
    assert any(m.startswith("TERRa: 36/36 train, 12 dev, 24 val records") for m in logs), logs
    history = metrics["history"]
    assert all(set(h["tasks"]) == {"TERRa", "RCB", "PARus"} for h in history)
    # Epochs are compared as the calibrated run decides: TERRa (binary) at its best dev
    # threshold, RCB and PARus as scored.
    for h in history:
        calibrated = h["calibrated"]["tasks"]
        assert calibrated["TERRa"] >= h["tasks"]["TERRa"]["score"]
        assert calibrated["RCB"] == h["tasks"]["RCB"]["score"]
        assert h["calibrated"]["score"] == pytest.approx(sum(calibrated.values()) / 3)
    best = max(history, key=lambda h: h["calibrated"]["score"])
    assert metrics["best"] == {"epoch": best["epoch"], "score": best["calibrated"]["score"]}
    final = metrics["final"]
    assert final["split"] == "val" and set(final["tasks"]) == {"TERRa", "RCB", "PARus", "LiDiRus"}
    assert set(final["calibration"]) == {"TERRa"}  # the binary label task of the three
    c = final["calibration"]["TERRa"]
    assert c["dev_after"] >= c["dev_before"]


def test_val_predictions_rescore_to_the_reported_scores(dev_run, tiny_rsg_dir):  # noqa: F811
    run, metrics, _ = dev_run
    back = read_submission(run / "val_predictions.zip")
    assert set(back) == {"TERRa", "RCB", "PARus", "LiDiRus"}
    for task, want in metrics["final"]["tasks"].items():
        split = "test" if task == "LiDiRus" else "val"
        records = load_split(tiny_rsg_dir, task, split)
        got = score_task(task, records, back[task])
        assert task_score(task, got) == pytest.approx(want["score"], abs=1e-9), task


def test_the_calibrated_threshold_is_in_the_saved_head(dev_run, tiny_rsg_dir):  # noqa: F811
    """predict loads the run's weights: its TERRa decisions on val are those of the zip."""
    run, metrics, _ = dev_run
    predictor = load(run)
    records = load_split(tiny_rsg_dir, "TERRa", "val")
    preds, _, _ = predictor.predictions("TERRa", records)
    back = read_submission(run / "val_predictions.zip")["TERRa"]
    assert [back[r.idx] for r in records] == list(preds)
    info = json.loads((run / "run.json").read_text())
    assert info["train"]["dev_per_task"] == 12 and info["status"] == "done"


def test_calibration_moves_a_biased_head(tiny_model_dir):  # noqa: F811
    """A head that says one class for everything gets a threshold that splits the dev margins."""
    model = model_for(tiny_model_dir, method="heads")
    tok = load_tokenizer(tiny_model_dir)
    model.heads["TERRa"].bias = model.heads["TERRa"].bias + mx.array([0.0, 100.0])
    pairs = [("Кошка сидит.", "Кошка спит.", "entailment"),
             ("Мама мыла раму.", "Собака спит.", "entailment"),
             ("Дождь идёт.", "Мы дома.", "not_entailment")]  # fmt: skip
    records = [parse_record("TERRa", {"premise": p, "hypothesis": h, "label": g, "idx": i})
               for i, (p, h, g) in enumerate(pairs)]  # fmt: skip
    units, logits = score_units(model, tok, "TERRa", records, 8)
    assert set(decode("TERRa", records, [u.key for u in units], logits)) == {"not_entailment"}
    out = calibrate_heads(model, tok, {"TERRa": records}, 8, log=lambda m: None)["TERRa"]
    assert out["threshold"] > 50 and out["dev_after"] > out["dev_before"]
    units, logits = score_units(model, tok, "TERRa", records, 8)
    after = decode("TERRa", records, [u.key for u in units], logits)
    assert score_task("TERRa", records, after)["accuracy"] == out["dev_after"]
