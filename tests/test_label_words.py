"""--prompt answer and --head-init label-words: units that end with the task's question, and
heads that start at the language model's own logits for the answer words."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from tiny_model import tiny_model_dir, tiny_rsg_dir, tiny_train_config  # noqa: F401

import mlx_rsg
from mlx_rsg import train as T
from mlx_rsg.data import load_split
from mlx_rsg.errors import UserError
from mlx_rsg.model.backbone import load_backbone, load_tokenizer
from mlx_rsg.model.batching import collate, encode_units
from mlx_rsg.model.classifier import RSGClassifier
from mlx_rsg.model.config import ClassifierConfig
from mlx_rsg.model.label_words import label_word_heads, word_token
from mlx_rsg.tasks import REGISTRY, TASKS, make_units, score_task, task_score


@pytest.mark.parametrize("task", TASKS)
def test_answer_prompt_ends_units_with_the_tasks_question(task, fixture_root):
    records = load_split(fixture_root, task, "test")  # LiDiRus has no other split
    plain = make_units(task, records)
    answer = make_units(task, records, prompt="answer")
    assert [(u.key, u.group, u.label) for u in answer] == [
        (u.key, u.group, u.label) for u in plain
    ]
    spec = REGISTRY[task]
    for p, a in zip(plain, answer, strict=True):
        end = () if spec.answer is None else ((spec.answer.question, False),)
        assert a.pieces == p.pieces + end
    if spec.answer is not None:
        assert len(spec.answer.words) == (2 if spec.choice else len(spec.labels))
    # LiDiRus is scored with TERRa's head: it must ask TERRa's question
    assert REGISTRY["LiDiRus"].answer == REGISTRY["TERRa"].answer


def test_label_words_need_the_answer_prompt():
    with pytest.raises(UserError, match="--head-init label-words: needs --prompt answer"):
        tiny_train_config(head_init="label-words").validate()
    with pytest.raises(UserError, match="--prompt: 'question' is not one of plain, answer"):
        tiny_train_config(prompt="question").validate()


@pytest.mark.parametrize("task", ["TERRa", "RCB", "PARus"])
def test_label_word_heads_start_at_the_language_models_logits(task, tiny_model_dir, tiny_rsg_dir):  # noqa: F811
    """On one unit (whose RMS is then the scale exactly) the head's logits are mlx-lm's own
    next-token logits for the label words: a label task's for each word, a choice task's
    logit(yes) - logit(no)."""
    bb, tok = load_backbone(tiny_model_dir), load_tokenizer(tiny_model_dir)
    cfg = ClassifierConfig(method="freeze", freeze_layers=1, dropout=0.0, max_len=64,
                           prompt="answer")  # fmt: skip
    model = RSGClassifier(bb, cfg, {"TERRa": 2, "RCB": 3, "PARus": 1})
    units = make_units(task, load_split(tiny_rsg_dir, task, "train")[:1], prompt="answer")
    encoded = encode_units(units[:1], tok, 64)
    scales = label_word_heads(model, tok, {task: encoded}, batch_size=8)
    assert set(scales) == {task} and scales[task] > 0
    model.eval()
    head = np.array(model(collate(encoded)))[0]

    lm = np.array(bb.model(mx.array([encoded[0].ids]))[0, -1])  # mlx-lm's LM head
    words = [lm[word_token(tok, w)] for w in REGISTRY[task].answer.words]
    expected = [words[1] - words[0]] if REGISTRY[task].choice else words
    # mlx-lm rounds Gemma's embedding scale to bfloat16 (backbone.embed does not): ~1e-4 apart
    np.testing.assert_allclose(head, expected, rtol=2e-3, atol=2e-3)
    assert np.abs(expected).max() > 0.05  # the comparison is not between two near-zeros


def test_a_run_with_answer_prompts_predicts_with_them(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    """The prompt is part of the run: run.json keeps it, and `mlx_rsg.load` scores the units
    training scored (the same val scores as the run's own evaluation of its best epoch)."""
    run = tmp_path / "run"
    cfg = tiny_train_config(epochs=2, prompt="answer", head_init="label-words")
    metrics = T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, log=lambda m: None)
    info = json.loads((run / "run.json").read_text())
    assert info["classifier"]["prompt"] == "answer"
    assert info["train"]["head_init"] == "label-words"
    best = metrics["history"][metrics["best"]["epoch"] - 1]["tasks"]
    clf = mlx_rsg.load(run)
    for task in ("TERRa", "RCB", "PARus"):
        records = load_split(tiny_rsg_dir, task, "val")
        preds, units, _ = clf.predictions(task, records)
        assert units[0].pieces[-1] == (REGISTRY[task].answer.question, False)
        assert task_score(task, score_task(task, records, preds)) == pytest.approx(
            best[task]["score"]
        )
    info["classifier"]["prompt"] = "question"  # a run.json edited by hand
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="classifier.prompt.*'question' is not one of plain,"):
        mlx_rsg.load(run)
