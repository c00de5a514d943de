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
