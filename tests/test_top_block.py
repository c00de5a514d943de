"""The top block at the pooled positions only equals the whole block there (values, gradients)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.base import create_attention_mask
from test_model import model_for, nli_unit, russe_unit

from mlx_rsg.arch import top_block
from mlx_rsg.model.backbone import layer_window, load_backbone, load_tokenizer
from mlx_rsg.model.batching import collate, encode_units, loss_fn


def assert_grads_close(got: dict, want: dict) -> None:
    """Equal up to float32 summation order, relative to each gradient's largest entry."""
    assert got.keys() == want.keys()
    for k, v in want.items():
        a, b = np.array(got[k]), np.array(v)
        np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max(), rtol=1e-4, err_msg=k)


def test_pooled_positions():
    lengths = np.array([5, 3])
    pos, valid = top_block.pooled_positions(lengths, None, "last")
    assert pos.tolist() == [[4], [2]] and valid.all()
    spans = np.array([[[1, 3], [6, 7]], [[2, 3], [2, 3]]])  # row 1: the same word twice
    pos, valid = top_block.pooled_positions(lengths, spans, "last")
    assert pos.tolist() == [[1, 2, 6], [2, 2, 2]]
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    assert top_block.pooled_positions(lengths, None, "mean") is None


@pytest.mark.parametrize("index", [0, 1])  # layer 0 slides (window 8), layer 1 is global
def test_block_at_equals_the_whole_block(tiny_model_dir, index):
    bb = load_backbone(tiny_model_dir)
    layer = bb.layers[index]
    assert top_block.supports(layer)
    window = layer_window(bb, index)
    assert (window is not None) == (index == 0)
    B, L = 3, 20  # longer than the window
    h = mx.random.normal((B, L, bb.hidden_size), key=mx.random.key(1))
    positions = mx.array([[19, 3, 11], [0, 8, 8], [15, 16, 17]])
    mask = create_attention_mask(h, None, window_size=window)
    whole = mx.take_along_axis(layer(h, mask, None), positions[..., None], axis=1)
    at = top_block.block_at(layer, h, positions, window)
    np.testing.assert_allclose(np.array(at), np.array(whole), atol=1e-5, rtol=1e-5)

    # Gradients with respect to the block's weights and its input.
    layer.unfreeze()
    ct = mx.random.normal(at.shape, key=mx.random.key(2))

    def grads(fn):
        def loss(params, x):
            layer.update(params)
            return (fn(x) * ct).sum()

        return mx.grad(loss, argnums=(0, 1))(layer.trainable_parameters(), h)

    g_whole = grads(lambda x: mx.take_along_axis(layer(x, mask, None), positions[..., None], 1))
    g_at = grads(lambda x: top_block.block_at(layer, x, positions, window))
    assert_grads_close(dict(tree_flatten(g_at)), dict(tree_flatten(g_whole)))


@pytest.mark.parametrize(
    "cfg",
    [
        {"method": "heads"},  # every block frozen: the top one is pruned in inference too
        {"method": "freeze", "freeze_layers": 0},
        {"method": "lora", "lora_layers": 2},
        {"method": "mlp-adapter", "adapter_layers": 1, "adapter_dropout": 0.0},
    ],
)
@pytest.mark.parametrize("task", ["TERRa", "RUSSE"])
def test_classifier_logits_and_gradients_match_the_whole_top_block(
    tiny_model_dir, monkeypatch, cfg, task
):
    tok = load_tokenizer(tiny_model_dir)
    if task == "TERRa":
        units = [
            nli_unit(i, "Кошка сидит на окне и смотрит.", f"Собака {i}.", i % 2) for i in (0, 1)
        ]
        units.append(nli_unit(2, "Дождь.", "Дома.", 1))  # shorter: padded
    else:
        units = [
            russe_unit(0, "Студент сдал", "экзамен", "Экзамен был трудный, сказал", "студент"),
            russe_unit(1, "Мама", "мыла", "Кошка", "сидит", 0),
        ]
    batch = collate(encode_units(units, tok, 64))

    def run():
        model = model_for(tiny_model_dir, **cfg)
        logits = model(batch)
        model.train()  # dropout is 0: the same function, with gradients
        _, g = nn.value_and_grad(model, lambda m, b: loss_fn(m, b)[0])(model, batch)
        return np.array(logits), dict(tree_flatten(g))

    pruned_logits, pruned_grads = run()
    monkeypatch.setattr(top_block, "supports", lambda layer: False)
    whole_logits, whole_grads = run()
    np.testing.assert_allclose(pruned_logits, whole_logits, atol=1e-5, rtol=1e-5)
    assert_grads_close(pruned_grads, whole_grads)
