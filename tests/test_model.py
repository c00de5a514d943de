"""RSGClassifier, batching and the prefix cache on a tiny random Gemma 3."""

from __future__ import annotations

import json
import random

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from tiny_model import tiny_train_config

from mlx_rsg import train as T
from mlx_rsg.errors import UserError
from mlx_rsg.model.backbone import hidden_states, load_backbone, load_tokenizer
from mlx_rsg.model.batching import EncodedUnit, collate, encode_units, loss_fn, make_batches
from mlx_rsg.model.classifier import ClassifierConfig, RSGClassifier
from mlx_rsg.model.features import PrefixCache
from mlx_rsg.tasks import Unit
from mlx_rsg.train.config import classifier_config

HEADS = {"TERRa": 2, "RUSSE": 2, "PARus": 1}


def nli_unit(i: int, premise: str, hypothesis: str, label=0) -> Unit:
    pieces = (("Посылка:", False), (" " + premise, False), ("\nГипотеза:", False))
    return Unit("TERRa", (i,), None, pieces + ((" " + hypothesis, False),), label)


def russe_unit(i: int, s1: str, w1: str, s2: str, w2: str, label=1) -> Unit:
    pieces = ((s1, False), (" " + w1, True), (". " + s2, False), (" " + w2, True), (".", False),
              ("\nОдно значение", False), ("?", True))  # fmt: skip
    return Unit("RUSSE", (i,), None, pieces, label)


def model_for(model_dir, **cfg) -> RSGClassifier:
    mx.random.seed(0)
    model = RSGClassifier(load_backbone(model_dir), ClassifierConfig(dropout=0.0, **cfg), HEADS)
    # Heads start at zero (every logit 0); random ones make logits worth comparing.
    for head in model.heads.values():
        head.weight = mx.random.normal(head.weight.shape)
    mx.eval(model.parameters())
    model.eval()
    return model


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_same_logits_alone_and_in_a_padded_batch(tiny_model_dir, tok, pooling):
    model = model_for(tiny_model_dir, method="freeze", freeze_layers=1, pooling=pooling)
    units = [
        nli_unit(0, "Кошка сидит.", "Кошка спит."),
        nli_unit(1, "Мама мыла раму, а собака спала во дворе весь день.", "Собака спала."),
        nli_unit(2, "Дождь.", "Дома."),
    ]
    enc = encode_units(units, tok, 64)
    together = np.array(model(collate(enc)))
    for j, e in enumerate(enc):
        alone = np.array(model(collate([e])))
        np.testing.assert_allclose(alone[0], together[j], atol=1e-5)


def test_span_pooling_is_the_mean_over_each_marked_word(tiny_model_dir, tok):
    model = model_for(tiny_model_dir, method="freeze", freeze_layers=1)
    units = [
        russe_unit(0, "Студент сдал", "экзамен", "Экзамен был трудный, сказал", "студент"),
        russe_unit(1, "Мама", "мыла", "Кошка", "сидит"),
    ]
    enc = encode_units(units, tok, 64)
    batch = collate(enc)
    assert batch.spans.shape == (2, 3, 2)
    feats = np.array(model.features(batch))
    assert feats.shape == (2, 3, model.backbone.hidden_size)
    for j, e in enumerate(enc):
        h = np.array(hidden_states(model.backbone, mx.array([e.ids])))[0]
        want = np.stack([h[s:t].mean(axis=0) for s, t in e.spans])
        np.testing.assert_allclose(feats[j], want, atol=1e-5)
        # the spans hold exactly the marked words' tokens
        for (s, t), piece in zip(e.spans, [u for u in units[j].pieces if u[1]], strict=True):
            assert tok.decode(e.ids[s:t]).strip() == piece[0].strip()
    logits = model(batch)
    assert logits.shape == (2, 2)  # the RUSSE head reads 3 x hidden features


def test_span_tasks_see_what_follows_the_spans(tiny_model_dir, tok):
    """A Winograd schema's two texts differ only after the pronoun: the two marked spans pool
    the same vectors for both (a causal decoder's tokens see only what precedes them); the
    question's last token, pooled third, tells them apart, and so do the logits."""
    from mlx_rsg.tasks import make_units, parse_record

    model = model_for(tiny_model_dir, method="freeze", freeze_layers=1)
    model.heads["RWSD"] = nn.Linear(3 * model.backbone.hidden_size, 2)
    records = [parse_record("RWSD", {"idx": i, "text": f"Кот догнал пса, потому что он был {w}.",
                                     "target": {"span1_text": "Кот", "span1_index": 0,
                                                "span2_text": "он", "span2_index": 4},
                                     "label": i == 0})
               for i, w in enumerate(["быстрее", "медленнее"])]  # fmt: skip
    batch = collate(encode_units(make_units("RWSD", records), tok, 64))
    feats = np.array(model.features(batch))
    np.testing.assert_allclose(feats[0, :2], feats[1, :2], atol=1e-5)
    assert np.abs(feats[0, 2] - feats[1, 2]).max() > 1e-3
    logits = np.array(model(batch))
    assert np.abs(logits[0] - logits[1]).max() > 1e-4


def test_choice_loss_is_a_softmax_within_each_group(tiny_model_dir, tok):
    model = model_for(tiny_model_dir, method="heads")

    # groups of 2 and 3 candidates (RuCoS-like variable sizes), the gold one labelled 1
    def cand(r, c, gold):
        return Unit(
            "PARus", (r, c), (r,), (("Кошка сидит", False), (f" ответ {c}", False)), int(c == gold)
        )

    units = [cand(0, c, 1) for c in range(2)] + [cand(1, c, 2) for c in range(3)]
    batch = collate(encode_units(units, tok, 64))
    loss, n = loss_fn(model, batch)
    s = np.array(model(batch))[:, 0]

    def nll(scores, gold):
        return np.log(np.exp(scores).sum()) - scores[gold]

    want = (nll(s[:2], 1) + nll(s[2:], 2)) / 2
    assert n == 2 and float(loss) == pytest.approx(want, rel=1e-5)


def test_batches_keep_groups_whole_and_bucket_by_length(tok):
    rng = random.Random(0)
    encoded = []
    for r in range(40):
        size = rng.randint(2, 5)
        n = rng.randint(3, 60)
        for c in range(size):
            u = Unit("PARus", (r, c), (r,), (("x", False),), int(c == 0))
            encoded.append(EncodedUnit(u, [1] * (n + c), []))
    for seed in (None, 1, 2):
        batches = make_batches(encoded, 8, rng=None if seed is None else random.Random(seed))
        keys = [k for b in batches for k in b.keys]
        assert sorted(keys) == sorted(e.unit.key for e in encoded)  # every unit exactly once
        for b in batches:
            records = {k[0] for k in b.keys}
            sizes = {r: sum(e.unit.key[0] == r for e in encoded) for r in records}
            assert len(b.keys) == sum(sizes.values())  # whole groups only
            assert len(b.keys) <= 8
            assert b.groups.max().item() + 1 == len(records)
    # bucketing: far less padding than batches of random composition
    sorted_batches = make_batches(encoded, 8, rng=random.Random(3))
    pad = sum(b.tokens.size - b.lengths.sum().item() for b in sorted_batches)
    total = sum(len(e.ids) for e in encoded)
    assert pad < 0.15 * total
    assert [b.keys for b in make_batches(encoded, 8, random.Random(5))] == [
        b.keys for b in make_batches(encoded, 8, random.Random(5))
    ]


def _step(model: RSGClassifier, batch) -> dict:
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    model.train()
    opt = optim.SGD(learning_rate=0.5)
    for _ in range(2):  # LoRA's B starts at zero: A only moves on the second step
        loss_and_grad = nn.value_and_grad(model, lambda m, b: loss_fn(m, b)[0])
        _, grads = loss_and_grad(model, batch)
        opt.update(model, grads)
        mx.eval(model.parameters())
    after = dict(tree_flatten(model.parameters()))
    return {
        k for k in after if k not in before or not np.array_equal(before[k], np.array(after[k]))
    }


@pytest.mark.parametrize(
    "cfg, expect",
    [
        (dict(method="heads"), {"heads."}),
        (dict(method="freeze", freeze_layers=1), {"heads.", "lm.model.layers.1.", "lm.model.norm"}),
        (
            dict(method="lora", freeze_layers=1, lora_targets=("q_proj", "v_proj")),
            {"heads.", "lora_"},
        ),
        (dict(method="mlp-adapter", freeze_layers=1), {"heads.", "adapters.block1."}),
    ],
)
def test_each_method_trains_only_its_own_parameters(tiny_model_dir, tok, cfg, expect):
    model = model_for(tiny_model_dir, **cfg)
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    assert all(any(p in k for p in expect) for k in trainable), trainable
    enc = encode_units(
        [nli_unit(i, "Кошка сидит.", f"Кошка {i}.", i % 2) for i in range(4)], tok, 32
    )
    changed = _step(model, collate(enc))
    assert changed and changed <= trainable, changed - trainable
    for p in expect:
        assert any(p in k for k in changed), (p, changed)
    if cfg["method"] != "heads":
        assert model.trainable_start() == 1
        assert not any("layers.0." in k for k in changed)


def test_lora_keys_come_from_mlx_lm_and_bad_target_is_one_line(tiny_model_dir):
    from mlx_lm.tuner.lora import LoRALinear

    model = model_for(
        tiny_model_dir, method="lora", freeze_layers=1, lora_targets=("q_proj", "o_proj")
    )
    attn = model.backbone.layers[1].self_attn
    assert isinstance(attn.q_proj, LoRALinear) and isinstance(attn.o_proj, LoRALinear)
    assert not isinstance(attn.k_proj, LoRALinear)
    assert not isinstance(model.backbone.layers[0].self_attn.q_proj, LoRALinear)
    assert attn.q_proj.scale == pytest.approx(16.0 / 8)
    with pytest.raises(UserError, match="--lora-targets: 'qkv' is no linear layer of gemma3_text"):
        model_for(tiny_model_dir, method="lora", freeze_layers=1, lora_targets=("qkv",))


def test_heads_start_at_zero_on_rms_normalised_features(tiny_model_dir, tok):
    model = RSGClassifier(load_backbone(tiny_model_dir), ClassifierConfig(), {"TERRa": 2})
    model.eval()
    batch = collate(encode_units([nli_unit(0, "Кошка сидит.", "Кошка спит.")], tok, 32))
    assert not np.array(model(batch)).any()  # chance (loss log 2) before training
    x = np.array(model.features(batch))[0, 0]
    model.heads["TERRa"].weight = mx.eye(2, x.size)
    want = x[:2] / np.sqrt((x**2).mean() + 1e-6)
    np.testing.assert_allclose(np.array(model(batch))[0], want, rtol=1e-5)


def test_adapters_start_as_identity(tiny_model_dir, tok):
    enc = encode_units([nli_unit(0, "Кошка сидит.", "Кошка спит.")], tok, 32)
    plain = model_for(tiny_model_dir, method="freeze", freeze_layers=1)
    adapted = model_for(tiny_model_dir, method="mlp-adapter", freeze_layers=0)
    adapted.heads = plain.heads
    np.testing.assert_array_equal(
        np.array(plain.features(collate(enc))), np.array(adapted.features(collate(enc)))
    )


@pytest.mark.parametrize("on_disk", [False, True])
def test_prefix_cache_returns_what_the_frozen_layers_compute(
    tiny_model_dir, tok, tmp_path, on_disk
):
    model = model_for(tiny_model_dir, method="freeze", freeze_layers=1)
    cache = PrefixCache(model, cache_dir=tmp_path if on_disk else None)
    units = [nli_unit(i, "Мама мыла раму " * (1 + i % 3), f"Кошка {i}.") for i in range(6)]
    enc = encode_units(units, tok, 64)
    first = collate(enc[:4])
    mixed = collate([enc[5], enc[1], enc[4], enc[2]])  # two cached rows, two new, new padding
    for batch in (first, mixed, first):
        got = np.array(cache.prefix(batch))
        want = np.array(model.prefix(batch.tokens))
        for j, n in enumerate(batch.lengths.tolist()):
            np.testing.assert_allclose(got[j, :n], want[j, :n], atol=1e-5)
    assert len(cache) == 6 and cache.hits == 6 and cache.misses == 6
    if on_disk:
        rows = sum(len(e.ids) for e in enc)
        assert cache.path.parent == tmp_path
        assert cache.path.stat().st_size == 4 * rows * model.backbone.hidden_size


@pytest.mark.parametrize("cache", ["ram", "disk"])
def test_cached_training_gives_the_uncached_losses(tiny_model_dir, tiny_rsg_dir, tmp_path, cache):
    def run(name, **kw):
        cfg = tiny_train_config(epochs=2, tasks=("TERRa", "PARus"), **kw)
        T.train(tiny_model_dir, tiny_rsg_dir, tmp_path / name, cfg, log=lambda m: None)
        rows = (tmp_path / name / "losses.jsonl").read_text().splitlines()
        return [json.loads(r)["loss"] for r in rows]

    extra = {"cache_dir": str(tmp_path / "cache")} if cache == "disk" else {}
    cached = run("cached", prefix_cache=True, **extra)
    plain = run("plain", prefix_cache=False)
    assert len(cached) == len(plain) > 10
    np.testing.assert_allclose(cached, plain, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, tok, monkeypatch):
    import mlx_rsg.model.backbone as B

    calls = []
    real = B._checkpointed
    monkeypatch.setattr(B, "_checkpointed", lambda *a: calls.append(1) or real(*a))
    enc = encode_units(
        [nli_unit(i, "Кошка сидит.", f"Собака {i}.", i % 2) for i in range(4)], tok, 32
    )
    batch = collate(enc)
    grads = []
    for checkpoint in (False, True):
        model = model_for(
            tiny_model_dir, method="freeze", freeze_layers=0, grad_checkpoint=checkpoint
        )
        model.train()
        _, g = nn.value_and_grad(model, lambda m, b: loss_fn(m, b)[0])(model, batch)
        grads.append(dict(tree_flatten(g)))
    # Layer 0, in the checkpointed run only: the top block runs at the pooled positions only
    # (top_block), which keeps little to recompute.
    assert len(calls) == 1
    assert grads[0].keys() == grads[1].keys() and any("layers.0" in k for k in grads[0])
    for k, v in grads[0].items():
        np.testing.assert_allclose(np.array(grads[1][k]), np.array(v), rtol=1e-4, atol=1e-6)


def test_too_many_trained_layers_names_the_flag():
    from mlx_rsg.model.classifier import trained_depth

    for cfg, flag in [
        (ClassifierConfig(method="mlp-adapter", adapter_layers=5), "--adapter-layers: 5"),
        (ClassifierConfig(method="lora", lora_layers=3), "--lora-layers: 3"),
        (ClassifierConfig(method="freeze", freeze_layers=-1), "--freeze-layers: 3"),
    ]:
        with pytest.raises(UserError, match=flag):
            trained_depth(cfg, 2)


def test_feature_layer_reads_an_earlier_block(tiny_model_dir, tok):
    """--feature-layer 1 of 2: the features are block 1's output at the last token (final norm,
    RMS normalisation, head), whatever block 2 holds; the cache stores block 1's output."""
    from mlx_rsg.model.backbone import embed, final_norm, run_layers

    model = model_for(tiny_model_dir, method="heads", feature_layer=1)
    units = [nli_unit(0, "Кошка сидит на окне.", "Кошка спит."), nli_unit(1, "Дождь.", "Мы дома.")]
    batch = collate(encode_units(units, tok, 64))
    bb = model.backbone
    h = final_norm(bb, run_layers(bb, embed(bb, batch.tokens), 0, 1))
    last = mx.stack([h[i, n - 1] for i, n in enumerate(batch.lengths.tolist())])
    want = model.heads["TERRa"](mx.fast.rms_norm(last, None, 1e-6))
    np.testing.assert_allclose(np.array(model(batch)), np.array(want), rtol=1e-5, atol=1e-5)
    cache = PrefixCache(model)
    np.testing.assert_allclose(np.array(model(batch, cache.prefix(batch))), np.array(want),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    whole = model_for(tiny_model_dir, method="heads")
    assert not np.allclose(np.array(whole(batch)), np.array(want), atol=1e-3)
    with pytest.raises(UserError, match="--feature-layer: 3 is not a block in 1..2"):
        model_for(tiny_model_dir, method="heads", feature_layer=3)


@pytest.mark.parametrize("method", ["freeze", "lora", "mlp-adapter"])
def test_a_feature_layer_run_trains_the_top_blocks_of_those_it_keeps(tiny_model_dir, tok, method):
    """freeze / lora / mlp-adapter with --feature-layer 1 of 2: block 2 is dropped (never run,
    not in the parameter tree), the method trains block 1 (the top block kept), and before any
    training the features are those of `heads --feature-layer 1` (LoRA and adapters start as
    the identity)."""
    depth = dict(freeze_layers=0, lora_layers=1, adapter_layers=1)
    model = model_for(tiny_model_dir, method=method, feature_layer=1, **depth)
    assert (model.backbone.num_layers, model.n_blocks, model.blocks_dropped) == (1, 1, 1)
    assert model.trainable_start() == 0
    trained = [k for k, _ in tree_flatten(model.trainable_parameters())
               if not k.startswith("heads")]  # fmt: skip
    assert trained and not [k for k in trained if ".layers.1." in k], trained
    if method != "mlp-adapter":
        assert all(".layers.0." in k or "norm" in k for k in trained), trained
    heads = model_for(tiny_model_dir, method="heads", feature_layer=1)
    units = [nli_unit(0, "Кошка сидит на окне.", "Кошка спит."), nli_unit(1, "Дождь.", "Мы дома.")]
    batch = collate(encode_units(units, tok, 64))
    np.testing.assert_allclose(np.array(model.features(batch)), np.array(heads.features(batch)),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    with pytest.raises(UserError, match="--freeze-layers: -1 is not within the model's 1 layers"):
        model_for(tiny_model_dir, method="freeze", feature_layer=1, freeze_layers=2)
    with pytest.raises(UserError, match="--feature-layer: 3 > the model's 2 layers"):
        classifier_config(tiny_train_config(method="freeze", feature_layer=3), 2)
    default = tiny_train_config(method="lora", feature_layer=1, freeze_layers=None)
    assert classifier_config(default, 2).freeze_layers == 0  # round(12/26 x 1 block kept)


def test_a_head_only_loss_is_the_same_loss_with_no_gradient_into_the_backbone(tiny_model_dir, tok):
    """--head-only: the task's loss and head gradient as usual, nothing into the trained
    blocks (which the other tasks' batches still train)."""
    model = model_for(tiny_model_dir, method="freeze", freeze_layers=1)
    model.train()  # dropout 0: the two computations see the same features
    batch = collate(encode_units([nli_unit(0, "Кошка сидит.", "Кошка спит.", 1),
                                  nli_unit(1, "Собака спала во дворе.", "Собака спит.")], tok, 64))
    full = nn.value_and_grad(model, lambda m: loss_fn(m, batch)[0])
    alone = nn.value_and_grad(model, lambda m: loss_fn(m, batch, head_only=True)[0])
    (loss, grads), (loss_h, grads_h) = full(model), alone(model)
    assert float(loss_h) == float(loss)
    flat, flat_h = dict(tree_flatten(grads)), dict(tree_flatten(grads_h))
    blocks = [k for k in flat if not k.startswith("heads.")]
    assert blocks and any(float(mx.abs(flat[k]).max()) > 0 for k in blocks)
    assert all(float(mx.abs(flat_h[k]).max()) == 0 for k in blocks)
    for k in ("heads.TERRa.weight", "heads.TERRa.bias"):
        assert np.array_equal(np.array(flat_h[k]), np.array(flat[k])) and float(
            mx.abs(flat[k]).max()) > 0
