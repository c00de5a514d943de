"""Training on a quantized backbone (QLoRA): LoRA and the heads learn on the 4-bit model itself,
so the run scores, and ships, exactly the model val was scored with; what cannot train on it is
refused with one line before any work."""

from __future__ import annotations

import json

import pytest
from tiny_model import tiny_model_dir, tiny_rsg_dir  # noqa: F401

G = 32  # the tiny model's widths are multiples of 32


@pytest.fixture(scope="module")
def q4_dir(tiny_model_dir, tmp_path_factory):  # noqa: F811
    from mlx_rsg.quant.quantize import quantize

    out = tmp_path_factory.mktemp("q4") / "q4"
    return quantize(tiny_model_dir, out, recipe="q4", group_size=G, log=lambda m: None)


@pytest.fixture(scope="module")
def qlora_run(q4_dir, tmp_path_factory):
    from tiny_model import tiny_train_config, write_tiny_rsg

    from mlx_rsg import train as T

    root = tmp_path_factory.mktemp("qlora")
    data = write_tiny_rsg(root / "rsg", n_train=16, n_val=8)
    cfg = tiny_train_config(tasks=("TERRa", "PARus"), method="lora", freeze_layers=1, epochs=1,
                            dev_per_task=4)  # fmt: skip
    T.train(q4_dir, data, root / "run", cfg, log=lambda m: None, copy_backbone=True)
    return root / "run", data


def test_lora_trains_on_the_4bit_backbone_and_ships_what_val_scored(qlora_run, tmp_path):
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_rsg import predict
    from mlx_rsg.submission import read_submission

    run, data = qlora_run
    weights = mx.load(str(run / "trainable.safetensors"))
    assert all(k.startswith("heads.") or ".lora_" in k for k in weights), sorted(weights)
    lora_b = [v for k, v in weights.items() if k.endswith("lora_b")]
    assert lora_b and all(mx.abs(v).max().item() > 0 for v in lora_b)  # trained from zero
    config = json.loads((run / "backbone" / "config.json").read_text())
    assert config["quantization"]["bits"] == 4  # the 4-bit backbone, copied as it is

    from mlx_rsg.run import open_runs, quantization

    q = quantization(open_runs([str(run)])[0])  # what bench and serve report for it
    assert (q["recipe"], q["bits"]) == ("q4", 4) and q["bits_per_weight"] > 4
    predictor = predict.load(run)
    q_proj = predictor.model.backbone.layers[-1].self_attn.q_proj
    assert isinstance(q_proj.linear, nn.QuantizedLinear) and q_proj.linear.bits == 4
    info = json.loads((run / "run.json").read_text())
    records = predict.data_records(info, str(data), "val", "all", None)
    again = tmp_path / "again.zip"
    predict.write_run_submission(predictor, records, str(again))
    scored = read_submission(run / "val_predictions.zip")
    assert set(scored) == {"TERRa", "PARus", "LiDiRus"}
    assert read_submission(again) == scored  # the shipped run decides as val was scored


@pytest.mark.parametrize("method", ["heads", "mlp-adapter"])
def test_heads_and_adapters_train_on_the_4bit_backbone_too(q4_dir, tmp_path, method):
    from tiny_model import tiny_train_config, write_tiny_rsg

    from mlx_rsg import predict
    from mlx_rsg import train as T
    from mlx_rsg.submission import read_submission

    data = write_tiny_rsg(tmp_path / "rsg", n_train=16, n_val=8)
    cfg = tiny_train_config(tasks=("TERRa",), method=method, freeze_layers=1, epochs=1,
                            dev_per_task=4)  # fmt: skip
    run = tmp_path / "run"
    T.train(q4_dir, data, run, cfg, log=lambda m: None)
    predictor = predict.load(run)
    records = predict.data_records(predictor.info, str(data), "val", "all", None)
    again = tmp_path / "again.zip"
    predict.write_run_submission(predictor, records, str(again))
    assert read_submission(again) == read_submission(run / "val_predictions.zip")


def _only_line(result) -> str:
    """A failed command's output: exit code 2 and exactly one line on stderr, which it returns."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [s for s in result.stderr.splitlines() if s.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _train_cli(*args):
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    return CliRunner().invoke(main, ["train", *map(str, args)])


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--method", "freeze", "--freeze-layers", "1"],
         ["--method freeze", "quantized (4-bit)", "--method lora"]),
        (["--method", "lora", "--freeze-layers", "1", "--fuse"],
         ["--fuse", "quantized (4-bit)", "round them again"]),
    ],
)  # fmt: skip
def test_what_cannot_train_on_a_quantized_backbone_is_one_line(q4_dir, tiny_rsg_dir, tmp_path,  # noqa: F811
                                                               flags, needles):  # fmt: skip
    out = tmp_path / "run"
    result = _train_cli(q4_dir, "--data", tiny_rsg_dir, "-o", out, "--tasks", "terra", *flags)
    line = _only_line(result)
    assert line.startswith("error: ") and all(n in line for n in needles), line
    assert not out.exists()


def test_a_qlora_run_is_not_quantized_again(qlora_run, tmp_path):
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    run, _ = qlora_run
    out = tmp_path / "q8"
    result = CliRunner().invoke(main, ["quantize", str(run), "--bits", "8", "-o", str(out)])
    assert "already quantized" in _only_line(result)
    assert not out.exists()


def test_lora_over_quantized_layers_scores_in_one_row_chunk(q4_dir, tiny_model_dir,  # noqa: F811
                                                             monkeypatch):  # fmt: skip
    # Row chunks share each quantized layer's dequantized weight across CPU streams; beside
    # the LoRA branch MLX 0.32 ordered that graph so that two chunks scored at 0.6x one
    # (docs/quantization.md). A float LoRA model keeps its chunks.
    from mlx_rsg.model.backbone import load_backbone
    from mlx_rsg.model.classifier import RSGClassifier
    from mlx_rsg.model.config import ClassifierConfig

    monkeypatch.setenv("MLX_RSG_FAST_PATHS", "rows")
    cfg = ClassifierConfig(method="lora", freeze_layers=1)
    for model_dir, parts in ((q4_dir, 1), (tiny_model_dir, 2)):
        bb = load_backbone(model_dir, cores=2)
        assert bb.runtime.row_parts == 2  # the machine's cores, as loaded
        RSGClassifier(bb, cfg, {"TERRa": 2})
        assert bb.runtime.row_parts == parts, model_dir
