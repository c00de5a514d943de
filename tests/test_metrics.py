"""Official RSG metrics against values worked out by hand, degenerate cases included."""

from __future__ import annotations

import math

import pytest

import mlx_rsg  # noqa: F401
from mlx_rsg import metrics as M
from mlx_rsg import tasks
from mlx_rsg.tasks import (
    MuSeRCAnswer,
    MuSeRCQuestion,
    MuSeRCRecord,
    NLIRecord,
    RuCoSRecord,
)

E, C, N = "entailment", "contradiction", "neutral"
NE = "not_entailment"


def nli(labels):
    return [NLIRecord(i, "п", "г", lab) for i, lab in enumerate(labels)]


def test_accuracy_by_hand():
    recs = nli([E, NE, E, E])
    assert tasks.score_task("TERRa", recs, [E, E, E, NE]) == {"accuracy": 0.5}
    assert tasks.score_task("TERRa", recs, {0: E, 1: NE, 2: E, 3: E}) == {"accuracy": 1.0}


def test_rcb_macro_f1_by_hand():
    recs = nli([E, E, C, N, N, N])
    got = tasks.score_task("RCB", recs, [E, C, C, N, E, N])
    # E: tp1 fp1 fn1 -> 1/2; C: tp1 fp1 fn0 -> 2/3; N: tp2 fp0 fn1 -> 4/5
    assert got["f1"] == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    assert got["accuracy"] == pytest.approx(4 / 6)


def test_rcb_all_one_class_counts_absent_classes_as_zero():
    # jiant's CB metric (the RSG baselines): mean of the three one-vs-rest F1s, so a class absent
    # from gold and predictions contributes 0, not "undefined".
    recs = nli([E, E, E])
    got = tasks.score_task("RCB", recs, [E, E, E])
    assert got == {"f1": pytest.approx(1 / 3), "accuracy": 1.0}
    assert tasks.score_task("RCB", recs, [N, N, N]) == {"f1": 0.0, "accuracy": 0.0}


def test_lidirus_mcc_by_hand_and_degenerate():
    recs = nli([E, E, NE, NE])
    # tp=1 tn=2 fp=0 fn=1 -> (1*2 - 0*1) / sqrt(1*2*2*3)
    assert tasks.score_task("LiDiRus", recs, [E, NE, NE, NE])["mcc"] == pytest.approx(
        2 / math.sqrt(12)
    )
    assert tasks.score_task("LiDiRus", recs, [E, E, NE, NE])["mcc"] == pytest.approx(1.0)
    assert tasks.score_task("LiDiRus", recs, [NE, NE, E, E])["mcc"] == pytest.approx(-1.0)
    # zero variance in the predictions or in gold: 0, as sklearn's matthews_corrcoef
    assert tasks.score_task("LiDiRus", recs, [E, E, E, E])["mcc"] == 0.0
    assert tasks.score_task("LiDiRus", nli([E, E, E]), [E, NE, E])["mcc"] == 0.0


def test_mcc_on_a_bigger_case():
    gold = [1, 1, 1, 0, 0, 0, 1, 0, 1, 1]
    pred = [1, 0, 1, 0, 1, 0, 1, 1, 1, 0]
    # counted by hand: tp 4, fn 2, tn 2, fp 2 -> (4*2 - 2*2) / sqrt(6*6*4*4) = 1/6
    phi = (4 * 2 - 2 * 2) / math.sqrt((4 + 2) * (4 + 2) * (2 + 2) * (2 + 2))
    assert M.mcc(gold, pred) == pytest.approx(phi)


def muserc(questions):
    """questions: list of gold label lists; answer idx numbered through the passage."""
    qs, k = [], 0
    for qi, labels in enumerate(questions):
        answers = []
        for lab in labels:
            answers.append(MuSeRCAnswer(k, f"ответ {k}", lab))
            k += 1
        qs.append(MuSeRCQuestion(qi, f"вопрос {qi}", tuple(answers)))
    return MuSeRCRecord(0, "текст", tuple(qs))


def test_muserc_f1a_and_em_by_hand():
    rec = muserc([[1, 0, 1], [0, 1]])
    pred = {0: 1, 1: 0, 2: 0, 3: 0, 4: 1}
    got = tasks.score_task("MuSeRC", [rec], [pred])
    # agree 2, predicted 2, gold 3 -> P 1, R 2/3, F1 0.8; question 0 wrong, question 1 right
    assert got == {"f1a": pytest.approx(0.8), "em": 0.5}


def test_muserc_degenerate():
    rec = muserc([[1, 0], [0, 0]])
    nothing = {i: 0 for i in range(4)}
    # nothing predicted positive: P = 1 by the RSG convention, R = 0 -> F1 0; question 1 right
    assert tasks.score_task("MuSeRC", [rec], [nothing]) == {"f1a": 0.0, "em": 0.5}
    none_gold = muserc([[0, 0]])
    # no gold positive and none predicted: P = R = 1 (the RSG scorer), every question right
    assert tasks.score_task("MuSeRC", [none_gold], [{0: 0, 1: 0}]) == {"f1a": 1.0, "em": 1.0}
    assert tasks.score_task("MuSeRC", [none_gold], [{0: 1, 1: 0}]) == {"f1a": 0.0, "em": 0.0}
    with pytest.raises(ValueError, match="answer"):
        tasks.score_task("MuSeRC", [rec], [{0: 1}])


def rucos(answers):
    return RuCoSRecord(0, "текст", ((0, 5),), "@placeholder", tuple(answers))


def test_rucos_token_f1_and_em_by_hand():
    got = tasks.score_task("RuCoS", [rucos(["Владимир Путин"])], ["Путин"])
    assert got == {"f1": pytest.approx(2 / 3), "em": 0.0}  # P 1, R 1/2
    # lowercase + ASCII punctuation removed + whitespace collapsed -> exact
    assert tasks.score_task("RuCoS", [rucos(["Путин"])], [" путин,\n"]) == {"f1": 1.0, "em": 1.0}
    # max over gold answers
    assert tasks.score_task("RuCoS", [rucos(["ЕС", "Евросоюз"])], ["Евросоюз."])["em"] == 1.0


def test_rucos_normalisation_follows_the_rsg_scorer():
    # string.punctuation only: Russian quotes stay, so they cost the exact match
    assert M.normalize_answer("«Газпром»") == "«газпром»"
    assert tasks.score_task("RuCoS", [rucos(["Газпром"])], ["«Газпром»"]) == {"f1": 0.0, "em": 0.0}
    # no English article removal in the RSG scorer
    assert M.normalize_answer("The Beatles") == "the beatles"
    assert tasks.score_task("RuCoS", [rucos(["Beatles"])], ["The Beatles"])["f1"] == pytest.approx(
        2 / 3
    )


def test_rucos_empty_prediction_and_no_gold():
    assert tasks.score_task("RuCoS", [rucos(["Путин"])], [""]) == {"f1": 0.0, "em": 0.0}
    assert tasks.score_task("RuCoS", [rucos([])], ["Путин"]) == {"f1": 0.0, "em": 0.0}
    recs = [rucos(["Путин"]), rucos(["Москва"])]
    assert tasks.score_task("RuCoS", recs, ["путин", "Кремль"]) == {"f1": 0.5, "em": 0.5}


def test_empty_and_misaligned_inputs():
    assert tasks.score_task("TERRa", [], []) == {"accuracy": 0.0}
    assert tasks.score_task("RCB", [], []) == {"f1": 0.0, "accuracy": 0.0}
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        tasks.score_task("TERRa", nli([E, NE]), [E])
    with pytest.raises(ValueError, match="no prediction for idx"):
        tasks.score_task("TERRa", nli([E, NE]), {0: E})


def test_class_report_by_hand():
    rep = M.class_report([E, E, C, N], [E, C, C, C], (E, C, N))
    assert rep[E] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert rep[C] == {"precision": pytest.approx(1 / 3), "recall": 1.0, "f1": 0.5, "support": 1}
    assert rep[N] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_total_score_averages_two_metric_tasks_first():
    per_task = {
        "TERRa": {"accuracy": 0.6},
        "RCB": {"f1": 0.4, "accuracy": 0.8},
        "MuSeRC": {"f1a": 0.7, "em": 0.3, "score": 0.5},  # "score" is not an extra metric
    }
    assert tasks.total_score(per_task) == pytest.approx((0.6 + 0.6 + 0.5) / 3)
    assert math.isnan(tasks.total_score({}))


def test_total_score_reproduces_the_published_human_benchmark():
    human = {
        "LiDiRus": {"mcc": 0.626},
        "RCB": {"f1": 0.68, "accuracy": 0.702},
        "PARus": {"accuracy": 0.982},
        "MuSeRC": {"f1a": 0.806, "em": 0.42},
        "TERRa": {"accuracy": 0.92},
        "RUSSE": {"accuracy": 0.805},
        "RWSD": {"accuracy": 0.84},
        "DaNetQA": {"accuracy": 0.915},
        "RuCoS": {"f1": 0.93, "em": 0.89},
    }
    assert round(tasks.total_score(human), 3) == 0.811
