"""The tiny-model pipeline on MLX's GPU device (Metal on a Mac, CUDA on Linux + NVIDIA): the path
users run, which the CPU suite reaches only through a patched `mx.default_device`. Skipped where
the default device is the CPU; `benchmarks/gpu_check.sh` runs these on a GPU machine."""

# ruff: noqa: F811  (pytest fixtures imported from tiny_model are parameters here)
from __future__ import annotations

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from tiny_model import tiny_model_dir, tiny_rsg_dir, tiny_train_config  # noqa: F401

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(mx.default_device() != mx.gpu, reason="the default device is the CPU"),
]


def losses(run) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "losses.jsonl").read_text().splitlines() if x]


def test_pipeline_runs_on_the_gpu_without_cpu_fast_paths(tiny_model_dir, tiny_rsg_dir, tmp_path):
    from mlx_rsg import predict
    from mlx_rsg import train as T
    from mlx_rsg.accel import fastpaths
    from mlx_rsg.bench.measure import bench
    from mlx_rsg.quant.quantize import quantize

    assert not any(fastpaths.decide(fastpaths.Shapes()).values())
    run = tmp_path / "run"
    metrics = T.train(tiny_model_dir, tiny_rsg_dir, run, tiny_train_config(epochs=2),
                      log=lambda m: None)  # fmt: skip
    assert np.isfinite(losses(run)).all() and metrics["final"]["total"] is not None
    model = predict.load(run).model
    kinds = {type(m).__name__ for m in model.modules()}
    assert not kinds & {"FastAttention", "FastMLP", "FastQuantizedLinear"}, kinds
    quantize(run, tmp_path / "q4", recipe="q4", group_size=32, log=lambda m: None)
    result = bench(str(run), [str(tmp_path / "q4")], str(tiny_rsg_dir), str(tmp_path / "bench"),
                   log=lambda m: None)  # fmt: skip
    assert [v["name"] for v in result["variants"]] == ["run", "q4"]
    assert result["env"]["device"].startswith("Device(gpu")
    assert all(v["total"] is not None and v["memory"]["mlx_peak_bytes"] > 0
               for v in result["variants"])  # fmt: skip


CPU_CHILD = """
import sys
import mlx.core as mx
mx.set_default_device(mx.cpu)
import mlx_rsg.train as T
from tiny_model import tiny_train_config
T.train(sys.argv[1], sys.argv[2], sys.argv[3], tiny_train_config(epochs=1), log=lambda m: None)
"""


def test_the_gpu_trains_like_the_cpu(tiny_model_dir, tiny_rsg_dir, tmp_path):
    from mlx_rsg import train as T

    T.train(tiny_model_dir, tiny_rsg_dir, tmp_path / "gpu", tiny_train_config(epochs=1),
            log=lambda m: None)  # fmt: skip
    subprocess.run([sys.executable, "-c", CPU_CHILD, str(tiny_model_dir), str(tiny_rsg_dir),
                    str(tmp_path / "cpu")], check=True, cwd=__file__.rsplit("/", 1)[0])  # fmt: skip
    # Same batches, same dropout masks; GPU GEMMs may round differently (TF32 on NVIDIA).
    np.testing.assert_allclose(losses(tmp_path / "gpu"), losses(tmp_path / "cpu"), rtol=5e-3)
