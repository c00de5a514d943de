"""A quantize recipe's `[embedding_rows]`: the rows of the run's train tokens kept at more bits
beside the quantized embedding (quant/embedding_rows.py, model/row_embedding.py), on the tiny
random Gemma 3 and a seconds-long LoRA run."""

from __future__ import annotations

import json

import pytest
from test_quantize import Q2, _head_kl, _recipe, lora_run, rounded_2bit  # noqa: F401
from tiny_model import tiny_model_dir  # noqa: F401

from mlx_rsg.errors import UserError
from mlx_rsg.quant.quantize import quantize

ROWS = "[embedding_rows]\nbits = 8\n"


@pytest.fixture(scope="module")
def raised(lora_run, tmp_path_factory):  # noqa: F811
    """The LoRA run at 2 bits with its train tokens' embedding rows at 8."""
    run, data = lora_run
    root = tmp_path_factory.mktemp("rows")
    return quantize(run, root / "q2rows", calib_data=data,
                    recipe=_recipe(root / "q2rows.toml", Q2 + ROWS))  # fmt: skip


def test_the_train_tokens_rows_are_read_at_8_bits(lora_run, rounded_2bit, raised):  # noqa: F811
    """The rows of exactly the run's train tokens are the float rows rounded at 8 bits (as an
    embedding, through `weight_rows` and as the tied output layer), every other row the 2-bit
    table's; mlx-lm loads the directory with the 2-bit table alone; the manifest counts the
    rows' bytes in bits per weight."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm import load
    from mlx_lm.utils import get_total_parameters

    from mlx_rsg import predict
    from mlx_rsg.model.backbone import weight_rows
    from mlx_rsg.model.row_embedding import FILE, RowPrecisionEmbedding, extra_bits
    from mlx_rsg.quant.embedding_rows import train_token_ids

    run, data = lora_run
    ref = predict.load(run, calibrated=False)
    ids, tasks = train_token_ids(ref.model, ref.tokenizer, data)
    assert tasks == ["PARus", "TERRa"] and 0 < len(ids) < ref.model.backbone.config["vocab_size"]

    q = predict.load(raised, calibrated=False)
    emb = q.model.backbone.decoder.embed_tokens
    assert isinstance(emb, RowPrecisionEmbedding) and (emb.bits, emb.high_bits) == (2, 8)
    assert np.array(emb.high_ids).tolist() == ids
    float_table = weight_rows(ref.model.backbone.decoder.embed_tokens, slice(None))
    w, s, b = mx.quantize(float_table, 32, 8)
    at_8 = np.array(mx.dequantize(w, s, b, group_size=32, bits=8))
    plain = predict.load(rounded_2bit, calibrated=False).model.backbone.decoder.embed_tokens
    at_2 = np.array(plain(mx.arange(float_table.shape[0])))
    want = at_2.copy()
    want[ids] = at_8[ids]
    got = np.array(emb(mx.arange(float_table.shape[0])))
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(np.array(weight_rows(emb, slice(None))), want, atol=1e-6)
    x = mx.random.normal((3, emb.dims), key=mx.random.key(0))
    np.testing.assert_allclose(np.array(emb.as_linear(x)), np.array(x) @ want.T, atol=1e-4)

    model, _ = load(str(raised / "backbone"))  # mlx-lm: the 2-bit table, no file of its own
    assert type(model.model.embed_tokens) is nn.QuantizedEmbedding
    assert model.model.embed_tokens.bits == 2 and (raised / "backbone" / FILE).is_file()

    manifest = json.loads((raised / "mlx_rsg.json").read_text())
    assert manifest["embedding_rows"]["rows"] == len(ids)
    assert manifest["recipe"]["embedding_rows"] == {"bits": 8}
    params = get_total_parameters(model)  # what mlx-lm divides a model's bits by
    before = json.loads((rounded_2bit / "mlx_rsg.json").read_text())["bits_per_weight"]
    added = extra_bits(len(ids), emb.dims, 8, 32, 32) / params
    assert manifest["bits_per_weight"] == pytest.approx(before + added, abs=2e-3)



def test_where_the_embedding_dominates_the_rows_bring_the_heads_back(lora_run, tmp_path):  # noqa: F811
    """Blocks at 8 bits and the embedding at 2, so the embedding's rounding is most of what moves
    the heads: with the train tokens' rows at 8 bits the heads' KL to the float run on train
    records falls to a small part of the plain recipe's."""
    from mlx_rsg import predict
    from mlx_rsg.quant import distill

    run, data = lora_run
    blocks_8 = Q2 + '[overrides]\n"layers" = { bits = 8 }\n'
    outs = [quantize(run, tmp_path / name, calib_data=data,
                     recipe=_recipe(tmp_path / f"{name}.toml", text))
            for name, text in (("plain", blocks_8), ("rows", blocks_8 + ROWS))]  # fmt: skip
    ref = predict.load(run, calibrated=False)
    records, _ = distill.draw_records(data, list(ref.model.heads), 8, 0, 0)
    plain, rows = (_head_kl(predict.load(out, calibrated=False), ref, records) for out in outs)
    assert rows < 0.2 * plain, (rows, plain)


def test_the_rows_are_paid_from_the_sensitivity_budget(lora_run, rounded_2bit, tmp_path):  # noqa: F811
    """With [sensitivity] the rows' bits are spent first: the written model, rows included, is
    within the budget, the manifest says what was reserved, and the embedding is not raised."""
    run, data = lora_run
    low = json.loads((rounded_2bit / "mlx_rsg.json").read_text())["bits_per_weight"]
    budget = round(low + 1.0, 3)
    out = quantize(run, tmp_path / "q2sr", calib_data=data, recipe=_recipe(
        tmp_path / "q2sr.toml", Q2 + f"[sensitivity]\nunits = 8\nbudget = {budget}\n" + ROWS))
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    assert manifest["sensitivity"]["reserved_bits"] > 0 and manifest["sensitivity"]["raised"]
    assert "model.embed_tokens" not in manifest["sensitivity"]["raised"]
    assert low < manifest["bits_per_weight"] <= budget


def test_the_shipped_combination_on_the_tiny_run(lora_run, tmp_path):  # noqa: F811
    """q4-gptq-long-sens-rows-bc's levers together (the embedding's table below the Linears'
    width, its train rows at 8 bits, sensitivity, GPTQ, bias correction): the table is written at
    its own width for mlx-lm, the rows beside it, the budget holds, and the run predicts."""
    from mlx_lm import load

    from mlx_rsg import predict
    from mlx_rsg.model.row_embedding import RowPrecisionEmbedding

    run, data = lora_run
    text = ('bits = 4\ngroup_size = 32\nmethod = "gptq"\n[overrides]\n"embed_tokens" = '
            "{ bits = 2 }\n[calibration]\nexamples = 16\nmax_len = 64\n[sensitivity]\n"
            "units = 8\nbudget = 7.0\n[bias_correction]\nunits = 8\n" + ROWS)  # fmt: skip
    out = quantize(run, tmp_path / "combo", calib_data=data, recipe=_recipe(tmp_path / "c.toml",
                                                                            text))  # fmt: skip
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    assert manifest["method"] == "gptq" and manifest["bias_correction"]
    assert manifest["embedding_rows"]["rows"] > 0 and manifest["sensitivity"]["raised"]
    assert manifest["bits_per_weight"] <= 7.0
    config = json.loads((out / "backbone" / "config.json").read_text())["quantization"]
    assert config["model.embed_tokens"]["bits"] == 2
    assert load(str(out / "backbone"))[0].model.embed_tokens.bits == 2
    q = predict.load(out)
    assert isinstance(q.model.backbone.decoder.embed_tokens, RowPrecisionEmbedding)
    rows = q.predict("TERRa", [{"idx": 0, "premise": "а", "hypothesis": "б"}])
    assert rows[0]["label"] in ("entailment", "not_entailment")


def test_every_linear_at_8_bits_beside_a_low_table(lora_run, tmp_path):  # noqa: F811
    """q8-gptq-long-e3-rows-bc's shape on the tiny run (groups of 32 where it has 128): every
    Linear GPTQ'd at 8 bits, the table at 3 with the train rows at 8, bias correction. mlx-lm
    loads it so, module by module, and with the same table and rows the heads end nearer the
    float run's than with 4-bit Linears: what the recipe buys with its bits."""
    import mlx.nn as nn
    from mlx_lm import load

    from mlx_rsg import predict
    from mlx_rsg.quant import distill

    run, data = lora_run
    common = ('group_size = 32\nmethod = "gptq"\nscale_dtype = "float16"\n[overrides]\n'
              '"embed_tokens" = { bits = 3 }\n[calibration]\nexamples = 16\nmax_len = 64\n'
              "[bias_correction]\nunits = 8\n" + ROWS)  # fmt: skip
    outs = {bits: quantize(run, tmp_path / f"q{bits}", calib_data=data,
                           recipe=_recipe(tmp_path / f"q{bits}.toml", f"bits = {bits}\n" + common))
            for bits in (8, 4)}  # fmt: skip
    model = load(str(outs[8] / "backbone"))[0]
    linears = [m.bits for m in model.modules() if isinstance(m, nn.QuantizedLinear)]
    assert linears and set(linears) == {8} and model.model.embed_tokens.bits == 3
    manifest = json.loads((outs[8] / "mlx_rsg.json").read_text())
    assert manifest["embedding_rows"]["rows"] > 0 and manifest["bias_correction"]
    ref = predict.load(run, calibrated=False)
    records, _ = distill.draw_records(data, list(ref.model.heads), 8, 0, 0)
    kl = {b: _head_kl(predict.load(out, calibrated=False), ref, records) for b, out in outs.items()}
    assert kl[8] < 0.25 * kl[4], kl


def test_choose_spends_the_reserved_bits_first():
    """`sensitivity.choose` with bits reserved raises fewer modules, never past the budget, and
    never one it is told to keep (the embedding, whose rows `[embedding_rows]` raises)."""
    from mlx_rsg.quant.recipe import Recipe
    from mlx_rsg.quant.sensitivity import bits_per_weight, choose

    recipe = Recipe(name="t", bits=4, group_size=64)
    sizes = {f"m{i}": 1000 for i in range(10)}
    sens = {f"m{i}": 10.0 - i for i in range(10)}
    budget = 6.0
    free = choose(sens, sizes, recipe, 0, budget, 8)
    reserved = 1000 * 4  # what raising one module to 8 bits adds
    paid = choose(sens, sizes, recipe, 0, budget, 8, reserved)
    assert len(paid) < len(free) and set(paid) <= set(free)
    widths = {p: {"bits": 8 if p in paid else 4, "group_size": 64} for p in sizes}
    assert bits_per_weight(sizes, widths, 0, 32, reserved) <= budget
    kept = choose(sens, sizes, recipe, 0, budget, 8, reserved, keep=("m0",))
    assert "m0" in paid and "m0" not in kept and len(kept) == len(paid)


@pytest.mark.parametrize("damage, needle", [
    (lambda f, mx: mx.save_safetensors(str(f), {**mx.load(str(f)), "ids": mx.array([10**6])},
                                       metadata={"path": "model.embed_tokens", "bits": "8"}),
     "do not fit"),
    (lambda f, mx: mx.save_safetensors(str(f), mx.load(str(f)),
                                       metadata={"path": "model.norm", "bits": "8"}),
     "field 'path'"),
    (lambda f, mx: mx.save_safetensors(str(f), {"ids": mx.array([1])}), "not an embedding-rows"),
])  # fmt: skip
def test_a_damaged_rows_file_is_one_line_naming_it(raised, tmp_path, damage, needle):
    import shutil

    import mlx.core as mx

    from mlx_rsg import predict
    from mlx_rsg.model.row_embedding import FILE

    copy = tmp_path / "copy"
    shutil.copytree(raised, copy)
    damage(copy / "backbone" / FILE, mx)
    with pytest.raises(UserError) as e:
        predict.load(copy, verify=False)
    msg = str(e.value)
    assert "\n" not in msg and str(copy / "backbone" / FILE) in msg and needle in msg, msg


@pytest.mark.parametrize("text, needle", [
    ("bits = 4\n[embedding_rows]\nbits = 4\n", "'embedding_rows.bits': 4 is not one of"),
    ("bits = 4\n[embedding_rows]\nrows = 4\n", "'embedding_rows.rows': not one of bits"),
    ('bits = 4\n[overrides]\n"embed_tokens" = { bits = 8 }\n[embedding_rows]\nbits = 8\n',
     "above the embedding's 8"),
])  # fmt: skip
def test_bad_embedding_rows_tables(tmp_path, text, needle):
    from mlx_rsg.quant.recipe import resolve_recipe

    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        resolve_recipe(recipe=_recipe(tmp_path / "r.toml", text))


def test_embedding_rows_need_calibration_data(lora_run, tmp_path):  # noqa: F811
    run, _ = lora_run
    with pytest.raises(UserError, match="embedding rows.*--calib-data"):
        quantize(run, tmp_path / "out", recipe=_recipe(tmp_path / "r.toml", "bits = 4\n" + ROWS),
                 group_size=32)  # fmt: skip
    assert not (tmp_path / "out").exists()
