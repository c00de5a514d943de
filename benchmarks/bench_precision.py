"""`train --dtype bfloat16` against float32 on the real model: time, peak memory, losses.

    python benchmarks/bench_precision.py --model MODEL_DIR --data RSG_DIR [--units 150]
    python benchmarks/bench_precision.py --model MODEL_DIR --data RSG_DIR --real

Runs `mlx-rsg train` twice, once per dtype, each in its own process (peak RSS from wait4). By
default on an earlier recipe's flags (freeze 14 of 18 blocks, lengths `auto` up to 640, lr 5e-5 /
1e-3) with a smaller budget: ~--units training units per task, one epoch; results/precision.json.
With --real, on the committed real run's own command (benchmarks/results/quality.json: its
blocks, per-task budgets and dev split) for its first epoch, the one that fills the prefix cache;
results/precision_real.json. Either way --eval val units per task are scored at the end, and RWSD
is decided by its head (the substitution language model is not training). Same seed, so the same
batches in the same order: the per-batch losses of the two runs are compared directly. On the CPU
the bfloat16 run multiplies through float32 GEMMs (`accel/fast_half.py`); on a Mac it runs Metal's
bf16 GEMMs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_io import save  # benchmarks/results_io.py, beside this script

HERE = Path(__file__).parent
DTYPES = ("float32", "bfloat16")


def real_flags(quality: Path) -> list[str]:
    """The committed real run's training flags (its command in quality.json, before the note in
    parentheses), without the model, the data, the output and the number of epochs."""
    command = json.loads(quality.read_text())["run"]["command"].split("  (")[0]
    words = shlex.split(command)[3:]  # mlx-rsg train MODEL_DIR ...
    flags = []
    while words:
        flag = words.pop(0)
        value = words.pop(0) if words and not words[0].startswith("--") else None
        if flag not in ("--data", "-o", "--epochs"):
            flags += [flag] if value is None else [flag, value]
    return flags


def recipe_flags(args) -> list[str]:
    if args.real:
        return real_flags(args.quality)
    return ["--method", "freeze", "--freeze-layers", str(args.freeze),
            "--max-train-per-task", str(args.units), "--lr", "5e-5", "--head-lr", "1e-3",
            "--warmup", "30", "--max-len", "640", "--task-max-len", "auto"]  # fmt: skip


def train(args, dtype: str, out: Path) -> dict:
    cli = "from mlx_rsg.cli import main; main()"
    cmd = [sys.executable, "-c", cli, "train", args.model, "--data", args.data, "-o", str(out),
           *recipe_flags(args), "--epochs", "1", "--max-eval-per-task", str(args.eval),
           "--rwsd-decision", "head", "--dtype", dtype]  # fmt: skip
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{dtype}: train failed:\n{child.stderr.read()[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [json.loads(x) for x in (out / "losses.jsonl").read_text().splitlines() if x]
    epoch = metrics["history"][0]
    return {
        "train_seconds": epoch["seconds"],
        "wall_seconds": round(wall, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),  # KiB on Linux
        "batches": len(losses),
        "val_score": epoch["score"],
        "losses": [row["loss"] for row in losses],
        "trainable_bytes": (out / "trainable.safetensors").stat().st_size,
    }


def table(result: dict) -> str:
    """The runs side by side (docs/training.md renders it)."""
    rows = ["| dtype | training s | vs float32 | peak RSS GB | batches | trainable.safetensors MB "
            "| val score |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    base = result["runs"]["float32"]
    for dtype, r in result["runs"].items():
        rows.append(f"| {dtype} | {r['train_seconds']:.1f} | "
                    f"{r['train_seconds'] / base['train_seconds']:.2f}x | {r['peak_rss_gb']:.2f} | "
                    f"{r['batches']} | {r['trainable_bytes'] / 1e6:.1f} | {r['val_score']:.3f} |")
    d = result["loss_difference"]
    return ("\n".join(rows) + f"\n\nPer-batch training loss, bfloat16 against float32 on the "
            f"same batches: mean difference {d['mean']:.4f}, largest {d['max']:.4f} (mean loss "
            f"{d['mean_loss_float32']:.3f}). {result['recipe']}; {result['cpu']}, "
            f"{result['blas'].split(':')[0]}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--freeze", type=int, default=14, help="frozen bottom blocks")
    ap.add_argument("--units", type=int, default=150, help="training units per task")
    ap.add_argument("--eval", type=int, default=16, help="val units per task")
    ap.add_argument("--real", action="store_true",
                    help="the committed real run's flags (from --quality), its first epoch")
    ap.add_argument("--quality", type=Path, default=HERE / "results" / "quality.json")
    ap.add_argument("--out", help="default results/precision.json, with --real precision_real.json")
    args = ap.parse_args()
    out = Path(args.out or HERE / "results" / f"precision{'_real' if args.real else ''}.json")
    import mlx_rsg  # noqa: F401, I001 - before MLX: it puts the fast BLAS in place
    import mlx.core as mx
    from mlx_rsg.accel import blas
    from mlx_rsg.accel.fastpaths import cpu_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    try:
        runs = {dtype: train(args, dtype, tmp / dtype) for dtype in DTYPES}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    f32, bf16 = (np.array(runs[d].pop("losses")) for d in DTYPES)
    diff = np.abs(f32 - bf16)
    result = {
        "benchmark": "precision",
        "model": args.model,
        "command": "python benchmarks/bench_precision.py --model MODEL_DIR --data RSG_DIR "
        + (f"--real --eval {args.eval}" if args.real else
           f"--freeze {args.freeze} --units {args.units} --eval {args.eval}"),
        "recipe": (f"The real run's flags, {' '.join(recipe_flags(args))}, its first epoch "
                   "(filling the prefix cache) with its dev pass" if args.real else
                   f"freeze {args.freeze} blocks, --max-len 640 --task-max-len auto, one epoch, "
                   f"~{args.units} training units per task"),
        "runs": runs,
        "bfloat16_over_float32": {
            "train_seconds": round(runs["bfloat16"]["train_seconds"]
                                   / runs["float32"]["train_seconds"], 3),
            "peak_rss": round(runs["bfloat16"]["peak_rss_gb"] / runs["float32"]["peak_rss_gb"], 3),
        },  # fmt: skip
        "loss_difference": {"mean": float(diff.mean()), "max": float(diff.max()),
                            "mean_loss_float32": float(f32.mean())},  # fmt: skip
        "cpu": cpu_model(),
        "blas": blas.describe(),
        "machine": f"{platform.machine()} {platform.system()}",
        "device": str(mx.default_device()),
        "versions": {"mlx": mx.__version__},
    }
    save(out, result, table(result))


if __name__ == "__main__":
    main()
