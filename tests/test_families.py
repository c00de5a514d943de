"""Decoder families a user would pick for Russian, each as a tiny random checkpoint written by
transformers (no download): `convert`, our layer-by-layer forward against transformers', training
with each method, a prediction through `mlx_rsg.load`, 8- and 4-bit quantization, one server for
all; and a model mlx-rsg cannot run, refused at `convert`."""

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


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict:
    """model_type -> (the transformers model, its converted MLX directory), every family."""
    _torch()
    from transformers import AutoConfig, AutoModelForCausalLM

    from mlx_rsg.convert.hf import convert

    out = {}
    for name, extra in FAMILIES.items():
        src = tmp_path_factory.mktemp(name) / "hf"
        write_sentencepiece_tokenizer(src, CORPUS, vocab=320)
        cfg = AutoConfig.for_model(name, **{**COMMON, **extra})
        cfg._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(cfg).eval()
        _randomize(model, 3)
        model.save_pretrained(src)
        out[name] = model, convert(str(src), src.parent / "mlx", dtype="float32")
    return out


@pytest.fixture(scope="module")
def freeze_runs(families, tiny_rsg_dir, tmp_path_factory) -> dict:  # noqa: F811
    """model_type -> a `freeze` run on its converted model (TERRa), named by the family."""
    from mlx_rsg import train as T

    root = tmp_path_factory.mktemp("runs")
    cfg = tiny_train_config(tasks=("TERRa",), epochs=1)
    for name, (_, out) in families.items():
        T.train(out, tiny_rsg_dir, root / name, cfg, log=lambda m: None)
    return {name: root / name for name in families}


RECORD = {"idx": 0, "premise": "Кошка спит на окне.", "hypothesis": "Кошка спит."}


def _check_prediction(row: dict) -> None:
    assert row["label"] in ("entailment", "not_entailment")
    assert sum(row["probs"].values()) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_our_forward_equals_transformers(families, name):
    """`hidden_states` (the layers one by one with our masks, as training and scoring call
    them) gives transformers' last hidden state."""
    torch = _torch()
    import mlx.core as mx
    import numpy as np

    from mlx_rsg.model.backbone import hidden_states, load_backbone

    model, out = families[name]
    assert json.loads((out / "config.json").read_text())["model_type"] == name
    ids = _token_batch(out)[1]
    with torch.no_grad():
        want = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    got = np.array(hidden_states(load_backbone(out), mx.array([ids]))[0])
    assert np.abs(got - want.numpy()).max() < 1e-4, name


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("method", ["freeze", "lora", "heads"])
def test_every_method_trains_and_predicts(families, freeze_runs, tiny_rsg_dir, tmp_path,  # noqa: F811
                                          name, method):  # fmt: skip
    import mlx_rsg
    from mlx_rsg import train as T

    run = freeze_runs[name]
    if method != "freeze":
        run = tmp_path / "run"
        cfg = tiny_train_config(tasks=("TERRa",), epochs=1, method=method, freeze_layers=0)
        T.train(families[name][1], tiny_rsg_dir, run, cfg, log=lambda m: None)
    (row,) = mlx_rsg.load(run).predict("TERRa", [RECORD])
    _check_prediction(row)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("recipe, tolerance", [("q8", 0.02), ("q4", 0.1)])
def test_a_quantized_run_predicts_as_its_float_run(freeze_runs, tmp_path, name, recipe,
                                                   tolerance):  # fmt: skip
    import mlx_rsg
    from mlx_rsg.quant.quantize import quantize

    out = quantize(freeze_runs[name], tmp_path / recipe, recipe=recipe, log=lambda m: None)
    records = [{**RECORD, "idx": i, "premise": f"{RECORD['premise']} {i}"} for i in range(6)]
    want = mlx_rsg.load(freeze_runs[name]).predict("TERRa", records)
    for got, ref in zip(mlx_rsg.load(out).predict("TERRa", records), want, strict=True):
        _check_prediction(got)
        assert got["probs"]["entailment"] == pytest.approx(ref["probs"]["entailment"],
                                                           abs=tolerance)  # fmt: skip


def test_one_server_serves_every_family(freeze_runs):
    import urllib.request

    from mlx_rsg.serve.process import ServerProcess

    server = ServerProcess(list(freeze_runs.values()))
    try:
        for name in freeze_runs:
            body = json.dumps({"model": name, "task": "TERRa", "records": [RECORD]}).encode()
            req = urllib.request.Request(server.url + "/v1/predict", data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(req, timeout=60) as r:
                (row,) = json.loads(r.read())["predictions"]
            _check_prediction(row)
    finally:
        server.stop()


def test_a_model_mlx_rsg_cannot_run_is_refused_at_convert(tmp_path):
    """A state-space model (Mamba: no attention blocks) is one line at `convert`, and nothing
    is written, not a traceback in the middle of `train`."""
    _torch()
    from transformers import AutoConfig, AutoModelForCausalLM

    from mlx_rsg.convert.hf import convert
    from mlx_rsg.errors import UserError

    src = tmp_path / "hf"
    write_sentencepiece_tokenizer(src, CORPUS, vocab=320)
    cfg = AutoConfig.for_model("mamba", vocab_size=336, hidden_size=64, num_hidden_layers=2,
                               pad_token_id=0, eos_token_id=1, bos_token_id=2)  # fmt: skip
    AutoModelForCausalLM.from_config(cfg).save_pretrained(src)
    with pytest.raises(UserError) as e:
        convert(str(src), tmp_path / "mlx", dtype="float32")
    assert str(e.value) == (f"{src}: mlx-rsg cannot run a 'mamba' model block by block (no "
                            "decoder.embed_tokens); it runs decoder-only transformers "
                            "(docs/cli.md#architectures)")  # fmt: skip
    assert not (tmp_path / "mlx").exists()
