"""Shared passages (model/shared_prefix.py): the passage's keys and values computed once give the
same logits, cache rows and training losses as running every unit whole."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map
from test_gguf_llama import tiny_llama  # noqa: F401
from tiny_model import tiny_model_dir, tiny_train_config  # noqa: F401

from mlx_rsg import train as T
from mlx_rsg.model import shared_prefix
from mlx_rsg.model.backbone import load_backbone, load_tokenizer
from mlx_rsg.model.batching import collate, encode_units, make_batches
from mlx_rsg.model.classifier import RSGClassifier
from mlx_rsg.model.config import ClassifierConfig
from mlx_rsg.model.features import PrefixCache
from mlx_rsg.predict import score_units
from mlx_rsg.tasks import make_units, parse_record
from mlx_rsg.tasks.muserc import MuSeRCAnswer, MuSeRCQuestion, MuSeRCRecord

PASSAGE = "Мама мыла раму. Кошка сидит на окне, а собака спит во дворе. " * 4
HEADS = {"MuSeRC": 2, "TERRa": 2}


def record(idx: int, passage: str = PASSAGE) -> MuSeRCRecord:
    q0 = MuSeRCQuestion(0, "Кто спит?", (MuSeRCAnswer(0, "собака", 1),
                                         MuSeRCAnswer(1, "кошка сидит на окне", 0)))  # fmt: skip
    q1 = MuSeRCQuestion(1, "Что мыла мама?", (MuSeRCAnswer(2, "раму", 1),))
    return MuSeRCRecord(idx, passage, (q0, q1))


def classifier(model_dir, **cfg) -> RSGClassifier:
    mx.random.seed(0)
    model = RSGClassifier(load_backbone(model_dir), ClassifierConfig(dropout=0.0, **cfg), HEADS)
    # Heads, LoRA B and adapter up-projections start at zero: random ones make outputs that differ.
    model.update(tree_map(lambda v: 0.1 * mx.random.normal(v.shape), model.trainable_parameters()))
    mx.eval(model.parameters())
    model.eval()
    return model


@pytest.fixture(scope="module")
def tok(tiny_model_dir):  # noqa: F811
    return load_tokenizer(tiny_model_dir)


def test_groups_are_a_records_units_with_their_longest_common_prefix(tok):
    units = make_units("MuSeRC", [record(0), record(1, "Коротко.")], train=False)
    encoded = encode_units(units, tok, 200)
    short = shared_prefix.common_prefix_len([e.ids for e in encoded[3:]])
    groups, rest = shared_prefix.group_shared(encoded, min_shared=short + 1)
    assert len(groups) == 1 and [e.unit.key[0] for e in groups[0].members] == [0, 0, 0]
    assert sorted(e.unit.key for e in rest) == [(1, 0, 0), (1, 0, 1), (1, 1, 2)]
    prefix, members = groups[0].prefix, groups[0].members
    assert len(prefix) > short
    assert all(e.ids[: len(prefix)] == prefix and len(e.ids) > len(prefix) for e in members)
    assert len({e.ids[len(prefix)] for e in members}) > 1  # the longest: the next token differs
    # Training fills all tasks at once: another task's record with the same idx stays apart.
    terra = parse_record("TERRa", {"premise": PASSAGE, "hypothesis": "a", "idx": 0, "label": None})
    mixed = encode_units(make_units("TERRa", [terra], train=False), tok, 200) + encoded
    groups_mixed, rest_mixed = shared_prefix.group_shared(mixed, min_shared=short + 1)
    assert [g.prefix for g in groups_mixed] == [prefix]
    assert [e.unit.task for e in rest_mixed] == ["TERRa"] + ["MuSeRC"] * 3
    # Truncation cuts the passage at different points per answer: the prefix ends at the first.
    cut = encode_units(units[:3], tok, 60)
    g, _ = shared_prefix.group_shared(cut, min_shared=8)
    assert len(g[0].prefix) == shared_prefix.common_prefix_len([e.ids for e in cut]) < 60


@pytest.mark.parametrize(
    "cfg",
    [
        dict(method="freeze", freeze_layers=1),
        dict(method="lora", freeze_layers=0, lora_targets=("q_proj", "k_proj", "v_proj")),
        dict(method="mlp-adapter", freeze_layers=0),
    ],
)
def test_shared_logits_equal_the_whole_forward(tiny_model_dir, tok, cfg):  # noqa: F811
    model = classifier(tiny_model_dir, **cfg)
    # 160 shared tokens: far past the tiny model's sliding window of 8, so the suffix's window
    # mask and RoPE offsets are exercised.
    encoded = encode_units(make_units("MuSeRC", [record(0)], train=False), tok, 200)
    (group,), _ = shared_prefix.group_shared(encoded, min_shared=16)
    assert len(group.prefix) > 100
    batch = collate(encoded)
    want = np.array(model(batch))
    state = shared_prefix.PrefixState(model, group.prefix, model.backbone.num_layers)
    got = np.array(shared_prefix.shared_logits(model, state, batch))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_llama_shared_logits_equal_the_whole_forward(tiny_llama):  # noqa: F811
    _, _, model_dir, _ = tiny_llama
    model = classifier(model_dir, method="freeze", freeze_layers=1)
    tokens = np.random.default_rng(0).integers(5, 60, size=(3, 40))
    tokens[:, :30] = tokens[0, :30]  # three units sharing 30 tokens
    lengths = [40, 36, 33]
    rows = [list(map(int, t[:n])) for t, n in zip(tokens, lengths, strict=True)]
    encoded = [_encoded(i, r) for i, r in enumerate(rows)]
    batch = collate(encoded)
    want = np.array(model(batch))
    state = shared_prefix.PrefixState(model, rows[0][:30], model.backbone.num_layers)
    got = np.array(shared_prefix.shared_logits(model, state, batch))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _encoded(i: int, ids: list[int]):
    from mlx_rsg.model.batching import EncodedUnit
    from mlx_rsg.tasks import Unit

    return EncodedUnit(Unit("MuSeRC", (0, 0, i), None, (("x", False),), 0), ids, [])


def test_score_units_runs_each_passage_once_with_the_same_logits(tiny_model_dir, tok,  # noqa: F811
                                                                 monkeypatch):  # fmt: skip
    model = classifier(tiny_model_dir, method="freeze", freeze_layers=1, max_len=200)
    records = [record(0), record(1, PASSAGE[::-1]), record(2, "Коротко.")]
    passes = []
    real = shared_prefix.PrefixState
    monkeypatch.setattr(shared_prefix, "MIN_SHARED", 60)
    monkeypatch.setattr(shared_prefix, "PrefixState",
                        lambda *a: passes.append(a[1]) or real(*a))  # fmt: skip
    units, got = score_units(model, tok, "MuSeRC", records, batch_size=2)
    assert len(passes) == 2  # records 0 and 1; record 2's passage is too short to share
    monkeypatch.setattr(shared_prefix, "MIN_SHARED", 10**9)
    units_whole, want = score_units(model, tok, "MuSeRC", records, batch_size=2)
    assert [u.key for u in units] == [u.key for u in units_whole]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("on_disk", [False, True])
def test_prefix_cache_fill_stores_the_whole_prefix_rows(tiny_model_dir, tok, tmp_path,  # noqa: F811
                                                        monkeypatch, on_disk):  # fmt: skip
    monkeypatch.setattr(shared_prefix, "MIN_SHARED", 60)
    model = classifier(tiny_model_dir, method="freeze", freeze_layers=1)
    units = make_units("MuSeRC", [record(0), record(1, "Коротко.")], train=False)
    encoded = encode_units(units, tok, 200)
    cache = PrefixCache(model, cache_dir=tmp_path if on_disk else None)
    cache.fill(encoded, batch_size=2)
    assert len(cache) == 3  # record 0's units; record 1's are left to prefix()
    for batch in make_batches(encoded, 8):
        got = np.array(cache.prefix(batch))
        want = np.array(model.prefix(batch.tokens))
        for j, n in enumerate(batch.lengths.tolist()):
            np.testing.assert_allclose(got[j, :n], want[j, :n], rtol=1e-4, atol=1e-4)
    assert len(cache) == 6 and cache.hits == 3


def test_training_losses_equal_with_shared_passages(tiny_model_dir, tmp_path,  # noqa: F811
                                                    monkeypatch, fixture_root):  # fmt: skip
    """MuSeRC and RuCoS train and val through the frozen-prefix cache, filled with shared
    passages or unit by unit: the same losses and val scores."""
    cfg = tiny_train_config(tasks=("MuSeRC", "RuCoS"), epochs=2, max_len=128, batch_size=4)
    runs, real_fill = {}, PrefixCache.fill
    for name, min_shared in (("shared", 8), ("whole", 10**9)):
        monkeypatch.setattr(shared_prefix, "MIN_SHARED", min_shared)
        fills: list[int] = []

        def fill(self, encoded, *args, fills=fills, **kwargs):
            fills.append(len(shared_prefix.group_shared(encoded)[0]))
            return real_fill(self, encoded, *args, **kwargs)

        monkeypatch.setattr(PrefixCache, "fill", fill)
        T.train(tiny_model_dir, fixture_root, tmp_path / name, cfg, log=lambda m: None)
        lines = (tmp_path / name / "losses.jsonl").read_text().splitlines()
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        runs[name] = ([json.loads(s)["loss"] for s in lines], metrics, fills)
    (loss_s, m_s, fills_s), (loss_w, m_w, fills_w) = runs["shared"], runs["whole"]
    assert sum(fills_s) > 0 and sum(fills_w) == 0  # the shared run did share
    np.testing.assert_allclose(loss_s, loss_w, rtol=1e-4)
    for h_s, h_w in zip(m_s["history"], m_w["history"], strict=True):
        for task, scores in h_w["tasks"].items():
            assert h_s["tasks"][task] == pytest.approx(scores, abs=1e-6)
