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
    # record 1's longest shared run: its first question's two answers
    short = shared_prefix.common_prefix_len([e.ids for e in encoded[3:5]])
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
    monkeypatch.setattr(shared_prefix, "PrefixState",
                        lambda *a: passes.append(a[1]) or real(*a))  # fmt: skip
    units, got = score_units(model, tok, "MuSeRC", records, batch_size=2, min_shared=60)
    assert len(passes) == 2  # records 0 and 1; record 2's passage is too short to share
    units_whole, want = score_units(model, tok, "MuSeRC", records, batch_size=2,
                                    min_shared=10**9)  # fmt: skip
    assert len(passes) == 2  # nothing shared
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
    passages or unit by unit, and train the blocks above it with each batch's shared passages
    run once or every unit whole (the same batches): the same losses and val scores."""
    cfg = tiny_train_config(tasks=("MuSeRC", "RuCoS"), epochs=2, max_len=128, batch_size=4)
    runs, real_fill, real_segments = {}, PrefixCache.fill, shared_prefix.segment_features
    trained_shared: dict[str, int] = {}
    for name, min_shared in (("shared", 8), ("whole", 10**9)):
        monkeypatch.setattr(shared_prefix, "MIN_SHARED", min_shared)
        fills: list[int] = []

        def segments(model, batch, h0=None, name=name):  # the trained blocks share too
            trained_shared[name] = trained_shared.get(name, 0) + model.training
            return real_segments(model, batch, h0)

        monkeypatch.setattr(shared_prefix, "segment_features", segments)

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
    assert trained_shared.get("shared", 0) > 0 and "whole" not in trained_shared
    np.testing.assert_allclose(loss_s, loss_w, rtol=1e-4)
    for h_s, h_w in zip(m_s["history"], m_w["history"], strict=True):
        for task, scores in h_w["tasks"].items():
            assert h_s["tasks"][task] == pytest.approx(scores, abs=1e-6)


def _shared_batch(tok, min_shared: int = 16):
    """A training-style batch: two records' MuSeRC answers (each record a segment) with a TERRa-
    like plain row between them is impossible (one task per batch), so: record 0's three units,
    record 2's short one (no segment), record 1's three."""
    records = [record(0), record(2, "Коротко."), record(1, PASSAGE[::-1])]
    units = make_units("MuSeRC", records, train=True)
    encoded = encode_units(units, tok, 200)
    rows = [e for e in encoded if e.unit.key[0] != 2] + [e for e in encoded if e.unit.key[0] == 2]
    rows = rows[:3] + rows[6:7] + rows[3:6]  # record 0, one unit of record 2, record 1
    return collate(rows, min_shared=min_shared)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(method="freeze", freeze_layers=1),
        dict(method="lora", freeze_layers=0, lora_targets=("q_proj", "k_proj", "v_proj")),
        dict(method="mlp-adapter", freeze_layers=0, adapter_dropout=0.0),
    ],
)
@pytest.mark.parametrize("cached", [False, True])
def test_shared_training_loss_and_gradients_equal_the_whole_batch(tiny_model_dir, tok, cfg,  # noqa: F811
                                                                  cached):  # fmt: skip
    """Item 1 of "Twice the model per minute": a batch whose rows share a passage runs it once
    through the trained blocks, forward and backward, with the unshared loss and gradients
    (relative difference <= 1e-5), also from the frozen-prefix cache's h0 and with the head's
    dropout on (its mask is drawn over the whole batch either way)."""
    from dataclasses import replace

    import mlx.nn as nn

    from mlx_rsg.model.batching import loss_fn

    model = classifier(tiny_model_dir, **cfg)
    model.dropout.p, model.dropout._p_1 = 0.1, 0.9
    model.train()
    batch = _shared_batch(tok)
    assert [(s, e) for s, e, _ in batch.segments] == [(0, 3), (4, 7)]
    assert all(n > 100 for _, _, n in batch.segments)
    h0 = model.prefix(batch.tokens) if cached else None
    grad = nn.value_and_grad(model, lambda m, b: loss_fn(m, b, h0))
    results = []
    for b in (batch, replace(batch, segments=())):
        mx.random.seed(7)
        (loss, n), g = grad(model, b)
        mx.eval(loss, g)
        results.append((loss.item(), n, g))
    (loss_s, n_s, g_s), (loss_w, n_w, g_w) = results
    assert n_s == n_w == 7
    assert loss_s == pytest.approx(loss_w, rel=1e-5)
    from mlx.utils import tree_flatten

    flat_s, flat_w = dict(tree_flatten(g_s)), dict(tree_flatten(g_w))
    assert flat_s.keys() == flat_w.keys() and len(flat_w) > 2
    for name, want in flat_w.items():
        want, got = np.array(want), np.array(flat_s[name])
        if name.startswith("heads.TERRa"):  # not this batch's head
            continue
        assert np.abs(want).max() > 0, name  # every trained weight gets a gradient
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want), name


def test_training_batches_keep_a_records_units_together(tok):
    """With min_shared, a record's units share batches, in balanced chunks of at most the batch
    size; the segments name exactly the runs of one record that share >= min_shared tokens."""
    import random

    def nine(idx: int) -> MuSeRCRecord:  # 9 units: three questions of three answers
        questions = tuple(
            MuSeRCQuestion(q, f"Вопрос {q}?", tuple(MuSeRCAnswer(3 * q + a, f"ответ {a}", a % 2)
                                                     for a in range(3)))  # fmt: skip
            for q in range(3)
        )
        return MuSeRCRecord(idx, PASSAGE if idx % 2 else PASSAGE[::-1], questions)

    records = [nine(i) for i in range(5)]
    encoded = encode_units(make_units("MuSeRC", records, train=True), tok, 200)
    batches = make_batches(encoded, 4, rng=random.Random(0), min_shared=16)
    assert sorted(k for b in batches for k in b.keys) == sorted(e.unit.key for e in encoded)
    for b in batches:
        assert len(b.keys) <= 4
        for s, e, n in b.segments:
            assert len({k[0] for k in b.keys[s:e]}) == 1 and e - s > 1 and n >= 16
        assert sum(e - s for s, e, _ in b.segments) == len(b.keys)  # every row shares here
    sizes = sorted(len(b.keys) for b in batches)
    assert sizes == [3] * 15  # 9 units: three chunks of 3, not 4 + 4 + 1
    # deterministic for a seed; min_shared=None batches units apart, with no segments
    again = make_batches(encoded, 4, rng=random.Random(0), min_shared=16)
    assert [b.keys for b in again] == [b.keys for b in batches]
    plain = make_batches(encoded, 4, rng=random.Random(0))
    assert all(b.segments == () for b in plain)


def test_take_rows_keeps_the_segments_of_its_rows(tok):
    from mlx_rsg.model.batching import take_rows

    batch = _shared_batch(tok)
    assert take_rows(batch, 1, 5).segments == ((0, 2, batch.segments[0][2]),
                                               (3, 4, batch.segments[1][2]))  # fmt: skip
    assert take_rows(batch, 3, 4).segments == ()


def _russe(idx: int, sentence1: str, sentence2: str):
    from mlx_rsg.tasks.russe import RUSSERecord

    return RUSSERecord(idx, "раму", sentence1, sentence2, sentence1.index("раму"),
                       sentence1.index("раму") + 4, sentence2.index("раму"),
                       sentence2.index("раму") + 4, idx % 2 == 0)  # fmt: skip


LONG = "Мама мыла раму, а кошка сидела на окне и смотрела во двор, где спала собака. " * 2


def test_groups_span_records_that_repeat_a_text(tok):
    """Item 2 of "Twice the model per minute": grouping is found on sorted token ids, so
    records that repeat a text (RUSSE pairs on one word-in-sentence) share it too; a unit that
    would halve a run's prefix starts its own."""
    records = [_russe(0, LONG, "Папа красил раму."), _russe(1, "Коротко про раму.", "Ту раму."),
               _russe(2, LONG, "Новую раму привезли."),
               _russe(3, LONG, "Эту раму сняли.")]  # fmt: skip
    encoded = encode_units(make_units("RUSSE", records, train=False), tok, 300)
    (group,), rest = shared_prefix.group_shared(encoded, min_shared=16)
    assert sorted(e.unit.key for e in group.members) == [(0,), (2,), (3,)]
    assert [e.unit.key for e in rest] == [(1,)]
    assert len(group.prefix) == shared_prefix.common_prefix_len([encoded[i].ids for i in (0, 2, 3)])
    # a passage that merely starts like a longer shared one does not cut it short
    a = [1] * 100
    rows = [_encoded(i, ids) for i, ids in enumerate([a + [2], a + [3], a[:40] + [4] * 10])]
    groups, rest = shared_prefix.group_shared(rows, min_shared=16)
    assert [len(g.prefix) for g in groups] == [100] and [e.ids[-1] for e in rest] == [4]


@pytest.mark.parametrize("pooling", ["span", "mean"])
def test_shared_span_and_mean_pooling_equal_the_whole_forward(tiny_model_dir, tok, pooling):  # noqa: F811
    """Span and mean pooling read the prefix's hidden states too: scoring (PrefixState) and
    training (Batch.segments, loss and gradients) equal the whole forward."""
    from dataclasses import replace

    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_rsg.model.batching import loss_fn

    model = classifier(tiny_model_dir, method="freeze", freeze_layers=1,
                       pooling="mean" if pooling == "mean" else "last")  # fmt: skip
    model.heads["RUSSE"] = model.heads.pop("TERRa")  # a 2-label head over 3 spans:
    model.heads["RUSSE"] = nn.Linear(3 * model.backbone.hidden_size, 2)
    mx.eval(model.parameters())
    records = [_russe(i, LONG, s) for i, s in enumerate(["Папа красил раму.", "Эту раму сняли.",
                                                           "Новую раму привезли на машине."])]
    encoded = encode_units(make_units("RUSSE", records, train=False), tok, 300)
    batch = collate(encoded)
    if pooling == "mean":  # the same rows pooled by mean (a task without spans would)
        batch = replace(batch, spans=None)
        model.heads["RUSSE"] = nn.Linear(model.backbone.hidden_size, 2)
        mx.eval(model.parameters())
    (group,), _ = shared_prefix.group_shared(encoded, min_shared=16)
    n = len(group.prefix)
    want = np.array(model(batch))
    state = shared_prefix.PrefixState(model, group.prefix, model.backbone.num_layers)
    got = np.array(shared_prefix.shared_logits(model, state, batch))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    model.train()
    grad = nn.value_and_grad(model, lambda m, b: loss_fn(m, b))
    out = []
    for b in (replace(batch, segments=((0, 3, n),)), batch):
        mx.random.seed(1)
        (loss, _), g = grad(model, b)
        mx.eval(loss, g)
        out.append((loss.item(), dict(tree_flatten(g))))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    for name, w in out[1][1].items():
        w, s = np.array(w), np.array(out[0][1][name])
        assert np.linalg.norm(s - w) <= 1e-5 * max(np.linalg.norm(w), 1e-12), name
