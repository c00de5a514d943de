"""`mlx-rsg quickstart` end to end on a tiny model: convert -> train -> quantize -> bench, and a
second call reuses every finished step."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tiny_model import build_tiny_model

from mlx_rsg.quickstart import FULL_RECIPE, MEASURED, QuickstartConfig, feature_layer, quickstart


def test_quickstart_runs_every_step_then_reuses_them(tiny_rsg_dir, tmp_path, capsys):
    # Every width a multiple of 64, so q8/q4/GPTQ quantize every layer at group size 64.
    source = build_tiny_model(tmp_path / "hf", hidden=64, head_dim=32)
    cfg = QuickstartConfig(
        source=str(source),
        epochs=2,
        head_lr=1e-2,
        batch_size=8,
        max_len=64,
        max_train_per_task=24,
        dev_per_task=8,
        max_eval_per_task=8,
    )
    work = tmp_path / "qs"
    result = quickstart(tiny_rsg_dir, work, cfg, force=False)
    out = capsys.readouterr()
    subs = ["model/mlx_rsg.json", "runs/fp32/run.json"]
    subs += [f"runs/{r}/run.json" for r in ("q8", "q4", "q4-gptq")]
    for sub in subs:
        assert (work / sub).is_file(), sub
    bench = json.loads((work / "bench" / "bench.json").read_text())
    assert bench == json.loads(json.dumps(result))
    names = [v["name"] for v in bench["variants"]]
    assert names == ["fp32", "q8", "q4", "q4-gptq"], names
    for v in bench["variants"]:
        assert set(v["scores"]) >= {"TERRa", "RCB", "PARus", "LiDiRus"}
    assert "fp32" in out.out and "| q4-gptq | q4-gptq (q4 g64, " in out.out  # table printed
    # Bench scores the records training evaluated on: its fp32 total is training's final total.
    metrics = json.loads((work / "runs" / "fp32" / "metrics.json").read_text())
    final = metrics["final"]
    fp32 = bench["variants"][0]
    total = fp32["total"] if fp32["total"] is not None else fp32["total_fixture"]
    assert total == pytest.approx(final["total"], abs=1e-12)  # summation order only
    assert f"with LiDiRus, as bench counts: {final['total']:.3f}" in out.out
    assert final["split"] == "val" and "dev_loss" in metrics["history"][0]  # chosen on dev
    # It says it was a demonstration, and how to run the full recipe on the same model and data.
    assert ("This was a demonstration of the pipeline: `freeze` for 2 epochs on ~24 training "
            "examples per task of at most 64 tokens") in out.out
    # It reads and trains block 1 of the tiny model's 2 (10/18 of the depth), and so does bench.
    run = json.loads((work / "runs" / "fp32" / "run.json").read_text())
    assert run["classifier"]["feature_layer"] == 1 and run["train"]["freeze_layers"] == 0
    assert "[2/4] train freeze: blocks 1-1 of 2 for " in out.err
    assert f"mlx-rsg train {work / 'model'} --data {tiny_rsg_dir} -o runs/g270m" in out.out
    runs = work / "runs"
    assert f"mlx-rsg serve {runs / 'fp32'} {runs / 'q8'} {runs / 'q4'}" in out.out
    # Each step says its share of the time, then how long it took.
    for step in ("[1/4] convert", "[2/4] train", "[3/4] quantize", "[4/4] bench"):
        line = next(ln for ln in out.err.splitlines() if ln.startswith(step))
        assert "% of the quickstart's time)" in line, line
    assert "      train took " in out.err
    # What it cost per step is written beside the runs, in the form of the committed timing that
    # the shares above and docs/cli.md come from.
    timing = json.loads((work / "quickstart.json").read_text())
    assert list(timing["steps"]) == ["convert", "train", "quantize q8", "quantize q4",
                                     "quantize q4-gptq", "bench"]  # fmt: skip
    assert 0 < sum(timing["steps"].values()) <= timing["minutes"] + 0.05
    assert timing["table"] in out.out and timing["machine"]["cores"] >= 1
    assert set(json.loads(MEASURED.read_text())) == set(timing)

    # Finished steps are reused: no retraining, the run dir is untouched, and the timing stays
    # the whole run's (a reused step is no measurement).
    mtime = (work / "runs" / "fp32" / "trainable.safetensors").stat().st_mtime_ns
    quickstart(tiny_rsg_dir, work, cfg, force=False)
    assert json.loads((work / "quickstart.json").read_text()) == timing
    err = capsys.readouterr().err
    assert "[1/4] convert: using" in err and "[2/4] train: using" in err
    assert err.count("[3/4] quantize: using") == 3
    assert (work / "runs" / "fp32" / "trainable.safetensors").stat().st_mtime_ns == mtime


def test_force_deletes_only_a_quickstart_directory(tiny_rsg_dir, tmp_path):
    """`quickstart -o . --force` in a checkout must not delete the checkout (nor the data)."""
    from mlx_rsg.errors import UserError

    checkout = tmp_path / "checkout"
    (checkout / "mlx_rsg").mkdir(parents=True)
    (checkout / "README.md").write_text("mine")
    with pytest.raises(UserError, match="not a quickstart directory"):
        quickstart(tiny_rsg_dir, checkout, QuickstartConfig(), force=True)
    assert (checkout / "README.md").read_text() == "mine"
    with pytest.raises(UserError, match="holds the data"):
        quickstart(tiny_rsg_dir, tiny_rsg_dir.parent, QuickstartConfig(), force=True)
    assert tiny_rsg_dir.is_dir()


@pytest.mark.parametrize("depth, block", [(18, 10), (2, 1), (1, 1), (30, 17), (9, 5)])
def test_it_reads_block_ten_of_eighteen_at_any_depth(depth, block):
    assert feature_layer(QuickstartConfig(), depth) == block


def test_the_full_recipe_it_prints_is_the_committed_real_runs():
    """The command the quickstart suggests at its end is the one that made the committed real
    run (benchmarks/results/quality.json), with the user's paths."""
    root = Path(__file__).parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("render_docs", root / "render_docs.py")
    render_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_docs)
    command = render_docs.real_train_command(root / "results")
    assert FULL_RECIPE.format(model="MODEL_DIR", data="../shared/rsg") == command
