"""Re-score a run's val predictions (official submission format) with the official metrics.

    python benchmarks/quality.py --run RUN_DIR --data ../shared/rsg [--out results/quality.json]
    python benchmarks/quality.py --predictions val_predictions.zip --data ../shared/rsg
    # and how far it is from another run's, with a paired bootstrap over val records:
    python benchmarks/quality.py --predictions A.zip --against B.zip --data ../shared/rsg
    # the committed predictions of the real run (README, Results):
    python benchmarks/quality.py --predictions benchmarks/results/quality/val_predictions.zip \
        --data ../shared/rsg --out /tmp/quality.json

Reads `RUN_DIR/val_predictions.zip` (written by `mlx-rsg train --dev-per-task N`), or any zip in
the official format, and scores every task in it against the gold labels of the data's val split
(LiDiRus: its diagnostic file), next to each task's majority-class score on the same records.
With --run, the run's command line, wall time, peak memory and versions come along from its
run.json / metrics.json. With --against, the difference to another zip's scores per task and in
total, with its standard error from a paired bootstrap (both zips scored on the same resampled
records: a difference smaller than ~2 SE is one these val records cannot tell from noise).
Writes JSON and prints a table; nothing here runs a model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def majority_score(task: str, records: list) -> float:
    """The official score of the best constant answer: the majority class for accuracy, every
    answer true for MuSeRC (F1a is 0 when nothing is said true), the more common right choice
    for PARus. The issue's baseline (README, Results: the model's scores against it)."""
    from mlx_rsg.tasks import gold_predictions, score_task, task_score

    gold = gold_predictions(task, records)
    values = {v for g in gold for v in (g.values() if isinstance(g, dict) else [g])}

    def constant(value) -> float:
        preds = [dict.fromkeys(g, value) if isinstance(g, dict) else value for g in gold]
        return task_score(task, score_task(task, records, preds))

    return max(constant(v) for v in sorted(values, key=str))


def val_records(data: Path, task: str) -> list:
    """The records a val submission of `task` is scored on (LiDiRus: its diagnostic file)."""
    from mlx_rsg.data import load_split
    from mlx_rsg.data.sample import diagnostic_records

    return diagnostic_records(data) if task == "LiDiRus" else load_split(data, task, "val")


def rescore(predictions: Path, data: Path) -> dict[str, Any]:
    from mlx_rsg.submission import read_submission
    from mlx_rsg.tasks import score_task, task_score, total_score

    back = read_submission(predictions)
    tasks: dict[str, Any] = {}
    for task, preds in back.items():
        records = val_records(data, task)
        missing = [r.idx for r in records if r.idx not in preds]
        if missing:
            raise SystemExit(f"{predictions}: {task} has no prediction for idx {missing[0]} "
                             f"({len(missing)} of {len(records)} missing)")  # fmt: skip
        metrics = score_task(task, records, preds)
        tasks[task] = {
            "records": len(records),
            "metrics": metrics,
            "score": task_score(task, metrics),
            "majority": majority_score(task, records),
        }
    total = total_score({t: v["metrics"] for t, v in tasks.items()})
    majority = sum(v["majority"] for v in tasks.values()) / len(tasks)
    return {"tasks": tasks, "total": total, "majority_total": majority}


def paired_difference(predictions: Path, other: Path, data: Path, reps: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """Scores of `predictions` minus `other`'s on val, per task and in total, each with its
    standard error over `reps` resamplings of every task's records (the same draw for both:
    `mlx_rsg.bench.compare.paired_bootstrap`, as bench reports it)."""
    from mlx_rsg.bench.compare import metrics, paired_bootstrap
    from mlx_rsg.submission import read_submission

    mine, theirs = read_submission(predictions), read_submission(other)
    records = {t: val_records(data, t) for t in mine if t in theirs}
    a, b = {t: mine[t] for t in records}, {t: theirs[t] for t in records}
    se = paired_bootstrap(records, a, b, list(records), rounds=reps, seed=seed)
    tasks = {t: {"difference": metrics(t, recs, a[t])["score"] - metrics(t, recs, b[t])["score"],
                 "se": se["tasks"][t]} for t, recs in records.items()}  # fmt: skip
    return {"against": str(other), "reps": reps, "tasks": tasks,
            "total": sum(v["difference"] for v in tasks.values()) / len(tasks),
            "total_se": se["total"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a run directory (its val_predictions.zip unless "
                    "--predictions; its config, epochs and timing are recorded)")  # fmt: skip
    ap.add_argument("--predictions", type=Path, help="a submission-format zip of val predictions")
    ap.add_argument("--data", type=Path, required=True, help="RSG data directory")
    ap.add_argument("--against", type=Path, help="another zip of val predictions: the paired "
                    "difference to it, with bootstrap standard errors")  # fmt: skip
    ap.add_argument("--out", type=Path, default=HERE / "results" / "quality.json")
    ap.add_argument("--command", help="the train command that made the run (recorded as given)")
    ap.add_argument("--peak-rss-gb", type=float, help="the run's peak memory (recorded as given)")
    ap.add_argument("--wall-minutes", type=float, help="the run's wall time (recorded as given)")
    args = ap.parse_args()
    if not (args.run or args.predictions):
        ap.error("give --run, --predictions or both")

    from mlx_rsg.accel import blas
    from mlx_rsg.version import __version__

    predictions = args.predictions or args.run / "val_predictions.zip"
    result: dict[str, Any] = {
        "benchmark": "quality",
        "predictions": str(predictions),
        "data": str(args.data),
        **rescore(predictions, args.data),
        "versions": {"mlx_rsg": __version__},
    }
    if args.run:
        run = json.loads((args.run / "run.json").read_text())
        metrics = json.loads((args.run / "metrics.json").read_text())
        result["run"] = {
            "command": args.command,
            "train": run.get("train"),
            "classifier": run.get("classifier"),
            "best_epoch": run.get("best_epoch"),
            "history": metrics.get("history"),
            "train_seconds": metrics.get("train_seconds"),
            "peak_rss_gb": args.peak_rss_gb,
            "wall_minutes": args.wall_minutes,
            "blas": blas.describe(),
            "calibration": metrics.get("final", {}).get("calibration"),
            "decisions": run.get("decisions"),
        }
    if args.against:
        result["difference"] = paired_difference(predictions, args.against, args.data)
    versus = result.get("difference", {"tasks": {}})
    extra = (" minus --against (SE) |", "---|") if args.against else ("", "")
    lines = ["| task | records | score | majority class |" + extra[0],
             "|---|---|---|---|" + extra[1]]
    for task, v in result["tasks"].items():
        d = versus["tasks"].get(task)
        lines.append(f"| {task} | {v['records']} | {v['score']:.3f} | {v['majority']:.3f} |"
                     + (f" {d['difference']:+.3f} ({d['se']:.3f}) |" if d else ""))  # fmt: skip
    lines.append(f"| **total** | | **{result['total']:.3f}** | {result['majority_total']:.3f} |"
                 + (f" {versus['total']:+.3f} ({versus['total_se']:.3f}) |" if args.against
                    else ""))  # fmt: skip
    from results_io import save  # benchmarks/results_io.py, beside this script

    save(args.out, result, "\n".join(lines))


if __name__ == "__main__":
    from mlx_rsg.errors import UserError

    try:
        main()
    except UserError as e:  # an unreadable zip or data file: one line, as the CLI says it
        raise SystemExit(f"error: {e}") from None
