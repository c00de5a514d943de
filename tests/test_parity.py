"""Training parity: `train` in MLX against the same classifier in PyTorch + transformers (+ PEFT
for LoRA), trained on the same batches with the same optimizer (benchmarks/parity_train.py; the
real Gemma-3-270M version writes benchmarks/results/parity.json). Per-batch losses must agree to
a relative 1e-3 over at least 20 optimizer steps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tiny_model import build_tiny_model, tiny_train_config, write_tiny_rsg

pytest.importorskip("torch", reason="PyTorch + transformers are the parity reference")
pytest.importorskip("peft", reason="PEFT is the LoRA reference (pip install -e '.[dev]')")
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

from parity_train import compare  # noqa: E402


@pytest.fixture(scope="module")
def parity_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    model = build_tiny_model(tmp / "model", layers=4, hidden=64, head_dim=16)
    data = write_tiny_rsg(tmp / "rsg", n_train=32, n_val=8)
    return model, data


@pytest.mark.parametrize(
    "method, extra",
    [
        ("freeze", {"freeze_layers": 2}),
        ("lora", {"freeze_layers": 1, "lora_rank": 4, "lora_alpha": 8.0,
                  "lora_targets": ("q_proj", "v_proj", "down_proj")}),
    ],
)  # fmt: skip
def test_training_losses_equal_the_pytorch_reference(parity_setup, method, extra):
    model, data = parity_setup
    cfg = tiny_train_config(method=method, epochs=3, batch_size=8, grad_accum=2, warmup=3,
                            lr=1e-3, head_lr=1e-2, max_eval_per_task=8, checkpoint_every=1000,
                            **extra)  # fmt: skip
    result = compare(model, data, cfg)
    assert result["steps"] >= 20, result["steps"]
    assert len(result["mlx"]) == result["batches"] >= 40
    # training moved: the reference's own losses change, so equal losses mean equal updates
    assert abs(result["reference"][-1] - result["reference"][0]) > 0.05
    assert result["max_rel_diff"] <= 1e-3, result["max_rel_diff"]


def test_the_comparison_sees_a_different_recipe(parity_setup):
    """The check can fail: the reference with another learning rate drifts away at once."""
    import dataclasses

    import parity_train

    model, data = parity_setup
    cfg = tiny_train_config(method="freeze", freeze_layers=2, epochs=1, batch_size=8,
                            max_eval_per_task=8, checkpoint_every=1000)  # fmt: skip
    result = compare(model, data, cfg)
    epochs = parity_train.batches_of(model, data, dataclasses.replace(cfg, dropout=0.0))
    other = parity_train.reference_losses(
        model, epochs, dataclasses.replace(cfg, dropout=0.0, lr=cfg.lr * 3), {}
    )
    drift = max(abs(a - b) / b for a, b in zip(result["mlx"], other, strict=True))
    assert drift > 1e-2 > result["max_rel_diff"]
