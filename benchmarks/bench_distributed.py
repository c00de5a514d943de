"""The cost of data parallelism on one machine: the same training run as one process and as N
ranks started by `mlx.launch` on the same cores (ring backend over localhost).

    python benchmarks/bench_distributed.py --model MODEL_DIR --data ../shared/rsg [--ranks 2]

Not a speed-up claim: N ranks on one machine split its cores (each rank gets cores / N BLAS
threads), so this measures what data parallelism adds (gradient all-reduce, shards padded like
the whole batch, ranks waiting for each other) and checks that the runs agree (per-batch losses).
Across machines each rank brings its own cores: see benchmarks/scaling_table.py. Writes
benchmarks/results/distributed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import save  # benchmarks/results_io.py, beside this script

HERE = Path(__file__).parent


def train_args(args, run: Path) -> list[str]:
    return [sys.executable, "-c", "from mlx_rsg.cli import main; main()", "train",
            str(args.model), "--data", str(args.data), "-o", str(run), "--tasks", args.tasks,
            "--method", "freeze", "--freeze-layers", str(args.freeze_layers),
            "--max-train-per-task", str(args.examples), "--max-eval-per-task", "16",
            "--epochs", "1", "--batch-size", "8", "--grad-accum", "2", "--max-len",
            str(args.max_len), "--warmup", "2"]  # fmt: skip


def run(cmd: list[str], run_dir: Path) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if not (run_dir / "metrics.json").exists():
        sys.exit(f"{' '.join(cmd[:3])} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    losses = [json.loads(x)["loss"] for x in (run_dir / "losses.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "train_s": metrics["train_seconds"], "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--tasks", default="terra")
    ap.add_argument("--examples", type=int, default=96, help="training examples")
    ap.add_argument("--freeze-layers", type=int, default=14)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distributed.json")
    args = ap.parse_args()
    launch = shutil.which("mlx.launch", path=str(Path(sys.executable).parent))
    with tempfile.TemporaryDirectory() as tmp:
        one = run(train_args(args, Path(tmp) / "one"), Path(tmp) / "one")
        ranks = run([launch, "-n", str(args.ranks), "--", *train_args(args, Path(tmp) / "n")],
                    Path(tmp) / "n")  # fmt: skip
    diff = max(abs(a - b) / abs(b) for a, b in zip(ranks["losses"], one["losses"], strict=True))
    result = {
        "benchmark": "distributed overhead on one machine",
        "config": {k: str(v) for k, v in vars(args).items() if k != "out"},
        "one_process": {k: v for k, v in one.items() if k != "losses"},
        "ranks": {k: v for k, v in ranks.items() if k != "losses"},
        "batches": len(one["losses"]),
        "max_relative_loss_difference": diff,
        "overhead": ranks["train_s"] / one["train_s"],
    }
    save(args.out, result, table(result))


def table(r: dict) -> str:
    n = r["config"]["ranks"]
    return "\n".join([
        "| | 1 process | " + f"{n} ranks (mlx.launch) |",
        "|---|---|---|",
        f"| training + dev evaluation, s | {r['one_process']['train_s']:.1f} | "
        f"{r['ranks']['train_s']:.1f} ({r['overhead']:.2f}x) |",
        f"| whole command, s | {r['one_process']['wall_s']:.1f} | {r['ranks']['wall_s']:.1f} |",
        f"| largest per-batch loss difference ({r['batches']} batches) | | "
        f"{r['max_relative_loss_difference']:.1e} |",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
