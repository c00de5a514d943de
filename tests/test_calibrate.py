"""GPTQ calibration on RSG training examples (mlx_rsg.quant.gptq)."""

import mlx.core as mx  # conftest imports mlx_rsg (OpenBLAS) first
import pytest
from tiny_model import build_tiny_model

from mlx_rsg.model.backbone import hidden_states, load_backbone, load_tokenizer
from mlx_rsg.quant.gptq import (
    PAD_ID,
    calibration_batches,
    gptq_quantize_backbone,
    real_token_mask,
)

GROUP = 32  # the tiny model's widths (32, 64, 128) are all multiples of 32


@pytest.fixture(scope="module")
def model64(tmp_path_factory):
    # hidden 64: every Linear's input width (64, 32, 128) divides group size 32
    return build_tiny_model(tmp_path_factory.mktemp("tiny64"), hidden=64, layers=2, seed=3)


def test_real_token_mask_stops_at_right_padding():
    tokens = mx.array([[5, 6, 7, 0, 0], [5, 0, 6, 8, 9], [5, 0, 0, 0, 0]])
    assert real_token_mask(tokens).tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],  # an inner 0 before real tokens is a real token
        [1, 0, 0, 0, 0],
    ]


def test_calibration_batches_come_from_train_splits(model64, tiny_rsg_dir):
    tok = load_tokenizer(model64)
    batches = calibration_batches(tiny_rsg_dir, None, tok, n_examples=30, max_len=64)
    rows = [r for b in batches for r in b.tolist()]
    assert len(rows) == 30  # 10 per task: TERRa, RCB, PARus have train splits; LiDiRus not
    assert all(b.dtype == mx.int32 for b in batches)
    lengths = [sum(1 for t in r if t != PAD_ID) for r in rows]
    assert lengths == sorted(lengths) and max(lengths) <= 64
    for b in batches:  # right padding only: no batch is padded wider than its longest row
        assert (b[:, -1] != PAD_ID).any().item()
    again = calibration_batches(tiny_rsg_dir, None, tok, n_examples=30, max_len=64)
    assert [b.tolist() for b in again] == [b.tolist() for b in batches]  # seeded


def _rtn(model_dir, bits, group):
    from mlx_rsg.quant.recipe import Recipe
    from mlx_rsg.quant.rtn import quantize_backbone

    bb = load_backbone(model_dir)
    quantize_backbone(bb.model, bb.config, Recipe("rtn", bits, group))
    return bb


def test_gptq_beats_round_to_nearest_and_loads(model64, tiny_rsg_dir, tmp_path):
    import mlx_lm
    from mlx_lm.utils import save_config, save_model

    from mlx_rsg.model_files import copy_model_dir

    tok = load_tokenizer(model64)
    batches = calibration_batches(tiny_rsg_dir, None, tok, n_examples=48, max_len=64)
    ref_bb = load_backbone(model64)
    rtn_bb = _rtn(model64, 4, GROUP)
    bb = load_backbone(model64)
    model, config = gptq_quantize_backbone(bb, batches, 4, GROUP, 4, GROUP)
    q = config["quantization"]
    assert q["bits"] == 4 and q["group_size"] == GROUP
    assert q["model.embed_tokens"]["bits"] == 4  # the embedding goes through the fallback

    def err(b):
        total = 0.0
        for t in batches:
            m = real_token_mask(t)[..., None]
            d = (hidden_states(b, t) - hidden_states(ref_bb, t)) * m
            total += (d * d).sum().item()
        return total

    e_gptq, e_rtn = err(bb), err(rtn_bb)
    assert e_gptq < e_rtn, (e_gptq, e_rtn)

    out = tmp_path / "gptq"
    copy_model_dir(model64, out)
    for f in out.glob("*.safetensors"):
        f.unlink()
    save_model(out, model)
    save_config(dict(config), config_path=out / "config.json")
    again = load_backbone(out)
    t = batches[0]
    assert mx.array_equal(hidden_states(again, t), hidden_states(bb, t)).item()
    lm, _ = mlx_lm.load(str(out))
    assert type(lm.model.layers[0].mlp.up_proj).__name__ == "QuantizedLinear"
    assert lm.model.embed_tokens.bits == 4


def test_cli_gptq_recipe_needs_calib_data_in_one_line(model64, tmp_path):
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    out = tmp_path / "q"
    r = CliRunner().invoke(main, ["quantize", str(model64), "--recipe", "q4-gptq", "-o", str(out)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "--calib-data" in lines[0] and "q4-gptq" in lines[0]
    assert not out.exists()


def test_cli_gptq_model_dir_round_trip(model64, tiny_rsg_dir, tmp_path):
    import json

    import mlx_lm
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    out = tmp_path / "q"
    args = ["quantize", str(model64), "--recipe", "q4-gptq", "--group-size", "32",
            "--calib-data", str(tiny_rsg_dir), "-o", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    assert manifest["method"] == "gptq"
    cal = manifest["calibration"]
    assert sorted(cal["tasks"]) == ["PARus", "RCB", "TERRa"] and cal["split"] == "train"
    assert cal["examples"] == 128  # 43 per task (ceil 128 / 3), the last trimmed to 128
    assert cal["data"] == str(tiny_rsg_dir.resolve())
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["group_size"] == 32
    assert config["quantization"]["model.embed_tokens"]["bits"] == 4
    lm, _ = mlx_lm.load(str(out))
    assert type(lm.model.layers[1].self_attn.o_proj).__name__ == "QuantizedLinear"
    h = hidden_states(load_backbone(out), mx.array([[2, 10, 11, 12]]))
    assert h.shape == (1, 4, 64) and mx.isfinite(h).all().item()


def test_gptq_keeps_a_modules_own_width_rounded_to_nearest(model64, tiny_rsg_dir, tmp_path):
    """A recipe giving some Linears their own width (an override, or `[sensitivity]`'s 8-bit
    choices) with method gptq: those are rounded to nearest at it, GPTQ quantizes the rest at
    the recipe's width, and the config says each width (mlx_lm.load reads it back)."""
    import mlx_lm
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    recipe = tmp_path / "mixed-gptq.toml"
    recipe.write_text('name = "mixed-gptq"\nmethod = "gptq"\nbits = 4\ngroup_size = 32\n'
                      '[calibration]\nexamples = 32\nmax_len = 64\n'
                      '[overrides]\n"self_attn.o_proj" = { bits = 8 }\n')  # fmt: skip
    out = tmp_path / "q"
    r = CliRunner().invoke(main, ["quantize", str(model64), "--recipe", str(recipe),
                                  "--calib-data", str(tiny_rsg_dir), "-o", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    lm, _, config = mlx_lm.load(str(out), return_config=True)
    float_lm, _ = mlx_lm.load(str(model64))
    for i, layer in enumerate(lm.model.layers):
        o_proj, q_proj = layer.self_attn.o_proj, layer.self_attn.q_proj
        assert (o_proj.bits, q_proj.bits) == (8, 4)
        assert config["quantization"][f"model.layers.{i}.self_attn.o_proj"]["bits"] == 8
        w, scales, biases = mx.quantize(float_lm.model.layers[i].self_attn.o_proj.weight,
                                        group_size=32, bits=8)  # fmt: skip
        assert mx.array_equal(o_proj.weight, w).item() and mx.allclose(o_proj.scales, scales)
        rtn, _, _ = mx.quantize(float_lm.model.layers[i].self_attn.q_proj.weight, group_size=32,
                                bits=4)  # fmt: skip
        assert not mx.array_equal(q_proj.weight, rtn).item()  # GPTQ moved the 4-bit codes


def test_gptq_run_dir_predicts(tiny_model_dir, tmp_path):
    """A trained (LoRA) run quantized by GPTQ is a standalone run predict reads, with the
    calibration set in its manifest."""
    import json

    import numpy as np
    from tiny_model import tiny_train_config, write_tiny_rsg

    from mlx_rsg import predict
    from mlx_rsg import train as T
    from mlx_rsg.data import load_split
    from mlx_rsg.quant.quantize import quantize

    data = write_tiny_rsg(tmp_path / "rsg", n_train=16, n_val=8)
    cfg = tiny_train_config(tasks=("TERRa", "PARus"), method="lora", freeze_layers=0, epochs=1)
    T.train(tiny_model_dir, data, tmp_path / "run", cfg, log=lambda m: None)
    out = quantize(tmp_path / "run", tmp_path / "q", recipe="q4-gptq", group_size=GROUP,
                   calib_data=data, log=lambda m: None)
    info = json.loads((out / "run.json").read_text())
    assert info["quantized"]["recipe"]["method"] == "gptq"
    assert info["fused"]["from"] == "lora"
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    # every train unit (under the 128 cap): TERRa 16 + RCB 16 + PARus 16 records x 2 choices
    assert manifest["calibration"]["examples"] == 64
    p = predict.load(out)
    _, _, scores = p.predictions("TERRa", load_split(data, "TERRa", "val"))
    assert np.isfinite(np.asarray(scores)).all() and len(scores) == 8


def test_right_padding_does_not_change_gptq(model64, tiny_rsg_dir):
    """Pad tokens are masked out of the Hessian: the same rows padded wider give the same
    quantized weights (unmasked, the pads' activations would enter H and change them)."""
    from mlx.utils import tree_flatten

    tok = load_tokenizer(model64)
    batches = calibration_batches(tiny_rsg_dir, ["TERRa"], tok, n_examples=16, max_len=64)
    wider = [mx.concatenate([b, mx.full((b.shape[0], 7), PAD_ID, mx.int32)], axis=1)
             for b in batches]
    a, _ = gptq_quantize_backbone(load_backbone(model64), batches, 4, GROUP, 4, GROUP)
    b, _ = gptq_quantize_backbone(load_backbone(model64), wider, 4, GROUP, 4, GROUP)
    wa, wb = dict(tree_flatten(a.parameters())), dict(tree_flatten(b.parameters()))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert mx.allclose(wa[k], wb[k], atol=1e-6).item(), k
