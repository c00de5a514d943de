"""benchmarks/rwsd_substitution.py: where the candidate goes, how records are decided together,
and that its likelihoods are the language model's own."""

from __future__ import annotations

import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from tiny_model import tiny_model_dir  # noqa: F401

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import rwsd_substitution as probe  # noqa: E402

from mlx_rsg.model.backbone import load_backbone, load_tokenizer  # noqa: E402


def record(text: str, candidate: str, pronoun: str, at: int, label: bool) -> dict:
    target = {"span1_text": candidate, "span2_text": pronoun, "span2_index": at}
    return {"text": text, "label": label, "target": target}


def test_the_pronoun_is_found_where_the_index_is_off_by_a_word():
    words = "Кот смотрел на пса , потому что он , видимо , устал".split(" ")
    assert probe.pronoun_at(words, {"span2_text": "он", "span2_index": 7}) == 7
    assert probe.pronoun_at(words, {"span2_text": "он", "span2_index": 6}) == 7
    glued = "Кот смотрел на пса, потому что он, видимо, устал".split(" ")
    assert probe.pronoun_at(glued, {"span2_text": "он", "span2_index": 5}) == 6


def test_records_sharing_a_text_and_a_pronoun_are_decided_together():
    a = "Кот смотрел на пса, потому что он устал."
    b = "Кот смотрел на пса, потому что он был голоден."
    records = [record(a, "Кот", "он устал", 6, True), record(a, "пса", "он устал", 6, False),
               record(b, "Кот", "он был", 6, False), record(b, "пса", "он был", 6, True),
               record(b, "Кот", "он", 6, True)]  # fmt: skip
    got = [{"partial": s} for s in (-1.0, -2.0, -1.0, -3.0, 5.0)]
    # the best of each group of two is True; the record alone in its group is False
    assert probe.decide(records, got, "partial") == [True, False, True, False, False]
    assert probe.pairwise(records, got, "partial") == (1, 2)


def test_the_scores_are_the_language_models_own_log_likelihoods(tiny_model_dir):  # noqa: F811
    bb, tokenizer = load_backbone(tiny_model_dir), load_tokenizer(tiny_model_dir)
    r = record("the cat saw the dog because it was tired .", "the dog", "it", 6, True)
    got = probe.scores(bb, tokenizer, r)
    ids = tokenizer.encode("the cat saw the dog because the dog was tired .")
    logits = bb.model(mx.array([ids]))[0].astype(mx.float32)
    logp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    per_token = logp[np.arange(len(ids) - 1), ids[1:]]  # per_token[t - 1] is token t's
    start = len(tokenizer.encode("the cat saw the dog because the dog"))
    assert got["partial"] == pytest.approx(per_token[start - 1:].sum(), rel=1e-4)
    assert got["full"] == pytest.approx(per_token.mean(), rel=1e-4)


def test_bad_arguments_are_one_line_before_any_work(tiny_model_dir, tmp_path, monkeypatch,  # noqa: F811
                                                    capsys):  # fmt: skip
    def run(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["rwsd_substitution.py", *args, "--out",
                                          str(tmp_path / "out.json")])  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            probe.main()
        assert exit_.value.code != 0
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert run("--model", str(tiny_model_dir), "--data", str(tmp_path)).endswith(
        f"{tmp_path / 'RWSD' / 'train.jsonl'}: no such file")
    (tmp_path / "RWSD").mkdir()
    (tmp_path / "RWSD" / "train.jsonl").write_text("")
    assert run("--model", str(tmp_path), "--data", str(tmp_path)).startswith(
        f"rwsd_substitution.py: error: {tmp_path}: cannot load the model")
    assert run("--model", str(tiny_model_dir), "--data", str(tmp_path), "--blocks", "9").endswith(
        "--blocks: 9 is not a block in 1..2")
    assert not (tmp_path / "out.json").exists()
