"""`mlx-rsg quickstart` end to end on a tiny model: convert -> train -> quantize -> bench, and a
second call reuses every finished step."""

from __future__ import annotations

import json

from mlx_rsg.quickstart import QuickstartConfig, quickstart


def test_quickstart_runs_every_step_then_reuses_them(
    tiny_model_dir, tiny_rsg_dir, tmp_path, capsys
):
    cfg = QuickstartConfig(
        source=str(tiny_model_dir),
        epochs=2,
        head_lr=1e-2,
        batch_size=8,
        max_len=64,
        max_train_per_task=24,
        max_eval_per_task=8,
        bench_max_per_task=8,
        bits=(8, 4),
    )
    work = tmp_path / "qs"
    result = quickstart(tiny_rsg_dir, work, cfg, force=False)
    out = capsys.readouterr()
    for sub in ("model/mlx_rsg.json", "runs/fp32/run.json", "runs/q8/run.json", "runs/q4/run.json"):
        assert (work / sub).is_file(), sub
    bench = json.loads((work / "bench" / "bench.json").read_text())
    assert bench == json.loads(json.dumps(result))
    names = [v["name"] for v in bench["variants"]]
    assert names == ["fp32", "q8", "q4"], names
    for v in bench["variants"]:
        assert set(v["scores"]) >= {"TERRa", "RCB", "PARus", "LiDiRus"}
    assert "fp32" in out.out and "q4" in out.out  # the table is printed

    # Finished steps are reused: no retraining, the run dir is untouched.
    mtime = (work / "runs" / "fp32" / "trainable.safetensors").stat().st_mtime_ns
    quickstart(tiny_rsg_dir, work, cfg, force=False)
    err = capsys.readouterr().err
    assert "[1/4] convert: using" in err and "[2/4] train: using" in err
    assert err.count("[3/4] quantize: using") == 2
    assert (work / "runs" / "fp32" / "trainable.safetensors").stat().st_mtime_ns == mtime
