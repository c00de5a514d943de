"""mlx-rsg quantize on the tiny random Gemma 3: round trips through mlx-lm's loader, error bounds
against float32, run directories, and one-line errors for bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_model import tiny_model_dir  # noqa: F401

import mlx_rsg  # noqa: F401  (OpenBLAS before mlx)
from mlx_rsg.quantize import quantize

# Every width of the tiny model (32 hidden, 64 FFN) is a multiple of 32, so all layers quantize.
G = 32


@pytest.mark.parametrize("recipe", ["q8", "q4", "q4-mixed"])
def test_model_dir_round_trip_through_mlx_lm_load(tiny_model_dir, tmp_path, recipe):  # noqa: F811
    import mlx.nn as nn
    from mlx_lm import load

    out = quantize(tiny_model_dir, tmp_path / recipe, recipe=recipe, group_size=G, log=print)
    config = json.loads((out / "config.json").read_text())
    q = config["quantization"]
    assert q["group_size"] == G and q["mode"] == "affine"
    model, tokenizer = load(str(out))
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    layer = model.model.layers[0]
    mlp_bits = layer.mlp.up_proj.bits
    attn_bits = layer.self_attn.q_proj.bits
    emb_bits = model.model.embed_tokens.bits
    expected = {"q8": (8, 8, 8), "q4": (4, 4, 4), "q4-mixed": (4, 8, 8)}[recipe]
    assert (mlp_bits, attn_bits, emb_bits) == expected
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    assert manifest["recipe"]["name"] == recipe
    assert manifest["source"] == str(Path(tiny_model_dir).resolve())
    assert tokenizer.encode("Мама мыла раму") == load(str(tiny_model_dir))[1].encode(
        "Мама мыла раму"
    )
