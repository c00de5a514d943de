"""Recipes resolve from the checkout (editable install) and parse; unknown names list the others."""

from __future__ import annotations

import pytest

from mlx_rsg.errors import UserError
from mlx_rsg.recipes import available_recipes, load_recipe, recipe_path


def test_convert_and_quantize_recipes_load():
    gemma = load_recipe("convert", "gguf-gemma3")
    assert gemma["architecture"] == "gemma3"
    assert gemma["names"]["blk.{i}.ffn_norm.weight"] == (
        "model.layers.{i}.pre_feedforward_layernorm.weight"
    )
    assert load_recipe("quantize", "q8.toml")["bits"] == 8
    assert recipe_path("quantize", "q4").name == "q4.toml"
    assert {"q4", "q8"} <= set(available_recipes("quantize"))


def test_unknown_recipe_lists_available():
    with pytest.raises(UserError, match=r"unknown quantize recipe 'q3' \(available: .*q4.*q8"):
        recipe_path("quantize", "q3")
    with pytest.raises(UserError, match="unknown recipe kind"):
        load_recipe("train", "x")


def test_wheel_ships_recipes_where_recipes_py_looks():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with (root / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert include == {
        "convert": "mlx_rsg/recipe_files/convert",
        "quantize": "mlx_rsg/recipe_files/quantize",
    }


def test_a_recipe_file_of_ones_own_and_the_measured_levers_resolve():
    """`--recipe path/to/x.toml` reads the user's file; the levers docs/quantization.md measured
    (benchmarks/quantize_recipes/, and the shipped q4-gptq-long-bc, q4-gptq-long-sens-bc,
    q4-gptq-long-sens-rows-bc, q8-gptq-long and q8-gptq-long-e3-rows-bc) resolve with the fields
    they were measured with."""
    from pathlib import Path

    from mlx_rsg.quant.recipe import resolve_recipe

    here = Path(__file__).resolve().parent.parent / "benchmarks" / "quantize_recipes"
    recipes = {p.stem: resolve_recipe(recipe=str(p)) for p in sorted(here.glob("*.toml"))}
    for shipped in ("q4-gptq-long-bc", "q4-gptq-long-sens-bc", "q4-gptq-long-sens-rows-bc",
                    "q8-gptq-long", "q8-gptq-long-e3-rows-bc"):
        recipes[shipped] = resolve_recipe(recipe=shipped)
    assert recipes["q4-h-e5"].scale_dtype == "float16"
    assert recipes["q4-h-e5"].params_for("model.embed_tokens") == {"bits": 5, "group_size": 128}
    assert recipes["q4-gptq-long-bc"].calibration["examples"] == 512
    q8_gptq = recipes["q8-gptq-long"]
    assert (q8_gptq.method, q8_gptq.bits, q8_gptq.group_size) == ("gptq", 8, 64)
    assert q8_gptq.calibration == recipes["q4-gptq-long-bc"].calibration
    assert q8_gptq.bias_correction is None and q8_gptq.sensitivity is None
    assert all(r.bias_correction == {"units": 128, "seed": 0}
               for name, r in recipes.items() if name.endswith("-bc"))  # fmt: skip
    assert all(r.name == name for name, r in recipes.items())
    dwq, sens = resolve_recipe(recipe="q4-dwq"), recipes["q4-sens-dwq"]
    assert dwq.distill == sens.distill == {"units": 32, "holdout": 32, "epochs": 1,
                                           "batch_size": 4, "lr": 1e-7, "temperature": 1.0,
                                           "seed": 0}  # fmt: skip
    assert isinstance(dwq.distill["lr"], float) and isinstance(dwq.distill["units"], int)
    assert sens.sensitivity == {"units": 16, "budget": 5.0, "high_bits": 8, "seed": 0}
    assert recipes["q4-gptq-long-sens-bc"].sensitivity == sens.sensitivity
    assert recipes["q4-gptq-long-sens-bc"].calibration == recipes["q4-gptq-long-bc"].calibration
    rows = recipes["q4-gptq-long-sens-rows-bc"]
    assert rows.embedding_rows == {"bits": 8} and rows.scale_dtype == "float16"
    assert rows.params_for("model.embed_tokens")["bits"] == 3
    assert rows.params_for("model.layers.0.self_attn.q_proj")["bits"] == 4
    assert (rows.sensitivity, rows.calibration) == (sens.sensitivity,
                                                    recipes["q4-gptq-long-bc"].calibration)
    assert recipes["q4-dwq-t025"].distill == {**dwq.distill, "temperature": 0.25}
    e3 = recipes["q8-gptq-long-e3-rows-bc"]
    assert (e3.method, e3.bits, e3.group_size, e3.scale_dtype) == ("gptq", 8, 128, "float16")
    assert e3.params_for("model.embed_tokens") == {"bits": 3, "group_size": 128}
    assert e3.params_for("model.layers.0.mlp.down_proj") == {"bits": 8, "group_size": 128}
    assert (e3.embedding_rows, e3.calibration, e3.sensitivity) == (
        {"bits": 8}, q8_gptq.calibration, None)
    assert e3.substitution == {"bits": 4, "group_size": 64}
    assert dwq.calibrated and sens.calibrated and sens.scale_dtype == "float16"
    with pytest.raises(UserError, match="no such quantize recipe file"):
        recipe_path("quantize", str(here / "missing.toml"))
