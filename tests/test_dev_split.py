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
from mlx_rsg.model.offsets import apply_calibration
from mlx_rsg.predict import load, score_units
from mlx_rsg.submission import read_submission
from mlx_rsg.tasks import decode, parse_record, score_task, task_score
from mlx_rsg.train.calibrate import (
    binary_tasks,
    calibrated_scores,
    calibrated_tasks,
    choose_calibration,
    choose_offsets,
    official_score,
    prior_shift,
)
from mlx_rsg.train.plan import record_groups, split_dev


def _terra(premises, labels=None):
    labels = labels or ["entailment"] * len(premises)
    return [parse_record("TERRa", {"premise": p, "hypothesis": "b", "label": g, "idx": i})
            for i, (p, g) in enumerate(zip(premises, labels, strict=True))]  # fmt: skip


def test_dev_is_whole_records_out_of_train_drawn_from_the_seed():
    records = _terra([f"p{i}" for i in range(40)])
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


def _rwsd(i, text, span1, pronoun, label):
    words = text.split()
    target = {"span1_text": span1, "span1_index": words.index(span1.split()[0]),
              "span2_text": pronoun, "span2_index": words.index(pronoun.split()[0])}  # fmt: skip
    return parse_record("RWSD", {"idx": i, "text": text, "target": target, "label": label})


def test_groups_never_straddle_train_and_dev():
    """Near-copies go to one side: TERRa records sharing a premise, DaNetQA records sharing a
    question or a passage (transitively), a Winograd schema's two texts and both candidates."""
    terra = _terra([f"p{i // 3}" for i in range(60)])  # 20 premises, 3 records each
    dan = [parse_record("DaNetQA", {"idx": i, "question": f"q{i // 2}", "passage": f"t{i // 4}",
                                    "label": True}) for i in range(40)]  # fmt: skip
    rwsd = []
    for k in range(15):  # schemas: two texts differing after the pronoun, two candidates each
        for end in ("быстрее", "медленнее"):
            text = f"Кот{k} догнал пса{k}, потому что он бежал {end}."
            rwsd += [_rwsd(len(rwsd), text, f"Кот{k}", "он бежал", end == "быстрее"),
                     _rwsd(len(rwsd) + 1, text, f"пса{k},", "он бежал", end != "быстрее")]
    assert [len(g) for g in record_groups("TERRa", terra)] == [3] * 20
    assert [len(g) for g in record_groups("DaNetQA", dan)] == [4] * 10  # q links 2, passage 4
    assert [len(g) for g in record_groups("RWSD", rwsd)] == [4] * 15
    for task, records, key in (("TERRa", terra, lambda r: r.premise),
                               ("DaNetQA", dan, lambda r: r.passage),
                               ("RWSD", rwsd, lambda r: r.text.split()[0])):  # fmt: skip
        for seed in range(5):
            train, dev = split_dev(task, records, tiny_train_config(dev_per_task=9, seed=seed))
            assert len(train) + len(dev) == len(records) and len(dev) >= 9
            assert not {key(r) for r in train} & {key(r) for r in dev}, (task, seed)


def test_dev_folds_partition_train_into_balanced_whole_groups():
    """--dev-fold K/N: the N folds of one seed are disjoint, cover every record once, keep
    near-copies together, hold about as many examples each, and follow the seed."""
    terra = _terra([f"p{i // 3}" for i in range(60)] + [f"q{i}" for i in range(13)])
    folds = [split_dev("TERRa", terra, tiny_train_config(dev_fold=f"{k}/5", seed=1))
             for k in range(1, 6)]  # fmt: skip
    devs = [[r.idx for r in dev] for _, dev in folds]
    assert sorted(i for dev in devs for i in dev) == list(range(73))  # each record held out once
    for (train, dev), idx in zip(folds, devs, strict=True):
        assert idx == sorted(idx) and len(train) + len(dev) == 73
        assert not {r.premise for r in train} & {r.premise for r in dev}
    sizes = sorted(len(d) for d in devs)
    assert sum(sizes) == 73 and sizes[-1] - sizes[0] <= 3  # within one group of each other
    other = split_dev("TERRa", terra, tiny_train_config(dev_fold="1/5", seed=2))[1]
    assert [r.idx for r in other] != devs[0]
    assert split_dev("TERRa", terra, tiny_train_config(dev_fold="1/5", seed=1))[1] == folds[0][1]


@pytest.mark.parametrize("spec, message", [
    ("3", "'3' is not K/N"), ("a/5", "'a/5' is not K/N"), ("0/5", "'0/5': needs N >= 2 and 1"),
    ("6/5", "'6/5': needs N >= 2 and 1 <= K <= N"), ("1/1", "'1/1': needs N >= 2"),
])  # fmt: skip
def test_a_bad_dev_fold_is_one_line(spec, message):
    with pytest.raises(UserError, match=f"^--dev-fold: {message}"):
        tiny_train_config(dev_fold=spec).validate()


def test_a_fold_and_a_drawn_dev_split_are_one_or_the_other():
    with pytest.raises(UserError, match="^--dev-fold and --dev-per-task: give one"):
        tiny_train_config(dev_fold="1/5", dev_per_task=12).validate()


def test_more_folds_than_groups_is_refused():
    with pytest.raises(UserError, match="--dev-fold 1/5: TERRa has 4 groups of training records, "
                       "fewer than its 5 folds"):  # fmt: skip
        split_dev("TERRa", _terra(["a", "b", "c", "d"]), tiny_train_config(dev_fold="1/5"))


def test_a_fold_run_keeps_its_dev_decisions(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    """A --dev-fold run is a dev run: its epoch is chosen on the fold and val is scored once.
    Each epoch's entry says how many records each dev score stands on, and its dev records'
    decisions (dev_predictions/epochN.zip) re-score to that epoch's dev scores."""
    cfg = tiny_train_config(dev_fold="2/3", epochs=2, tasks=("TERRa", "PARus"))
    logs: list[str] = []
    run = tmp_path / "fold"
    metrics = T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, log=logs.append)
    data = {t: load_split(tiny_rsg_dir, t, "train") for t in cfg.tasks}
    held = {t: split_dev(t, recs, cfg)[1] for t, recs in data.items()}
    assert all(0 < len(held[t]) < len(data[t]) for t in cfg.tasks)
    assert metrics["final"]["split"] == "val" and "dev_loss" in metrics["history"][0]
    assert any(m.startswith(f"TERRa: {48 - len(held['TERRa'])}/") for m in logs), logs
    for h in metrics["history"]:
        assert h["records"] == {t: len(recs) for t, recs in held.items()}
        back = read_submission(run / "dev_predictions" / f"epoch{h['epoch']}.zip")
        assert set(back) == set(cfg.tasks)
        for task, records in held.items():
            got = task_score(task, score_task(task, records, back[task]))
            assert got == pytest.approx(h["tasks"][task]["score"], abs=1e-9), (task, h["epoch"])


def _labelled(task, golds):
    field = {"TERRa": ("premise", "hypothesis"), "RCB": ("premise", "hypothesis")}[task]
    return [parse_record(task, {field[0]: f"p{i}", field[1]: "h", "label": g, "idx": i})
            for i, g in enumerate(golds)]  # fmt: skip


def test_an_accuracy_threshold_moves_where_dev_says_clearly():
    """160 records whose labels switch (noisily) where the margin is 2: the threshold lands near
    2 and gains well over one standard error; for margins centred on the switch it stays near
    0."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=160) * 2
    golds = ["not_entailment" if v + rng.normal() > 0 else "entailment" for v in x]
    records, keys = _labelled("TERRa", golds), [(i,) for i in range(160)]
    logits = np.stack([np.zeros(160), x + 2.0], axis=1)
    choice = choose_offsets("TERRa", records, keys, logits)
    assert choice.offsets[0] == 0.0
    assert 1.0 < -choice.offsets[1] < 3.0 and choice.score > choice.raw + 0.1
    shifted = logits + np.array(choice.offsets)
    assert official_score("TERRa", records, keys, shifted) == choice.score
    centred = choose_offsets("TERRa", records, keys, np.stack([np.zeros(160), x], axis=1))
    assert abs(centred.offsets[1]) < 0.5
    assert binary_tasks(["TERRa", "RCB", "PARus", "MuSeRC", "RUSSE"]) == ["TERRa", "MuSeRC",
                                                                           "RUSSE"]  # fmt: skip
    assert calibrated_tasks(["TERRa", "RCB", "PARus", "LiDiRus"]) == ["TERRa", "RCB"]


def test_a_searched_offset_is_the_nearest_to_zero_within_one_standard_error():
    """MCC (LiDiRus's threshold on TERRa records) has no closed form: a search. With no signal
    (random margins and labels, 160 records, 30 seeds) the best threshold is noise; the
    one-standard-error rule picks the candidate nearest 0 among those within one SE of the best,
    and moves far less than the best one."""
    from mlx_rsg.train.calibrate import candidates

    moved_rule, moved_argmax = [], []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        golds = rng.choice(["entailment", "not_entailment"], 160).tolist()
        records, keys = _labelled("TERRa", golds), [(i,) for i in range(160)]
        logits = np.stack([np.zeros(160), rng.normal(size=160)], axis=1)
        choice = choose_offsets("TERRa", records, keys, logits, metric="LiDiRus")
        cands = candidates("TERRa", logits)
        scores = [official_score("TERRa", records, keys, logits + c, "LiDiRus") for c in cands]
        floor = max(scores) - choice.se - 1e-12
        within = [c for c, s in zip(cands, scores, strict=True) if s >= floor]
        assert abs(choice.offsets[1]) == pytest.approx(min(abs(c[1]) for c in within))
        assert choice.best == pytest.approx(max(scores))
        moved_rule.append(abs(choice.offsets[1]))
        moved_argmax.append(abs(cands[int(np.argmax(scores))][1]))
    assert np.mean(moved_rule) < 0.5 * np.mean(moved_argmax), (moved_rule, moved_argmax)


def test_rcb_class_offsets_bring_back_a_class_the_head_never_says():
    """RCB's head never says contradiction; macro-F1 wants it said where it is likeliest."""
    rng = np.random.default_rng(1)
    golds = rng.choice(["entailment", "contradiction", "neutral"], 120, p=[.4, .2, .4]).tolist()
    records, keys = _labelled("RCB", golds), [(i,) for i in range(120)]
    signal = np.array([[g == c for c in ("entailment", "contradiction", "neutral")]
                       for g in golds], float) * 1.5  # fmt: skip
    logits = signal + rng.normal(size=(120, 3)) * 0.7 + np.array([0.0, -4.0, 0.0])
    assert "contradiction" not in decode("RCB", records, keys, logits)
    choice = choose_offsets("RCB", records, keys, logits)
    assert choice.offsets[0] == 0.0 and choice.offsets[1] > 1.0
    after = decode("RCB", records, keys, logits + np.array(choice.offsets))
    assert "contradiction" in after
    assert task_score("RCB", score_task("RCB", records, after)) > choice.raw + 0.05


def test_the_prior_shift_is_the_log_odds_difference():
    """DaNetQA's scored splits are taken as balanced (train 60.7 % True, val 50.2 %)."""
    assert prior_shift("DaNetQA", 0.607) == pytest.approx(np.log(0.5 / 0.5) - np.log(0.607 / 0.393))
    assert prior_shift("DaNetQA", None) == 0.0
    assert prior_shift("TERRa", 0.3) == 0.0  # no known shift: as trained


def test_dev_log_loss_is_training_s_loss_on_dev():
    """By hand: label tasks average -log softmax at the gold class; choice tasks average the
    softmax over each group's units at the gold unit."""
    from mlx_rsg.train.select import log_loss

    terra = _labelled("TERRa", ["entailment", "not_entailment"])
    logits = np.array([[2.0, 0.0], [0.0, 1.0]])
    want = (np.log(1 + np.exp(-2.0)) + np.log(1 + np.exp(-1.0))) / 2
    assert log_loss("TERRa", terra, [(0,), (1,)], logits) == pytest.approx(want)
    parus = [parse_record("PARus", {"premise": "п", "choice1": "а", "choice2": "б",
                                    "question": "cause", "label": g, "idx": i})
             for i, g in enumerate([0, 1])]  # fmt: skip
    keys = [(0, 0), (0, 1), (1, 0), (1, 1)]
    scores = np.array([[1.0], [0.0], [0.0], [3.0]])
    want = (np.log(1 + np.exp(-1.0)) + np.log(1 + np.exp(-3.0))) / 2
    assert log_loss("PARus", parus, keys, scores) == pytest.approx(want)


def test_select_score_keeps_the_best_calibrated_dev_mean(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    cfg = tiny_train_config(dev_per_task=12, epochs=2, select="score")
    metrics = T.train(tiny_model_dir, tiny_rsg_dir, tmp_path / "s", cfg, log=lambda m: None)
    assert metrics["selection"].endswith("label heads at their calibrated offsets")
    best = max(metrics["history"], key=lambda h: h["calibrated"]["score"])
    assert metrics["best"]["epoch"] == best["epoch"]
    assert metrics["best"]["score"] == metrics["best"]["criterion"] == best["calibrated"]["score"]
    with pytest.raises(UserError, match="--select: 'best' is not one of loss, score"):
        T.train(tiny_model_dir, tiny_rsg_dir, tmp_path / "x", tiny_train_config(select="best"))


def test_calibrated_scores_move_only_label_heads():
    terra = _labelled("TERRa", ["not_entailment", "entailment"] * 20)
    # Every margin > 0 and only the not_entailment ones above 2: accuracy 1/2 at 0, 1 at 2.
    margins = np.array([3.0, 1.0] * 20)
    logits = {"TERRa": (terra, [(i,) for i in range(40)], np.stack([0 * margins, margins], 1))}
    tasks = {"TERRa": {"score": 0.5}, "PARus": {"score": 0.25}}
    assert calibrated_scores(tasks, logits) == {"TERRa": 1.0, "PARus": 0.25}
    assert calibrated_scores(tasks, {}) == {"TERRa": 0.5, "PARus": 0.25}  # no logits: as scored


@pytest.fixture(scope="module")
def dev_run(tiny_model_dir, tiny_rsg_dir, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("runs") / "dev"
    cfg = tiny_train_config(dev_per_task=12, epochs=2)
    logs: list[str] = []
    metrics = T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, log=logs.append)
    return run, metrics, logs


def test_epochs_are_chosen_on_dev_and_val_is_scored_once(dev_run, tiny_rsg_dir):  # noqa: F811
    run, metrics, logs = dev_run
    assert metrics["selection"].startswith("best epoch by the lowest mean dev log-loss")
    assert any(m.startswith("TERRa: 36/36 train, 12 dev, 24 val records") for m in logs), logs
    history = metrics["history"]
    assert all(set(h["tasks"]) == {"TERRa", "RCB", "PARus"} for h in history)
    # Epochs are compared as the calibrated run decides: TERRa and RCB at their chosen dev
    # offsets, PARus (a choice task) as scored.
    for h in history:
        calibrated = h["calibrated"]["tasks"]
        assert calibrated["PARus"] == h["tasks"]["PARus"]["score"]
        assert h["calibrated"]["score"] == pytest.approx(sum(calibrated.values()) / 3)
    for h in history:  # the mean of the tasks' dev log-losses
        assert set(h["dev_loss"]["tasks"]) == {"TERRa", "RCB", "PARus"}
        losses = list(h["dev_loss"]["tasks"].values())
        assert h["dev_loss"]["mean"] == pytest.approx(np.mean(losses))
    best = min(history, key=lambda h: h["dev_loss"]["mean"])
    assert metrics["best"] == {"epoch": best["epoch"], "score": best["calibrated"]["score"],
                               "criterion": -best["dev_loss"]["mean"]}  # fmt: skip
    final = metrics["final"]
    assert final["split"] == "val" and set(final["tasks"]) == {"TERRa", "RCB", "PARus", "LiDiRus"}
    assert set(final["calibration"]) == {"TERRa", "RCB", "LiDiRus"}  # label tasks, MCC
    for task in ("TERRa", "RCB", "LiDiRus"):
        c = final["calibration"][task]
        assert c["dev_best"] >= c["dev_after"] >= c["dev_best"] - c["dev_se"] - 1e-12
    assert final["calibration"]["LiDiRus"]["metric"] == "MCC of TERRa's dev records"
    info = json.loads((run / "run.json").read_text())
    assert set(info["calibration"]) == {"TERRa", "RCB", "LiDiRus"}


def test_val_predictions_rescore_to_the_reported_scores(dev_run, tiny_rsg_dir):  # noqa: F811
    run, metrics, _ = dev_run
    back = read_submission(run / "val_predictions.zip")
    assert set(back) == {"TERRa", "RCB", "PARus", "LiDiRus"}
    for task, want in metrics["final"]["tasks"].items():
        split = "test" if task == "LiDiRus" else "val"
        records = load_split(tiny_rsg_dir, task, split)
        got = score_task(task, records, back[task])
        assert task_score(task, got) == pytest.approx(want["score"], abs=1e-9), task


def test_predict_decides_as_the_calibrated_run_did(dev_run, tiny_rsg_dir):  # noqa: F811
    """predict adds run.json's calibration to the trained heads: its TERRa, RCB and LiDiRus
    decisions are those of the val zip; LiDiRus through its own copy of the TERRa head."""
    run, metrics, _ = dev_run
    predictor = load(run)
    back = read_submission(run / "val_predictions.zip")
    for task in ("TERRa", "RCB", "LiDiRus"):
        records = load_split(tiny_rsg_dir, task, "test" if task == "LiDiRus" else "val")
        preds, _, _ = predictor.predictions(task, records)
        assert [back[task][r.idx] for r in records] == list(preds), task
    assert "LiDiRus" in predictor.model.heads
    info = json.loads((run / "run.json").read_text())
    assert info["train"]["dev_per_task"] == 12 and info["status"] == "done"
    # the weights file keeps the heads as trained; the offsets are run.json's
    plain = load(run, calibrated=False).model
    assert "LiDiRus" not in plain.heads
    want = np.array(plain.heads["TERRa"].bias) + np.array(info["calibration"]["TERRa"]["offsets"])
    np.testing.assert_allclose(np.array(predictor.model.heads["TERRa"].bias), want, atol=1e-6)


def test_calibration_moves_a_biased_head(tiny_model_dir):  # noqa: F811
    """A head that says one class for everything gets a threshold that splits the dev margins
    (TERRa's accuracy); LiDiRus gets its own offsets (MCC) on a copy of the TERRa head as
    trained; both land in the heads when applied."""
    model = model_for(tiny_model_dir, method="heads")
    tok = load_tokenizer(tiny_model_dir)
    model.heads["TERRa"].bias = model.heads["TERRa"].bias + mx.array([0.0, 100.0])
    pairs = [("Кошка сидит.", "Кошка спит.", "entailment"),
             ("Мама мыла раму.", "Собака спит.", "entailment"),
             ("Дождь идёт.", "Мы дома.", "not_entailment"),
             ("Солнце светит.", "Светло.", "entailment")] * 4  # fmt: skip
    records = [parse_record("TERRa", {"premise": p + f" {i}", "hypothesis": h, "label": g,
                                      "idx": i}) for i, (p, h, g) in enumerate(pairs)]  # fmt: skip
    units, logits = score_units(model, tok, "TERRa", records, 8)
    keys = [u.key for u in units]
    assert set(decode("TERRa", records, keys, logits)) == {"not_entailment"}
    out = choose_calibration(model, tok, {"TERRa": records}, 8, log=lambda m: None)
    assert set(out) == {"TERRa", "LiDiRus"}
    terra = out["TERRa"]
    assert terra["offsets"][1] < -50 and terra["dev_after"] > terra["dev_before"]
    lid = out["LiDiRus"]  # MCC is 0 for a constant answer; 16 records give it a wide SE
    assert lid["dev_before"] == 0.0 and lid["dev_after"] >= lid["dev_best"] - lid["dev_se"]
    trained = np.array(model.heads["TERRa"].bias)
    apply_calibration(model, out)
    np.testing.assert_allclose(np.array(model.heads["LiDiRus"].bias),
                               trained + np.array(lid["offsets"]), atol=1e-5)  # fmt: skip
    units, logits = score_units(model, tok, "TERRa", records, 8)
    after = decode("TERRa", records, [u.key for u in units], logits)
    assert score_task("TERRa", records, after)["accuracy"] == out["TERRa"]["dev_after"]
    lidirus = [parse_record("LiDiRus", {"sentence1": r.premise, "sentence2": r.hypothesis,
                                        "label": r.label, "idx": r.idx})
               for r in records]  # fmt: skip
    units, logits = score_units(model, tok, "LiDiRus", lidirus, 8)
    got = score_task("LiDiRus", lidirus, decode("LiDiRus", lidirus, [u.key for u in units], logits))
    assert got["mcc"] == pytest.approx(out["LiDiRus"]["dev_after"])


def _losses(run):
    rows = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines() if x]
    return [(r["batch"], r["phase"], r["task"], r["loss"]) for r in rows]


def test_refit_trains_again_and_resumes_exactly(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    """--refit: the epoch and the calibration come from dev, then a fresh model trains on
    train + dev for that many epochs; val is scored with it. Stopped inside the refit and
    resumed, the run gives the uninterrupted run's losses, scores and predictions."""
    cfg = tiny_train_config(dev_per_task=12, epochs=2, refit=True, checkpoint_every=2)
    full, logs = tmp_path / "full", []
    metrics = T.train(tiny_model_dir, tiny_rsg_dir, full, cfg, log=logs.append)
    chosen = metrics["best"]["epoch"]
    select = [h for h in metrics["history"] if h.get("phase") != "refit"]
    refit = [h for h in metrics["history"] if h.get("phase") == "refit"]
    assert len(select) == 2 and [h["epoch"] for h in refit] == list(range(1, chosen + 1))
    assert any(m.startswith(f"refit: epoch {chosen} chosen on dev") for m in logs), logs
    rows = _losses(full)
    per_phase = {p: len([r for r in rows if r[1] == p]) for p in ("select", "refit")}
    # the refit's epochs see train + dev: more batches per epoch than the first phase's
    assert per_phase["refit"] / chosen > per_phase["select"] / 2
    assert [r[0] for r in rows] == list(range(len(rows)))  # one batch numbering
    info = json.loads((full / "run.json").read_text())
    assert info["calibration"].keys() == metrics["final"]["calibration"].keys()
    back = read_submission(full / "val_predictions.zip")
    records = load_split(tiny_rsg_dir, "TERRa", "val")
    assert [back["TERRa"][r.idx] for r in records] == load(full).predictions("TERRa", records)[0]
    assert "trained again on train + dev" in metrics["final"]["note"]

    run = tmp_path / "stopped"
    stop = per_phase["select"] + per_phase["refit"] // 2 + 1  # inside the refit
    out = T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, stop_after_batches=stop,
                  log=lambda m: None)  # fmt: skip
    assert out == {"stopped_at_batch": stop}
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, resume=True, log=lambda m: None)
    got, want = _losses(run), _losses(full)
    assert [r[:3] for r in got] == [r[:3] for r in want]
    np.testing.assert_allclose([r[3] for r in got], [r[3] for r in want], rtol=0, atol=1e-6)
    got_m = json.loads((run / "metrics.json").read_text())
    for task, want_scores in metrics["final"]["tasks"].items():
        assert got_m["final"]["tasks"][task] == pytest.approx(want_scores), task
    assert read_submission(run / "val_predictions.zip") == back


def test_refit_needs_a_dev_split(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match="--refit: needs --dev-per-task or --dev-fold"):
        T.train(tiny_model_dir, tiny_rsg_dir, tmp_path / "r", tiny_train_config(refit=True))


def test_a_fused_run_decides_as_it_scored_val(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    """--fuse saves the heads as trained (the offsets are run.json's): loaded, the fused run
    gives the val zip's decisions, calibration applied once."""
    cfg = tiny_train_config(dev_per_task=12, epochs=1, method="lora", freeze_layers=1)
    run = tmp_path / "fused"
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, fuse=True, log=lambda m: None)
    back = read_submission(run / "val_predictions.zip")
    predictor = load(run)
    for task in ("TERRa", "RCB", "LiDiRus"):
        records = load_split(tiny_rsg_dir, task, "test" if task == "LiDiRus" else "val")
        assert [back[task][r.idx] for r in records] == list(
            predictor.predictions(task, records)[0]), task
