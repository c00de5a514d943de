"""mlx-rsg convert: HF directory / GGUF -> MLX directory; parity against transformers."""

from __future__ import annotations

import json

from tiny_model import build_tiny_model

import mlx_rsg  # noqa: F401  (OpenBLAS before mlx)


def test_convert_mlx_dir_round_trip(tmp_path):
    import mlx.core as mx
    from mlx_lm import load

    from mlx_rsg.backbone import hidden_states, load_backbone
    from mlx_rsg.convert import convert

    src = build_tiny_model(tmp_path / "src")
    out = convert(str(src), tmp_path / "out")
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    assert manifest["dtype"] == "float32" and manifest["model_type"] == "gemma3_text"
    assert manifest["source"]["sha256"]["model.safetensors"]
    tokens = mx.array([[2, 10, 20, 30, 40]])
    a = hidden_states(load_backbone(src), tokens)
    b = hidden_states(load_backbone(out), tokens)
    assert mx.array_equal(a, b).item()
    model, tok = load(str(out))
    assert tok.encode("Мама мыла раму")
