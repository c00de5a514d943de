"""Decoder families a user would pick for Russian, each as a tiny random checkpoint written by
transformers (no download): `convert`, our layer-by-layer forward against transformers', then a
`freeze` training and a prediction through `mlx_rsg.load`."""

from __future__ import annotations

import json

import pytest
from test_convert import CORPUS, _randomize, _token_batch, _torch
from tiny_model import tiny_rsg_dir, tiny_train_config, write_sentencepiece_tokenizer  # noqa: F401

COMMON = dict(vocab_size=336, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True)  # fmt: skip
# model_type -> what its config needs beyond COMMON
FAMILIES = {
    "llama": {},
    "mistral": dict(sliding_window=None),
    "qwen2": {},
    "qwen3": dict(head_dim=16),
    "phi3": dict(tie_word_embeddings=False),
    # mlx-lm's Gemma 2 attends to every earlier token in every layer; transformers' alternates a
    # sliding window, the same as full attention below its width
    "gemma2": dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=128,
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0),  # fmt: skip
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(model_type, the transformers model, its converted MLX directory)."""
    _torch()
    from transformers import AutoConfig, AutoModelForCausalLM

    from mlx_rsg.convert.hf import convert

    name = request.param
    src = tmp_path_factory.mktemp(name) / "hf"
    write_sentencepiece_tokenizer(src, CORPUS, vocab=320)
    cfg = AutoConfig.for_model(name, **{**COMMON, **FAMILIES[name]})
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg).eval()
    _randomize(model, 3)
    model.save_pretrained(src)
    out = convert(str(src), src.parent / "mlx", dtype="float32")
    return name, model, out


def test_our_forward_equals_transformers(family):
    """`hidden_states` (the layers one by one with our masks, as training and scoring call
    them) gives transformers' last hidden state."""
    torch = _torch()
    import mlx.core as mx
    import numpy as np

    from mlx_rsg.model.backbone import hidden_states, load_backbone

    name, model, out = family
    assert json.loads((out / "config.json").read_text())["model_type"] == name
    ids = _token_batch(out)[1]
    with torch.no_grad():
        want = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    got = np.array(hidden_states(load_backbone(out), mx.array([ids]))[0])
    assert np.abs(got - want.numpy()).max() < 1e-4, name


def test_train_and_predict(family, tiny_rsg_dir, tmp_path):  # noqa: F811
    import mlx_rsg
    from mlx_rsg import train as T

    name, _, out = family
    cfg = tiny_train_config(tasks=("TERRa",), epochs=1)
    T.train(out, tiny_rsg_dir, tmp_path / "run", cfg, log=lambda m: None)
    record = {"idx": 0, "premise": "Кошка спит на окне.", "hypothesis": "Кошка спит."}
    (row,) = mlx_rsg.load(tmp_path / "run").predict("TERRa", [record])
    assert row["label"] in ("entailment", "not_entailment"), name
    assert sum(row["probs"].values()) == pytest.approx(1, abs=1e-5)
