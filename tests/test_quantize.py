"""mlx-rsg quantize on the tiny random Gemma 3: round trips through mlx-lm's loader, error bounds
against float32, run directories, and one-line errors for bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_model import tiny_model_dir  # noqa: F401

from mlx_rsg.quant.quantize import quantize

# Every width of the tiny model (32 hidden, 64 FFN) is a multiple of 32, so all layers quantize.
G = 32


@pytest.mark.parametrize("recipe", ["q8", "q4", "q4-mixed"])
def test_model_dir_round_trip_through_mlx_lm_load(tiny_model_dir, tmp_path, recipe):  # noqa: F811
    import mlx.core as mx
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
    # a model directory stores its backbone only: the same bits per weight, and its files' bytes
    stored = manifest["stored"]
    assert stored["bits_per_weight"] == manifest["bits_per_weight"]
    weights = [v for f in out.glob("*.safetensors") for v in mx.load(str(f)).values()]
    assert stored["backbone"]["bytes"] == sum(v.nbytes for v in weights)
    assert tokenizer.encode("Мама мыла раму") == load(str(tiny_model_dir))[1].encode(
        "Мама мыла раму"
    )


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):  # noqa: F811
    """A real (seconds-long) LoRA training run on the tiny model and synthetic RSG data."""
    from tiny_model import tiny_train_config, write_tiny_rsg

    from mlx_rsg import train as T

    root = tmp_path_factory.mktemp("q-run")
    data = write_tiny_rsg(root / "rsg", n_train=16, n_val=8)
    cfg = tiny_train_config(tasks=("TERRa", "PARus"), method="lora", freeze_layers=0, epochs=1)
    T.train(tiny_model_dir, data, root / "run", cfg, log=lambda m: None)
    return root / "run", data


Q2 = "bits = 2\ngroup_size = 32\n"  # 2 bits: quantization moves the tiny run's heads a lot


@pytest.fixture(scope="module")
def rounded_2bit(lora_run, tmp_path_factory):
    """The LoRA run rounded to 2 bits (recipe Q2): what the calibrated levers are compared with."""
    root = tmp_path_factory.mktemp("q2")
    return quantize(lora_run[0], root / "q2", recipe=_recipe(root / "q2.toml", Q2))


def _val_logits(predictor, data: Path) -> dict:
    import numpy as np

    from mlx_rsg.data import load_split

    out = {}
    for task in ("TERRa", "PARus"):
        _, _, scores = predictor.predictions(task, load_split(data, task, "val"))
        out[task] = np.asarray(scores, dtype=np.float64)
    return out


def test_run_dir_round_trip(lora_run, tmp_path):
    """The quantized run is a standalone run: LoRA fused into a q8 backbone/ that mlx-lm loads,
    heads float32 alone in trainable.safetensors, and predict gives exactly the logits of the
    fp32 run with its LoRA fused and its backbone quantized in memory."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm import load

    from mlx_rsg import predict
    from mlx_rsg.model.methods.lora import fuse_lora
    from mlx_rsg.quant.recipe import resolve_recipe
    from mlx_rsg.quant.rtn import quantize_backbone

    run, data = lora_run
    out = quantize(run, tmp_path / "q8", bits=8, group_size=G, log=print)
    info = json.loads((out / "run.json").read_text())
    assert info["classifier"]["method"] == "freeze"
    assert info["classifier"]["freeze_layers"] == 2
    assert info["fused"]["from"] == "lora" and info["fused"]["lora_layers_fused"] > 0
    assert info["backbone"]["copied"] is True
    assert info["quantized"]["recipe"]["bits"] == 8
    heads = mx.load(str(out / "trainable.safetensors"))
    assert heads and all(k.startswith("heads.") for k in heads)
    assert all(v.dtype == mx.float32 for v in heads.values())
    model, _ = load(str(out / "backbone"))
    assert model.model.layers[1].self_attn.q_proj.bits == 8

    ref = predict.load(run)
    assert fuse_lora(ref.model) == info["fused"]["lora_layers_fused"]
    quantize_backbone(ref.model.lm, ref.model.backbone.config, resolve_recipe(8, G))
    want, got = _val_logits(ref, data), _val_logits(predict.load(out), data)
    for task in want:
        np.testing.assert_allclose(got[task], want[task], rtol=1e-5, atol=1e-5, err_msg=task)


@pytest.mark.parametrize("method", ["heads", "freeze"])
def test_a_run_on_an_inner_block_quantizes_as_it_was(tiny_model_dir, tmp_path, method):  # noqa: F811
    """`heads --feature-layer 1` (what the quickstart trains) stays a heads run reading block 1
    once quantized (no block was trained, nothing is merged), `freeze --feature-layer 1` a run
    of block 1 as trained, with the fp32 run's logits on a q8 backbone that holds only block 1:
    the block above it never runs, so it is not stored (config and weights agree, mlx-lm loads
    it, the file is smaller)."""
    import numpy as np
    from mlx_lm import load
    from tiny_model import tiny_train_config, write_tiny_rsg

    from mlx_rsg import predict
    from mlx_rsg import train as T
    from mlx_rsg.quant.recipe import resolve_recipe
    from mlx_rsg.quant.rtn import quantize_backbone

    data = write_tiny_rsg(tmp_path / "rsg", n_train=16, n_val=8)
    cfg = tiny_train_config(tasks=("TERRa", "PARus"), method=method, feature_layer=1,
                            freeze_layers=0, epochs=1)  # fmt: skip
    T.train(tiny_model_dir, data, tmp_path / "run", cfg, log=lambda m: None)
    out = quantize(tmp_path / "run", tmp_path / "q8", bits=8, group_size=G)
    whole = quantize(tiny_model_dir, tmp_path / "q8-model", bits=8, group_size=G)
    classifier = json.loads((out / "run.json").read_text())["classifier"]
    assert (classifier["method"], classifier["feature_layer"]) == (method, 1)
    assert json.loads((out / "mlx_rsg.json").read_text())["blocks_dropped"] == 1
    assert json.loads((out / "backbone/config.json").read_text())["num_hidden_layers"] == 1
    assert len(load(str(out / "backbone"))[0].model.layers) == 1
    size = {p: (p / "model.safetensors").stat().st_size for p in (out / "backbone", whole)}
    assert size[out / "backbone"] < size[whole]
    ref = predict.load(tmp_path / "run")
    quantize_backbone(ref.model.lm, ref.model.backbone.config, resolve_recipe(8, G))
    got = predict.load(out)
    assert got.model.n_blocks == got.model.backbone.num_layers == 1
    want, got = _val_logits(ref, data), _val_logits(got, data)
    for task in want:
        np.testing.assert_allclose(got[task], want[task], rtol=1e-5, atol=1e-5, err_msg=task)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_linear_within_affine_error(tiny_model_dir, tmp_path, bits):  # noqa: F811
    """Each loaded QuantizedLinear reproduces its fp32 Linear within the affine rounding bound:
    round-to-nearest errors are uniform in +-step/2 (mean square step^2/12; MLX nudges a group's
    edge values so that its zero point is exact, which can cost up to one step for those), and the
    output's relative error on random inputs is about the weight's (E|dW x|^2 = |dW|_F^2)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load

    fp32, _ = load(str(tiny_model_dir))
    out = quantize(tiny_model_dir, tmp_path / "q", bits=bits, group_size=G, log=print)
    q, _ = load(str(out))
    ref = dict(fp32.named_modules())
    layers = [(n, m) for n, m in q.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of the two blocks
    for name, m in layers:
        w = ref[name].weight
        dq = mx.dequantize(m.weight, m.scales, m.biases, G, bits)
        step = mx.abs(mx.repeat(m.scales, G, axis=-1))  # MLX scales can be negative
        err = mx.abs(dq - w)
        assert (err <= step * (1 + 1e-5)).all().item(), name
        assert (err.square().mean() <= 1.5 * (step.square() / 12).mean()).item(), name
        xi = mx.random.normal((64, w.shape[1]), key=mx.random.key(1))
        rel_w = (mx.linalg.norm(dq - w) / mx.linalg.norm(w)).item()
        y, yq = ref[name](xi), m(xi)
        rel_y = (mx.linalg.norm(yq - y) / mx.linalg.norm(y)).item()
        assert rel_w < {8: 0.01, 4: 0.15}[bits], (name, rel_w)  # ~4/(2^b-1)/sqrt(12) for N(0,1)
        assert rel_y < 2 * rel_w, (name, rel_y, rel_w)


def _rel_hidden_error(bb, ref_h, tokens) -> float:
    import mlx.core as mx

    from mlx_rsg.model.backbone import hidden_states

    h = hidden_states(bb, tokens)
    return (mx.linalg.norm(h - ref_h, axis=-1) / mx.linalg.norm(ref_h, axis=-1)).mean().item()


@pytest.mark.parametrize("bits", [8, 4])
def test_model_error_matches_noise_of_same_size(tiny_model_dir, tmp_path, bits):  # noqa: F811
    """Whole-model hidden states of q8/q4 vs fp32. A random tiny model amplifies any weight
    perturbation several-fold, so a fixed tolerance would be arbitrary; instead the reference is
    the same model with Gaussian noise of exactly the quantization error's norm added to every
    matrix. Rounding must hurt no more than that noise (1.5x margin), and must not be a no-op."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_rsg.model.backbone import hidden_states, load_backbone

    bb = load_backbone(tiny_model_dir)
    tokens = mx.random.randint(0, 400, (4, 24), key=mx.random.key(1))
    ref_h = hidden_states(bb, tokens)
    out = quantize(tiny_model_dir, tmp_path / "q", bits=bits, group_size=G, log=print)
    err_q = _rel_hidden_error(load_backbone(out), ref_h, tokens)

    weights = {k: v for k, v in tree_flatten(bb.model.parameters()) if v.ndim == 2}
    noise_errs = []
    for seed in range(3):
        noisy = load_backbone(tiny_model_dir)
        new = []
        for i, (k, w) in enumerate(sorted(weights.items())):
            e = mx.linalg.norm(mx.dequantize(*mx.quantize(w, G, bits), G, bits) - w)
            n = mx.random.normal(w.shape, key=mx.random.key(100 * seed + i))
            new.append((k, w + n * e / mx.linalg.norm(n)))
        noisy.model.load_weights(new, strict=False)
        noise_errs.append(_rel_hidden_error(noisy, ref_h, tokens))
    noise = sum(noise_errs) / len(noise_errs)
    assert 0.5 * noise < err_q < 1.5 * noise, (err_q, noise_errs)


# ---------------------------------------------------------------- 16-bit scales, bias correction


def _recipe(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_16_bit_scales_halve_the_scales_and_keep_the_outputs(tiny_model_dir, tmp_path):  # noqa: F811
    """`scale_dtype = "float16"`: the files hold float16 scales and biases, mlx-lm loads them,
    bits per weight drop by 32 / group size on every quantized weight, and the hidden states stay
    within float16's rounding of the float32-scaled model's."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm import load

    from mlx_rsg.model.backbone import hidden_states, load_backbone

    recipe = _recipe(tmp_path / "q4h.toml", 'name = "q4h"\nbits = 4\nscale_dtype = "float16"\n')
    full = quantize(tiny_model_dir, tmp_path / "q4", recipe="q4", group_size=G)
    half = quantize(tiny_model_dir, tmp_path / "q4h", recipe=recipe, group_size=G)
    weights = mx.load(str(half / "model.safetensors"))
    scales = {k: v.dtype for k, v in weights.items() if k.endswith((".scales", ".biases"))}
    assert scales and set(scales.values()) == {mx.float16}
    bpw = {p.name: json.loads((p / "mlx_rsg.json").read_text())["bits_per_weight"]
           for p in (full, half)}  # fmt: skip
    # every weight of the tiny model is quantized (widths are multiples of 32)
    assert bpw["q4"] - bpw["q4h"] == pytest.approx(32 / G, abs=0.05), bpw
    model, _ = load(str(half))
    assert model.model.layers[0].mlp.up_proj.scales.dtype == mx.float16
    tokens = mx.array([[2, 17, 33, 5, 90, 7]])
    a, b = (np.array(hidden_states(load_backbone(p), tokens)) for p in (full, half))
    assert a.dtype == b.dtype == np.float32
    assert np.abs(a - b).max() < 1e-2 * np.abs(a).max()


def test_bias_correction_gives_the_quantized_heads_the_float_means(lora_run, rounded_2bit,
                                                                    tmp_path):
    """A recipe with [bias_correction] (on a 2-bit backbone, so quantization moves the heads a
    lot): on the sampled train records the corrected heads' mean logits equal the float run's,
    which the uncorrected 2-bit run's do not; the shifts are in the manifest; no label is read
    (the records' labels are removed and the result is the same)."""
    import dataclasses

    import numpy as np

    from mlx_rsg import predict
    from mlx_rsg.quant import bias_correction as bc

    run, data = lora_run
    plain = rounded_2bit
    fixed = quantize(run, tmp_path / "q2bc", calib_data=data, recipe=_recipe(
        tmp_path / "q2bc.toml", Q2 + "[bias_correction]\nunits = 12\nseed = 3\n"))
    manifest = json.loads((fixed / "mlx_rsg.json").read_text())["bias_correction"]
    # a PARus record is two units (its choices): 6 records hold 12
    assert manifest["records"] == {"PARus": 6, "TERRa": 12}
    assert manifest["units"] == {"PARus": 12, "TERRa": 12}
    ref = predict.load(run, calibrated=False)
    records = bc.sample_records(data, list(ref.model.heads), 12, 3)
    want = bc.head_means(ref.model, ref.tokenizer, records)
    for out, close in ((fixed, True), (plain, False)):
        q = predict.load(out, calibrated=False)
        got = bc.head_means(q.model, q.tokenizer, records)
        gap = max(np.abs(got[t] - want[t]).max() for t in want)
        assert (gap < 1e-4) == close, (out.name, gap)
    assert max(abs(s) for s in manifest["shifts"]["TERRa"]) > 1e-3
    unlabelled = {t: [dataclasses.replace(r, label=None) for r in recs]
                  for t, recs in records.items()}  # fmt: skip
    assert {t: m.tolist() for t, m in bc.head_means(ref.model, ref.tokenizer, unlabelled).items()} \
        == {t: m.tolist() for t, m in want.items()}


def _head_kl(predictor, teacher, records: dict) -> float:
    """Mean KL(teacher || predictor) per example over `records`' units, recomputed here."""
    from mlx_rsg.quant import distill

    predictor.model.eval()
    teacher.model.eval()
    total, n = 0.0, 0
    for batch in distill.task_batches(teacher.model, teacher.tokenizer, records, 4):
        t = distill.log_probs(teacher.model(batch), batch)
        s = distill.log_probs(predictor.model(batch), batch)
        total += distill.kl_sum(s, t).item()
        n += len(set(batch.groups.tolist())) if batch.groups is not None else len(batch.keys)
    return total / n


def test_distillation_lowers_the_heads_kl_and_keeps_the_codes(lora_run, rounded_2bit, tmp_path):
    """[distill] on a 2-bit backbone: the KL between the float run's heads and the quantized
    ones, recomputed here on the training records and on held-out ones, falls below plain
    round-to-nearest's; only scales and biases moved (the codes are round-to-nearest's, the
    heads the float run's); the manifest says what it measured; mlx-lm loads the backbone."""
    import mlx.core as mx
    from mlx_lm import load

    from mlx_rsg import predict
    from mlx_rsg.quant import distill

    run, data = lora_run
    plain = rounded_2bit
    learned = quantize(run, tmp_path / "q2d", calib_data=data, recipe=_recipe(
        tmp_path / "q2d.toml", Q2 + "[distill]\nunits = 8\nholdout = 6\nepochs = 4\n"
        "batch_size = 4\nlr = 0.0003\nseed = 1\n"))  # fmt: skip
    manifest = json.loads((learned / "mlx_rsg.json").read_text())["distill"]
    assert manifest["units"] == {"PARus": 8, "TERRa": 8}
    assert manifest["holdout_units"] == {"PARus": 6, "TERRa": 6}
    assert manifest["steps"] == 4 * 4 and manifest["trainable"] > 0 and manifest["kept_epoch"] > 0
    ref = predict.load(run, calibrated=False)
    train, held = distill.draw_records(data, list(ref.model.heads), 8, 6, 1)
    assert not {r.idx for r in train["TERRa"]} & {r.idx for r in held["TERRa"]}
    kl = {name: {p: _head_kl(predict.load(out, calibrated=False), ref, recs)
                 for p, recs in (("train", train), ("holdout", held))}
          for name, out in (("plain", plain), ("learned", learned))}  # fmt: skip
    assert kl["learned"]["train"] < 0.5 * kl["plain"]["train"], kl
    assert kl["learned"]["holdout"] < kl["plain"]["holdout"], kl
    assert manifest["kl"]["train"]["after"]["all"] == pytest.approx(kl["learned"]["train"],
                                                                    rel=1e-3)  # fmt: skip
    a = mx.load(str(plain / "backbone" / "model.safetensors"))
    b = mx.load(str(learned / "backbone" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        same = mx.array_equal(a[key], b[key]).item()
        assert same == (not key.endswith((".scales", ".biases"))), key
    heads = mx.load(str(learned / "trainable.safetensors"))
    for key, value in mx.load(str(plain / "trainable.safetensors")).items():
        assert mx.array_equal(value, heads[key]).item(), key
    load(str(learned / "backbone"))


def test_distillation_that_does_not_help_keeps_the_rounded_model(lora_run, rounded_2bit, tmp_path):
    """A learning rate far too large makes every epoch worse on the held-out units: the rounded
    scales are kept, bit for bit round-to-nearest's."""
    import mlx.core as mx

    run, data = lora_run
    plain = rounded_2bit
    wild = quantize(run, tmp_path / "q2w", calib_data=data, recipe=_recipe(
        tmp_path / "q2w.toml", Q2 + "[distill]\nunits = 8\nholdout = 6\nepochs = 2\nlr = 5.0\n"))
    manifest = json.loads((wild / "mlx_rsg.json").read_text())["distill"]
    assert manifest["kept_epoch"] == 0
    assert all(e["all"] > manifest["kl"]["holdout"]["before"]["all"]
               for e in manifest["kl"]["holdout"]["by_epoch"][1:])  # fmt: skip
    a = mx.load(str(plain / "backbone" / "model.safetensors"))
    b = mx.load(str(wild / "backbone" / "model.safetensors"))
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)


def test_sensitivity_raises_the_modules_that_move_the_heads_within_the_budget(lora_run,
                                                                              rounded_2bit,
                                                                              tmp_path):
    """[sensitivity] on a 2-bit backbone with a budget between all-2-bit and all-8-bit: the
    modules it raises to 8 bits are those of highest estimated sensitivity, the written model's
    bits per weight are within the budget (and mlx-lm loads its per-path widths), and the estimate
    ranks truly: raising the module of the largest estimated effect alone lowers the heads' KL
    more than raising the one of the smallest alone."""
    from mlx_lm import load

    from mlx_rsg import predict
    from mlx_rsg.quant import distill

    run, data = lora_run
    plain = rounded_2bit
    low = json.loads((plain / "mlx_rsg.json").read_text())["bits_per_weight"]
    budget = round(low + 1.0, 3)
    mixed = quantize(run, tmp_path / "q2s", calib_data=data, recipe=_recipe(
        tmp_path / "q2s.toml", Q2 + f"[sensitivity]\nunits = 8\nbudget = {budget}\n"))
    manifest = json.loads((mixed / "mlx_rsg.json").read_text())
    sens, raised = manifest["sensitivity"]["sensitivity"], manifest["sensitivity"]["raised"]
    assert raised and len(raised) < len(sens)
    assert low < manifest["bits_per_weight"] <= budget
    config = json.loads((mixed / "backbone" / "config.json").read_text())["quantization"]
    assert {p for p in sens if config.get(p, {}).get("bits") == 8} == set(raised)
    load(str(mixed / "backbone"))
    sizes = manifest["sensitivity"]["parameters"]  # sensitivity is per million parameters
    ranked = sorted(sens, key=lambda p: sens[p] * sizes[p], reverse=True)
    ref = predict.load(run, calibrated=False)
    records, _ = distill.draw_records(data, list(ref.model.heads), 8, 0, 0)
    kl = {}
    for name in (ranked[0], ranked[-1]):
        out = quantize(run, tmp_path / name, recipe=_recipe(
            tmp_path / f"{name}.toml", Q2 + f'[overrides]\n"{name}" = {{ bits = 8 }}\n'))
        kl[name] = _head_kl(predict.load(out, calibrated=False), ref, records)
    assert kl[ranked[0]] < kl[ranked[-1]], (kl, sens)


def test_sensitivity_then_gptq_then_bias_correction(lora_run, rounded_2bit, tmp_path):
    """q4-gptq-long-sens-bc's combination, on the tiny run at 2 bits: the modules [sensitivity]
    raises are rounded to nearest at 8 bits, GPTQ quantizes the rest at 2, the heads' biases are
    corrected, the bits per weight stay within the budget, and the run predicts."""
    from mlx_lm import load

    from mlx_rsg import predict

    run, data = lora_run
    low = json.loads((rounded_2bit / "mlx_rsg.json").read_text())["bits_per_weight"]
    budget = round(low + 1.0, 3)
    out = quantize(run, tmp_path / "q2gs", calib_data=data, recipe=_recipe(
        tmp_path / "q2gs.toml", Q2 + 'method = "gptq"\n[calibration]\nexamples = 16\n'
        f"max_len = 64\n[sensitivity]\nunits = 8\nbudget = {budget}\n"
        "[bias_correction]\nunits = 8\n"))  # fmt: skip
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    raised = manifest["sensitivity"]["raised"]
    assert manifest["method"] == "gptq" and raised and manifest["bias_correction"]
    assert low < manifest["bits_per_weight"] <= budget
    config = json.loads((out / "backbone" / "config.json").read_text())["quantization"]
    assert {p for p in manifest["sensitivity"]["sensitivity"]
            if config.get(p, {}).get("bits") == 8} == set(raised)  # fmt: skip
    load(str(out / "backbone"))  # mlx-lm reads the per-path widths
    rows = predict.load(out).predict("TERRa", [{"idx": 0, "premise": "а", "hypothesis": "б"}])
    assert rows[0]["label"] in ("entailment", "not_entailment")


@pytest.mark.parametrize("table, named", [("distill", "distill"),
                                          ("bias_correction", "bias correction")])
def test_calibrated_levers_need_calibration_data(lora_run, tmp_path, table, named):
    run, _ = lora_run
    recipe = _recipe(tmp_path / "r.toml", f"bits = 4\n[{table}]\nunits = 4\n")
    _one_error_line(_cli(run, "--recipe", recipe, "--group-size", 32, "-o", tmp_path / "out"),
                    named, "--calib-data")  # fmt: skip
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- CLI and bad inputs


def _cli(*args):
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    return CliRunner().invoke(main, ["quantize", *map(str, args)])


def _one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [s for s in result.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_cli_quantizes_and_refuses_existing_out(tiny_model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "q4"
    r = _cli(tiny_model_dir, "--bits", 4, "--group-size", 32, "-o", out)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 4
    before = (out / "model.safetensors").stat().st_mtime_ns
    _one_error_line(_cli(tiny_model_dir, "--bits", 8, "--group-size", 32, "-o", out), "exists")
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    r = _cli(tiny_model_dir, "--bits", 8, "--group-size", 32, "-o", out, "--force")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8


@pytest.mark.parametrize(
    "damage,needles",
    [
        ("no-config", ["config.json"]),
        ("bad-json", ["config.json:", "invalid JSON"]),
        ("wrong-hidden", ["cannot load the model"]),
        ("truncated", ["truncated or corrupt safetensors file"]),
        ("no-weights", ["no *.safetensors"]),
        ("quantized", ["field 'quantization'", "already quantized"]),
    ],
)
def test_cli_corrupt_or_mismatched_model_dir(tiny_model_dir, tmp_path, damage, needles):  # noqa: F811
    src = _copy_model(tiny_model_dir, tmp_path / "m")
    cfg = src / "config.json"
    weights = src / "model.safetensors"
    if damage == "no-config":
        cfg.unlink()
    elif damage == "bad-json":
        cfg.write_text('{"model_type": "gemma3_text",\n  "hidden_size": }')
    elif damage == "wrong-hidden":
        c = json.loads(cfg.read_text())
        c["hidden_size"] = 64
        cfg.write_text(json.dumps(c))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "quantized":
        src = quantize(tiny_model_dir, tmp_path / "already", bits=8, group_size=G, log=print)
    out = tmp_path / "out"
    _one_error_line(_cli(src, "--bits", 8, "--group-size", 32, "-o", out), *needles)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))  # nothing partial left behind


@pytest.mark.parametrize(
    "args,needles",
    [
        ([], ["--bits", "--recipe"]),
        (["--recipe", "q3-nonexistent"], ["q3-nonexistent"]),
        (["--recipe", "q4", "--group-size", "128"], ["multiple of group size 128"]),
        (["--recipe", "{tmp}/none.toml"], ["none.toml", "no such quantize recipe file"]),
        (["--recipe", "{tmp}/dtype.toml"], ["dtype.toml", "scale_dtype", "float64"]),
        (["--recipe", "{tmp}/bc.toml"], ["bc.toml", "bias_correction.units", "an int >= 0"]),
        (["--recipe", "{tmp}/zero.toml"], ["zero.toml", "bias_correction.units", ">= 1"]),
        (["--recipe", "{tmp}/lr.toml"], ["lr.toml", "distill.lr", "a number > 0"]),
        (["--recipe", "{tmp}/epoch.toml"], ["epoch.toml", "distill.epoch", "not one of"]),
        (["--recipe", "{tmp}/high.toml"], ["high.toml", "sensitivity.high_bits", "above 4"]),
        (["--recipe", "{tmp}/typo.toml"], ["typo.toml", "field 'bias_corection'", "not a recipe"]),
        (["--recipe", "{tmp}/sub.toml"], ["sub.toml", "substitution", "'bits': 7 is not one of"]),
        (["--recipe", "{tmp}/subkey.toml"], ["subkey.toml", "'substitution.mode': not one of"]),
    ],
)
def test_cli_bad_recipe_choices(tiny_model_dir, tmp_path, args, needles):  # noqa: F811
    (tmp_path / "dtype.toml").write_text('bits = 4\nscale_dtype = "float64"\n')
    (tmp_path / "bc.toml").write_text('bits = 4\n[bias_correction]\nunits = "all"\n')
    (tmp_path / "zero.toml").write_text("bits = 4\n[bias_correction]\nunits = 0\n")
    (tmp_path / "lr.toml").write_text("bits = 4\n[distill]\nlr = nan\n")
    (tmp_path / "epoch.toml").write_text("bits = 4\n[distill]\nepoch = 2\n")
    (tmp_path / "high.toml").write_text("bits = 4\n[sensitivity]\nhigh_bits = 4\n")
    (tmp_path / "typo.toml").write_text("bits = 4\n[bias_corection]\nunits = 64\n")
    (tmp_path / "sub.toml").write_text("bits = 8\n[substitution]\nbits = 7\n")
    (tmp_path / "subkey.toml").write_text('bits = 8\n[substitution]\nmode = "affine"\n')
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = tmp_path / "out"
    _one_error_line(_cli(tiny_model_dir, *args, "-o", out), *needles)
    assert not out.exists()


def test_cli_missing_source(tmp_path):
    _one_error_line(_cli(tmp_path / "nope", "--bits", 8, "-o", tmp_path / "o"), "nope")


def test_cli_run_dir_with_changed_backbone(lora_run, tmp_path):
    """A run whose (referenced, not copied) backbone weights changed since training is refused."""
    import shutil

    run, _ = lora_run
    moved = shutil.copytree(run, tmp_path / "run")
    info = json.loads((moved / "run.json").read_text())
    assert info["backbone"]["copied"] is False
    info["backbone"]["sha256"] = {"model.safetensors": "0" * 64}
    (moved / "run.json").write_text(json.dumps(info))
    out = tmp_path / "out"
    _one_error_line(_cli(moved, "--bits", 8, "--group-size", 32, "-o", out), "backbone.sha256")
    assert not out.exists()
