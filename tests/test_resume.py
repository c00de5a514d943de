"""--resume after a real `kill -9`: the resumed run's history equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tiny_model import tiny_model_dir, tiny_rsg_dir, tiny_train_config  # noqa: F401

import mlx_rsg.train as T
from mlx_rsg.run import config_dict

# The child trains with each batch slowed down, so the parent can kill it mid-epoch.
CHILD = """
import json, sys, time
import mlx_rsg.train as T
import mlx_rsg.train.loop as L
from mlx_rsg.run import dataclass_from_dict

slow = L.loss_fn
def loss_fn(*a, **k):
    time.sleep(0.05)
    return slow(*a, **k)
L.loss_fn = loss_fn
cfg = dataclass_from_dict(T.TrainConfig, json.loads({cfg!r}))
T.train({model!r}, {data!r}, {run!r}, cfg, log=lambda m: None)
"""


def losses(run: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines() if x]
    return [(r["batch"], r["task"], r["loss"]) for r in rows]


def test_resume_after_kill_9_equals_uninterrupted_run(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    cfg = tiny_train_config(checkpoint_every=2)
    full = tmp_path / "full"
    T.train(tiny_model_dir, tiny_rsg_dir, full, cfg, log=lambda m: None)
    per_epoch = len(losses(full)) // cfg.epochs

    run = tmp_path / "killed"
    script = CHILD.format(
        cfg=json.dumps(config_dict(cfg)),
        model=str(tiny_model_dir),
        data=str(tiny_rsg_dir),
        run=str(run),
    )
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # Kill in the middle of the second epoch, after at least one mid-epoch checkpoint.
    while time.time() < deadline and child.poll() is None:
        done = len(losses(run)) if (run / "losses.jsonl").exists() else 0
        if done >= per_epoch + per_epoch // 2:
            os.kill(child.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    assert json.loads((run / "run.json").read_text())["status"] == "training"
    killed_at = len(losses(run))

    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, resume=True, log=lambda m: None)
    got, want = losses(run), losses(full)
    assert [r[:2] for r in got] == [r[:2] for r in want]  # same batches, same order
    np.testing.assert_allclose([r[2] for r in got], [r[2] for r in want], rtol=0, atol=1e-6)
    assert len(got) > killed_at  # it really continued
    got_m = json.loads((run / "metrics.json").read_text())
    want_m = json.loads((full / "metrics.json").read_text())
    assert got_m["best"] == want_m["best"]
    assert [e["score"] for e in got_m["history"]] == [e["score"] for e in want_m["history"]]
    # and nothing the kill left behind: no temporaries, one checkpoint, no lock file
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    assert len([p for p in (run / "checkpoints").iterdir() if p.is_dir()]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "killed"]


def test_train_loss_after_resume_counts_the_whole_epoch(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    """metrics.json's per-epoch train_loss once averaged only the batches run after a resume."""
    cfg = tiny_train_config(checkpoint_every=2, epochs=2)
    full = tmp_path / "full"
    T.train(tiny_model_dir, tiny_rsg_dir, full, cfg, log=lambda m: None)
    per_epoch = len(losses(full)) // cfg.epochs
    run = tmp_path / "stopped"
    stop = per_epoch + per_epoch // 2 + 1  # mid epoch 2, past a mid-epoch checkpoint
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, stop_after_batches=stop, log=lambda m: None)
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, resume=True, log=lambda m: None)
    got = [e["train_loss"] for e in json.loads((run / "metrics.json").read_text())["history"]]
    want = [e["train_loss"] for e in json.loads((full / "metrics.json").read_text())["history"]]
    by_epoch = [[r[2] for r in losses(full)][i * per_epoch : (i + 1) * per_epoch] for i in (0, 1)]
    np.testing.assert_allclose(want, [np.mean(x) for x in by_epoch], rtol=1e-12)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_resume_refills_the_prefix_cache_in_the_batches_it_was_filled_in(tiny_model_dir,  # noqa: F811
                                                                          tiny_rsg_dir, tmp_path,  # noqa: F811
                                                                          monkeypatch):  # fmt: skip
    """A GEMM's last bits can depend on the batch's shape (seen with OpenBLAS's Haswell kernels:
    a float16 resume drifted in the fifth decimal). Here the frozen prefix is made to depend on
    the batch's padded length outright; a resumed run still gives the uninterrupted run's
    losses, because it recomputes the rows the stopped run had cached in the batches that run
    computed them in, not in the resumed epoch's."""
    from mlx_rsg.model.classifier import RSGClassifier

    real = RSGClassifier.prefix
    monkeypatch.setattr(RSGClassifier, "prefix",
                        lambda self, tokens: real(self, tokens) * (1 + 1e-3 * tokens.shape[1]))
    cfg = tiny_train_config(epochs=2, checkpoint_every=2)
    full, run = tmp_path / "full", tmp_path / "stopped"
    T.train(tiny_model_dir, tiny_rsg_dir, full, cfg, log=lambda m: None)
    stop = len(losses(full)) // 2 + 3  # mid epoch 2: its batches regroup epoch 1's units
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, stop_after_batches=stop, log=lambda m: None)
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, resume=True, log=lambda m: None)
    assert losses(run) == losses(full)


def test_a_run_records_its_runtime_and_a_resume_under_other_choices_says_so(
        tiny_model_dir, tiny_rsg_dir, tmp_path, monkeypatch):  # noqa: F811  # fmt: skip
    """run.json keeps what the floats depend on beyond flags, data and weights (kernels, fast
    paths, cores): a resume under other choices still runs, and says it is no longer the same
    run and which environment pins the recorded choices."""
    from mlx_rsg.accel import blas
    from mlx_rsg.accel.cpu_parallel import cpu_cores

    cfg = tiny_train_config(epochs=2, checkpoint_every=2)
    run = tmp_path / "run"
    monkeypatch.setenv("MLX_RSG_FAST_PATHS", "none")
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, stop_after_batches=3, log=lambda m: None)
    recorded = json.loads((run / "run.json").read_text())["runtime"]
    assert recorded == {"device": "cpu", "blas": blas.describe(), "blas_kernels": blas.corename(),
                        "fast_paths": [], "cores": cpu_cores()}  # fmt: skip
    same: list[str] = []
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, resume=True, stop_after_batches=5,
            log=same.append)  # fmt: skip
    assert not [m for m in same if m.startswith("note: resumed")]
    monkeypatch.setenv("MLX_RSG_FAST_PATHS", "gelu")
    other: list[str] = []
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, resume=True, log=other.append)
    pin = "MLX_RSG_FAST_PATHS=none" + (f" OPENBLAS_CORETYPE={blas.corename()}"
                                       if blas.corename() else "")  # fmt: skip
    assert [m for m in other if m.startswith("note: resumed")] == [
        "note: resumed with other choices than the run started with (fast_paths [] then, "
        f"['gelu'] now): it goes on, but not bit for bit; to pin its own: {pin}"]
    # the record is the start's: a resume does not overwrite it
    assert json.loads((run / "run.json").read_text())["runtime"] == recorded
