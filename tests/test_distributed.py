# ruff: noqa: F811  (pytest fixtures imported from tiny_model are parameters here)
"""Data-parallel training on mx.distributed: 2 real processes on localhost (mlx.launch, ring
backend) train like one process with the same batches."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from tiny_model import tiny_model_dir, tiny_rsg_dir  # noqa: F401

from mlx_rsg.model.batching import EncodedUnit, collate, examples_in, shard_range, take_rows
from mlx_rsg.model.dropout import Dropout, batch_rows
from mlx_rsg.tasks import Unit

BIN = Path(sys.executable).parent
LAUNCH = shutil.which("mlx.launch", path=str(BIN)) or shutil.which("mlx.launch")
FLAGS = ["--tasks", "terra,rcb,parus", "--freeze-layers", "1", "--epochs", "2", "--lr", "1e-3",
         "--head-lr", "1e-2", "--warmup", "2", "--batch-size", "8", "--grad-accum", "2",
         "--max-len", "64", "--checkpoint-every", "2"]  # fmt: skip
needs_launch = pytest.mark.skipif(LAUNCH is None, reason="mlx.launch is not installed")


def mlx_rsg_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from mlx_rsg.cli import main; main()", *args]


def launch(*cmd: str, ranks: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """mlx.launch -n RANKS CMD; its exit code says nothing (mlx 0.32 returns 0 when a rank fails),
    so the tests read the output."""
    return subprocess.run([LAUNCH, "-n", str(ranks), "--", *cmd], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def losses(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines() if x]


# ------------------------------------------------------------------------- without processes


def _units(groups: list) -> list[EncodedUnit]:
    return [
        EncodedUnit(Unit("PARus", (i,), g, (("x", False),), int(i % 2 == 0)), [1, 2, 3 + i], [])
        for i, g in enumerate(groups)
    ]


def test_collectives_run_on_the_gpu_only_under_nccl(monkeypatch):
    """NCCL (started by mlx.launch with NCCL_HOST_IP) reduces GPU arrays on the GPU; the ring,
    MPI and JACCL backends reduce on the CPU stream."""
    from mlx_rsg.distributed import collective_device

    monkeypatch.delenv("NCCL_HOST_IP", raising=False)
    assert collective_device() == mx.cpu
    monkeypatch.setenv("NCCL_HOST_IP", "10.0.0.1")
    assert collective_device() == mx.gpu


def test_shard_range_splits_rows_evenly_and_never_a_choice_group():
    batch = collate(_units([0, 0, 1, 1, 2, 2, 3, 3]))
    assert [shard_range(batch, r, 2) for r in range(2)] == [(0, 4), (4, 8)]
    assert [shard_range(batch, r, 3) for r in range(3)] == [(0, 4), (4, 6), (6, 8)]
    part = take_rows(batch, 4, 8)
    assert part.groups.tolist() == [0, 0, 1, 1] and part.keys == batch.keys[4:]
    assert examples_in(batch) == 4 and examples_in(part) == 2
    assert part.tokens.shape[1] == batch.tokens.shape[1]  # padded like the whole batch
    one_group = collate(_units([7, 7, 7]))
    assert [shard_range(one_group, r, 2) for r in range(2)] == [(0, 3), (3, 3)]


def test_dropout_of_some_rows_is_the_whole_batch_mask_at_those_rows():
    drop = Dropout(0.5)
    drop.train()
    x = mx.ones((6, 5))
    mx.random.seed(3)
    whole = drop(x)
    mx.random.seed(3)
    with batch_rows(2, 6):
        part = drop(x[2:5])
    np.testing.assert_array_equal(np.array(part), np.array(whole[2:5]))
    mx.random.seed(3)
    assert np.array_equal(np.array(drop(x)), np.array(whole))  # outside: nn.Dropout's mask


def test_rank_shares_of_a_batch_sum_to_its_loss_and_gradient(tiny_model_dir):
    """In one process: the shares two ranks compute (each its rows, dropout drawn for the whole
    batch) add up to the whole batch's loss and gradient, with MLP adapters (dropout) on every
    block and a span task whose rows pool different numbers of positions."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_rsg.model.backbone import load_backbone
    from mlx_rsg.model.batching import Batch, loss_fn
    from mlx_rsg.model.classifier import RSGClassifier
    from mlx_rsg.model.config import ClassifierConfig

    cfg = ClassifierConfig(method="mlp-adapter", freeze_layers=0, dropout=0.3,
                           adapter_size=8, adapter_dropout=0.3)  # fmt: skip
    mx.random.seed(0)
    model = RSGClassifier(load_backbone(tiny_model_dir), cfg, {"RUSSE": 2})
    for head in model.heads.values():  # non-zero heads, so every gradient is non-zero
        head.weight = mx.random.normal(head.weight.shape) * 0.1
    model.train()
    # RUSSE pools 3 spans: the two words and the question's last token
    spans = [[[1, 4], [6, 9], [11, 12]], [[2, 3], [7, 8], [9, 10]], [[1, 2], [5, 6], [8, 9]],
             [[3, 7], [8, 11], [11, 12]]]  # fmt: skip
    batch = Batch(tokens=mx.array(np.random.default_rng(0).integers(4, 300, (4, 12)), mx.int32),
                  lengths=mx.array([12, 10, 9, 12]), head="RUSSE", task="RUSSE",
                  labels=mx.array([0, 1, 1, 0]), keys=[(i,) for i in range(4)],
                  ids=[("RUSSE", (i,)) for i in range(4)], spans=mx.array(spans))  # fmt: skip
    step = nn.value_and_grad(model, lambda m, b: loss_fn(m, b))
    mx.random.seed(7)
    (whole, _), want = step(model, batch)
    loss, got = 0.0, None
    for rank in range(2):
        start, end = shard_range(batch, rank, 2)
        part = take_rows(batch, start, end)
        mx.random.seed(7)
        with batch_rows(start, 4):
            (part_loss, n), g = step(model, part)
        share = n / examples_in(batch)
        loss += part_loss.item() * share
        g = {k: v * share for k, v in tree_flatten(g)}
        got = g if got is None else {k: got[k] + g[k] for k in got}
    assert loss == pytest.approx(whole.item(), rel=1e-6)
    for name, w in tree_flatten(want):
        np.testing.assert_allclose(np.array(got[name]), np.array(w), rtol=1e-4, atol=1e-7,
                                   err_msg=name)  # fmt: skip


# ---------------------------------------------------------------------- 2 processes, ring


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tiny_rsg_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    subprocess.run(mlx_rsg_cmd("train", str(tiny_model_dir), "--data", str(tiny_rsg_dir), "-o",
                               str(run), *FLAGS), check=True, capture_output=True)  # fmt: skip
    return run


def assert_same_training(got: Path, want: Path) -> None:
    a, b = losses(got), losses(want)
    assert [(r["batch"], r["task"]) for r in a] == [(r["batch"], r["task"]) for r in b]
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
    wa, wb = (
        mx.load(str(got / "trainable.safetensors")),
        mx.load(str(want / "trainable.safetensors")),
    )
    assert wa.keys() == wb.keys()
    for name in wa:
        if name == "heads.PARus.bias":
            # A choice head's bias shifts every candidate's score equally: its gradient is 0 up
            # to rounding, which AdamW turns into +-lr steps either way. No score depends on it.
            continue
        np.testing.assert_allclose(np.array(wa[name]), np.array(wb[name]), atol=2e-5, err_msg=name)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (got, want))
    assert [e["score"] for e in ma["history"]] == pytest.approx([e["score"] for e in mb["history"]])
    assert ma["final"]["total"] == pytest.approx(mb["final"]["total"])


@needs_launch
def test_two_ranks_train_like_one_process(one_process, tiny_model_dir, tiny_rsg_dir, tmp_path):
    run = tmp_path / "run"
    out = launch(*mlx_rsg_cmd("train", str(tiny_model_dir), "--data", str(tiny_rsg_dir), "-o",
                              str(run), *FLAGS))  # fmt: skip
    assert "best epoch 2" in out.stdout, out.stderr[-3000:]
    assert out.stdout.count("best epoch") == 1  # rank 0 reports, rank 1 is quiet
    assert_same_training(run, one_process)
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in one_process.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock or temp left


RESUME_CHILD = """
import sys
import mlx_rsg.train as T
from mlx_rsg.cli import _world
from mlx_rsg.tasks import parse_tasks
args = sys.argv[1:]
cfg = T.TrainConfig(tasks=parse_tasks("terra,rcb,parus"), freeze_layers=1, epochs=2, lr=1e-3,
                    head_lr=1e-2, warmup=2, batch_size=8, grad_accum=2, max_len=64,
                    checkpoint_every=2)
T.train(args[0], args[1], args[2], cfg, stop_after_batches=int(args[3]), world=_world(),
        log=lambda m: None)
"""


@needs_launch
def test_two_ranks_resume_a_stopped_run_like_one_process(
    one_process,
    tiny_model_dir,
    tiny_rsg_dir,
    tmp_path,
):
    run = tmp_path / "run"
    stop_at = len(losses(one_process)) // 2 + 1  # mid second epoch, after a mid-epoch checkpoint
    out = launch(sys.executable, "-c", RESUME_CHILD, str(tiny_model_dir), str(tiny_rsg_dir),
                 str(run), str(stop_at))  # fmt: skip
    assert (run / "checkpoints" / "LAST").is_file(), out.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["status"] == "training"
    out = launch(*mlx_rsg_cmd("train", str(tiny_model_dir), "--data", str(tiny_rsg_dir), "-o",
                              str(run), *FLAGS, "--resume"))  # fmt: skip
    assert "best epoch 2" in out.stdout, out.stderr[-3000:]
    assert_same_training(run, one_process)


def per_rank_shell(*args: str, rank1: dict[str, str]) -> list[str]:
    """`sh -c` running `mlx-rsg ARGS`, where an ARG named in rank1 is replaced by
    rank1[ARG] = (on other ranks, on rank 1): rank-dependent flags from one launch line."""
    words = []
    for a in args:
        if a in rank1:
            other, one = rank1[a]
            words.append(
                f'$([ "$MLX_RANK" = 1 ] && echo {shlex.quote(one)} || echo {shlex.quote(other)})'
            )
        else:
            words.append(shlex.quote(a))
    return ["sh", "-c", " ".join([*map(shlex.quote, mlx_rsg_cmd()), *words])]


@needs_launch
def test_ranks_started_with_different_flags_stop_at_once(tiny_model_dir, tiny_rsg_dir, tmp_path):
    run = tmp_path / "run"
    out = launch(*per_rank_shell("train", str(tiny_model_dir), "--data", str(tiny_rsg_dir), "-o",
                                 str(run), *FLAGS[:6], "--lr", "LR",
                                 rank1={"LR": ("1e-3", "2e-3")}), timeout=120)  # fmt: skip
    # Every rank finds the mismatch at once; the launcher may stop the slower one first.
    assert re.search(r"error: rank [01]: the 2 ranks were started with different flags, model "
                     "files or data; every rank must run the same command on the same files",
                     out.stderr), out.stderr[-3000:]  # fmt: skip
    assert "Traceback" not in out.stderr
    assert not run.exists()  # nothing written


@needs_launch
def test_a_rank_that_fails_takes_the_job_down(tiny_model_dir, tiny_rsg_dir, tmp_path):
    run, missing = tmp_path / "run", tmp_path / "missing"
    out = launch(*per_rank_shell("train", str(tiny_model_dir), "--data", "DATA", "-o", str(run),
                                 *FLAGS, rank1={"DATA": (str(tiny_rsg_dir), str(missing))}),
                 timeout=120)  # a hang would raise TimeoutExpired  # fmt: skip
    assert f"error: rank 1: {missing}: data not found" in out.stderr
    assert "Traceback" not in out.stderr
    assert not run.exists()  # rank 0 stopped before writing anything


@needs_launch
def test_mlx_rsg_launch_exits_2_with_the_failing_ranks_error_last(tiny_model_dir, tiny_rsg_dir,
                                                                   tmp_path):
    """mlx.launch exits 0 when ranks fail; `mlx-rsg launch` (the same launcher underneath) exits
    2 and ends with the cause, not with the other rank's lost connection or the ring's lines."""
    run, missing = tmp_path / "run", tmp_path / "missing"
    cmd = per_rank_shell("train", str(tiny_model_dir), "--data", "DATA", "-o", str(run), *FLAGS,
                         rank1={"DATA": (str(tiny_rsg_dir), str(missing))})  # fmt: skip
    out = subprocess.run(mlx_rsg_cmd("launch", "-n", "2", "--", *cmd), capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.rstrip("\n").splitlines()[-1] == f"error: rank 1: {missing}: data not found"
    assert "Traceback" not in out.stderr and not run.exists()


@needs_launch
@pytest.mark.parametrize("code, expected, last", [
    ("print('ok')", 0, None),
    ("import sys; sys.exit(3)", 2, "error: rank 0 exited with code 3"),  # no error line of its own
])  # fmt: skip
def test_mlx_rsg_launch_exit_code_follows_the_ranks(code, expected, last):
    rank0_only = f"import os\nif os.environ.get('MLX_RANK') == '0':\n    {code}"
    out = subprocess.run(mlx_rsg_cmd("launch", "-n", "2", "--", sys.executable, "-c", rank0_only),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == expected, out.stderr[-3000:]
    if last:
        assert out.stderr.rstrip("\n").splitlines()[-1] == last


SHARE_CHILD = """
import sys
from mlx_rsg.cli import _world
from mlx_rsg.accel import blas
from mlx_rsg.model.backbone import load_backbone
world = _world()
bb = load_backbone(sys.argv[1], cores=world.cores)
print("share", world.local_ranks, world.cores, bb.runtime.cores, bb.runtime.row_parts,
      blas.get_threads(), flush=True)
"""


@needs_launch
def test_ranks_on_one_machine_split_its_cores(tiny_model_dir):
    """Two ranks on one host: each knows it shares the machine, its model's row chunks and its
    BLAS threads take half the cores (MLX_RSG_FAST_PATHS=all in the tests: rows on)."""
    from mlx_rsg.accel import blas
    from mlx_rsg.accel.cpu_parallel import cpu_cores

    out = launch(sys.executable, "-c", SHARE_CHILD, str(tiny_model_dir), timeout=120)
    rows = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("share ")]
    half = str(cpu_cores(2))
    threads = half if blas.get_threads() is not None else "None"
    assert rows == [["2", half, half, half, threads]] * 2, out.stderr[-3000:]


# ------------------------------------------------- predict, bench and gptq on 2 ranks


def run_both(*args: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """`mlx-rsg ARGS` in one process, then on 2 ranks (outputs to ...-1 / ...-2 paths: an
    argument ending in '{n}' gets the rank count)."""
    one = subprocess.run(mlx_rsg_cmd(*[a.replace("{n}", "1") for a in args]), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(*mlx_rsg_cmd(*[a.replace("{n}", "2") for a in args]))
    assert "error" not in two.stderr and "Traceback" not in two.stderr, two.stderr[-3000:]
    return one, two


@needs_launch
def test_predict_on_two_ranks_equals_one_process(one_process, tiny_rsg_dir, tmp_path):
    from mlx_rsg.submission import read_submission

    one, two = run_both("predict", str(one_process), "--data", str(tiny_rsg_dir), "--split", "val")
    assert two.stdout == one.stdout and "total" in one.stdout  # rank 0 prints, once
    run_both("predict", str(one_process), "--data", str(tiny_rsg_dir), "--split", "test",
             "--submission", str(tmp_path / "sub-{n}.zip"))  # fmt: skip
    assert read_submission(tmp_path / "sub-2.zip") == read_submission(tmp_path / "sub-1.zip")


@needs_launch
def test_gptq_and_bench_on_two_ranks_equal_one_process(one_process, tiny_rsg_dir, tmp_path):
    run_both("quantize", str(one_process), "--recipe", "q4-gptq", "--group-size", "32",
             "--calib-data", str(tiny_rsg_dir), "-o", str(tmp_path / "q-{n}"))  # fmt: skip
    a = mx.load(str(tmp_path / "q-1" / "backbone" / "model.safetensors"))
    b = mx.load(str(tmp_path / "q-2" / "backbone" / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.endswith(".scales") for k in a)
    for name in a:  # Hessians summed over ranks in another order: the same codes and scales
        np.testing.assert_allclose(np.array(a[name]), np.array(b[name]), atol=1e-6, err_msg=name)
    manifests = [json.loads((tmp_path / f"q-{n}" / "mlx_rsg.json").read_text()) for n in (1, 2)]
    assert manifests[0]["calibration"]["examples"] == manifests[1]["calibration"]["examples"]

    run_both("bench", str(one_process), str(tmp_path / "q-1"), "--data", str(tiny_rsg_dir),
             "--latency-samples", "2", "-o", str(tmp_path / "bench-{n}"))  # fmt: skip
    one, two = (json.loads((tmp_path / f"bench-{n}" / "bench.json").read_text()) for n in (1, 2))
    assert two["config"]["ranks"] == 2
    for x, y in zip(one["variants"], two["variants"], strict=True):
        assert (x["scores"], x["flips"], x["total"]) == (y["scores"], y["flips"], y["total"])
        assert y["latency_ms"]["samples"] == 2  # timed by rank 0
