"""`train --dtype bfloat16`: the backbone computes in bfloat16, the heads and the loss in float32,
and the trained weights are learned as float32 masters (model/precision.py)."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from tiny_model import tiny_model_dir, tiny_rsg_dir, tiny_train_config  # noqa: F401

import mlx_rsg
from mlx_rsg import train as T
from mlx_rsg.data import load_split
from mlx_rsg.errors import UserError
from mlx_rsg.model import precision
from mlx_rsg.model.backbone import load_backbone, load_tokenizer
from mlx_rsg.model.batching import encode_units, make_batches
from mlx_rsg.model.classifier import RSGClassifier
from mlx_rsg.model.config import ClassifierConfig
from mlx_rsg.model.features import PrefixCache
from mlx_rsg.predict import evaluate
from mlx_rsg.tasks import make_units
from mlx_rsg.train import loss_scale

# Per-batch training losses of a bfloat16 run against the float32 run of the same batches. The
# tiny model's losses are ~0.4-1.1; bfloat16 rounds every activation to ~3 significant digits and
# the two runs' weights drift apart over 48 steps at lr 1e-3 (measured: mean |difference| 0.006,
# largest 0.05, on freeze).
MEAN_TOLERANCE, MAX_TOLERANCE = 0.02, 0.1


def losses(run: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines() if x]
    return [(r["batch"], r["task"], r["loss"]) for r in rows]


@pytest.fixture(scope="module", params=["freeze", "lora"])
def runs(request, tiny_model_dir, tiny_rsg_dir, tmp_path_factory):  # noqa: F811
    """(float32 run, bfloat16 run) of the same configuration."""
    root = tmp_path_factory.mktemp(request.param)
    out = []
    for dtype in ("float32", "bfloat16"):
        cfg = tiny_train_config(dtype=dtype, epochs=2, method=request.param)
        T.train(tiny_model_dir, tiny_rsg_dir, root / dtype, cfg, log=lambda m: None)
        out.append(root / dtype)
    return tuple(out)


def test_bfloat16_losses_track_float32(runs):
    f32, bf16 = (losses(r) for r in runs)
    assert [r[:2] for r in bf16] == [r[:2] for r in f32]  # the same batches
    diff = np.abs(np.array([r[2] for r in bf16]) - np.array([r[2] for r in f32]))
    assert diff.mean() < MEAN_TOLERANCE and diff.max() < MAX_TOLERANCE, (diff.mean(), diff.max())
    assert diff.max() > 0  # it did run in another precision


def test_masters_are_saved_in_float32_and_the_model_runs_them_rounded(runs):
    _, run = runs
    saved = mx.load(str(run / "trainable.safetensors"))
    assert all(v.dtype == mx.float32 for v in saved.values())
    model = mlx_rsg.load(run).model
    params = dict(tree_flatten(model.parameters()))
    backbone = [k for k in saved if not k.startswith("heads.")]
    assert backbone
    # the masters hold more than bfloat16 can: Adam's small steps were kept
    assert any(mx.any(saved[k] != saved[k].astype(mx.bfloat16).astype(mx.float32)).item()
               for k in backbone)  # fmt: skip
    for k in backbone:
        assert params[k].dtype == mx.bfloat16, k
        assert mx.array_equal(params[k], saved[k].astype(mx.bfloat16)), k
    assert params["lm.model.embed_tokens.weight"].dtype == mx.bfloat16  # frozen: cast too
    assert all(params[k].dtype == mx.float32 for k in params if k.startswith("heads."))


def test_a_reloaded_bfloat16_run_scores_what_training_scored(runs, tiny_rsg_dir):  # noqa: F811
    _, run = runs
    metrics = json.loads((run / "metrics.json").read_text())
    kept = metrics["history"][metrics["best"]["epoch"] - 1]["tasks"]
    predictor = mlx_rsg.load(run, calibrated=False)
    records = {t: load_split(tiny_rsg_dir, t, "val") for t in kept}
    got = evaluate(predictor.model, predictor.tokenizer, records, batch_size=8)["tasks"]
    assert {t: got[t]["score"] for t in kept} == {t: s["score"] for t, s in kept.items()}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_resume_in_half_precision_equals_the_uninterrupted_run(tiny_model_dir, tiny_rsg_dir,  # noqa: F811
                                                               tmp_path, dtype):  # fmt: skip
    """The checkpoint holds the float32 masters (resuming from rounded weights would not) and,
    in float16, the loss scale and its counters."""
    cfg = tiny_train_config(dtype=dtype, epochs=2, checkpoint_every=2)
    full, run = tmp_path / "full", tmp_path / "stopped"
    T.train(tiny_model_dir, tiny_rsg_dir, full, cfg, log=lambda m: None)
    stop = len(losses(full)) // 2 + 3  # mid epoch 2, past a mid-epoch checkpoint
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, stop_after_batches=stop, log=lambda m: None)
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, resume=True, log=lambda m: None)
    assert losses(run) == losses(full)
    got = mx.load(str(run / "trainable.safetensors"))
    want = mx.load(str(full / "trainable.safetensors"))
    assert all(mx.array_equal(got[k], want[k]).item() for k in want)


@pytest.mark.parametrize("on_disk", [False, True])
def test_the_prefix_cache_keeps_rows_in_the_compute_dtype(tiny_model_dir, tiny_rsg_dir, tmp_path,  # noqa: F811
                                                          on_disk):  # fmt: skip
    bb = load_backbone(tiny_model_dir)
    cfg = ClassifierConfig(method="freeze", freeze_layers=1, max_len=64, dtype="bfloat16")
    model = RSGClassifier(bb, cfg, {"TERRa": 2})
    tokenizer = load_tokenizer(tiny_model_dir)
    units = make_units("TERRa", load_split(tiny_rsg_dir, "TERRa", "val"), train=False)
    cache = PrefixCache(model, cache_dir=tmp_path if on_disk else None)
    for _ in range(2):  # stored, then read back
        for batch in make_batches(encode_units(units, tokenizer, 64), 8, rng=None):
            got = cache.prefix(batch)
            assert got.dtype == mx.bfloat16
            want = model.prefix(batch.tokens)
            for j, n in enumerate(batch.lengths.tolist()):
                assert mx.array_equal(got[j, :n], want[j, :n]).item()
    assert cache.hits == len(units) and cache.misses == len(units)
    if on_disk:  # 2 bytes per value
        (path,) = tmp_path.glob("prefix-*")
        rows = sum(len(e.ids) for e in encode_units(units, tokenizer, 64))
        assert path.stat().st_size == rows * bb.hidden_size * 2
    else:
        assert all(r.dtype == np.uint16 for r in cache.rows.values())


def test_a_float32_model_has_no_masters_and_casts_up(tiny_model_dir):  # noqa: F811
    """A model converted in bfloat16 trains in float32 when asked: everything up-cast."""
    bb = load_backbone(tiny_model_dir)
    bb.model.set_dtype(mx.bfloat16)
    model = RSGClassifier(bb, ClassifierConfig(method="freeze", freeze_layers=1), {"TERRa": 2})
    assert not precision.masters(model).arrays
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float32}


def test_an_unknown_dtype_is_one_line():
    with pytest.raises(UserError, match="--dtype: 'float64' is not one of float32, bfloat16, "
                       "float16$"):  # fmt: skip
        tiny_train_config(dtype="float64").validate()


# ---------------------------------------------------------------- float16: the loss scaled


@pytest.fixture(scope="module")
def float16_run(tiny_model_dir, tiny_rsg_dir, runs_f32, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("f16") / "float16"
    cfg = tiny_train_config(dtype="float16", epochs=2, method="freeze")
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, log=lambda m: None)
    return run


@pytest.fixture(scope="module")
def runs_f32(tiny_model_dir, tiny_rsg_dir, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("f32") / "float32"
    cfg = tiny_train_config(dtype="float32", epochs=2, method="freeze")
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, log=lambda m: None)
    return run


def test_float16_losses_track_float32_at_its_loss_scale(runs_f32, float16_run):
    f32, f16 = losses(runs_f32), losses(float16_run)
    assert [r[:2] for r in f16] == [r[:2] for r in f32]
    diff = np.abs(np.array([r[2] for r in f16]) - np.array([r[2] for r in f32]))
    assert diff.mean() < MEAN_TOLERANCE and diff.max() < MAX_TOLERANCE, (diff.mean(), diff.max())
    assert diff.max() > 0
    history = json.loads((float16_run / "metrics.json").read_text())["history"]
    assert history[-1]["loss_scale"] == {"scale": loss_scale.INITIAL_SCALE, "skipped_steps": 0}
    assert "loss_scale" not in json.loads((runs_f32 / "metrics.json").read_text())["history"][-1]
    saved = mx.load(str(float16_run / "trainable.safetensors"))
    assert {v.dtype for v in saved.values()} == {mx.float32}  # masters
    params = dict(tree_flatten(mlx_rsg.load(float16_run).model.parameters()))
    assert {params[k].dtype for k in saved if not k.startswith("heads.")} == {mx.float16}


def test_an_overflowing_loss_scale_skips_steps_and_halves(tiny_model_dir, tiny_rsg_dir,  # noqa: F811
                                                          tmp_path, monkeypatch):  # fmt: skip
    """Started at 2^40, the float16 backward overflows: those steps are skipped and the scale
    halves until the gradients are finite; training then goes on as usual."""
    monkeypatch.setattr(loss_scale, "INITIAL_SCALE", 2.0**40)
    cfg = tiny_train_config(dtype="float16", epochs=2, method="freeze")
    T.train(tiny_model_dir, tiny_rsg_dir, tmp_path / "run", cfg, log=lambda m: None)
    entry = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"][-1]
    skipped = entry["loss_scale"]["skipped_steps"]
    assert 0 < skipped < entry["step"]
    assert entry["loss_scale"]["scale"] == 2.0 ** (40 - skipped)  # halved once per skip
    assert all(np.isfinite(r[2]) for r in losses(tmp_path / "run"))


def test_the_loss_scale_rule():
    """Finite gradients: applied, and the scale doubles after GROWTH_INTERVAL of them in a
    row; one overflow: skipped, the scale halved and the count restarted."""
    from mlx_rsg.train.checkpoint import Position

    pos = Position(loss_scale=8.0)
    finite, overflow = {"w": mx.ones(3)}, {"w": mx.array([1.0, mx.inf, 0.0])}
    for _ in range(loss_scale.GROWTH_INTERVAL - 1):
        assert loss_scale.update_scale(pos, finite)
    assert pos.loss_scale == 8.0
    assert loss_scale.update_scale(pos, finite) and pos.loss_scale == 16.0
    assert pos.finite_steps == 0
    assert not loss_scale.update_scale(pos, {"w": mx.array([mx.nan])})
    assert not loss_scale.update_scale(pos, overflow)
    assert (pos.loss_scale, pos.skipped_steps, pos.finite_steps) == (4.0, 2, 0)


def test_a_bfloat16_run_quantizes_and_predicts_close_to_itself(runs, tmp_path):
    from mlx_rsg.quant.quantize import quantize

    _, run = runs
    out = quantize(run, tmp_path / "q8", recipe="q8", log=lambda m: None)
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    assert manifest["norms_dtype"] == "bfloat16"
    assert manifest["kept_float32"] == ["classification heads"]
    records = [{"idx": i, "premise": f"Кошка {i} спит на окне.", "hypothesis": "Кошка спит."}
               for i in range(8)]  # fmt: skip
    want = mlx_rsg.load(run).predict("TERRa", records)
    got = mlx_rsg.load(out).predict("TERRa", records)
    for g, w in zip(got, want, strict=True):
        assert g["probs"]["entailment"] == pytest.approx(w["probs"]["entailment"], abs=0.02)
