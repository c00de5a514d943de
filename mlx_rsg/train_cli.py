"""`mlx-rsg train` and `mlx-rsg predict`: thin click wrappers over train.py and predict.py.

Kept out of cli.py so that file stays one registration line per module; heavy imports happen
inside the commands so `mlx-rsg --help` stays fast (train.py imports no mlx at the top). The
train options are made from TrainConfig's fields (mlx_rsg/options.py)."""

from __future__ import annotations

import click

from mlx_rsg.options import config_from_options, config_options
from mlx_rsg.train import TrainConfig


@click.command("train")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_dir", required=True, type=click.Path(), help="RSG data directory.")
@click.option(
    "-o", "--output", "run_dir", required=True, type=click.Path(), help="RUN_DIR to write."
)
@click.option(
    "--tasks",
    default="all",
    show_default=True,
    help="all, or a comma list (terra,rcb,...; any case). LiDiRus rides on TERRa.",
)
@config_options(TrainConfig, skip=("tasks",))
@click.option("--resume", is_flag=True, help="Continue RUN_DIR from its last checkpoint.")
@click.option("--fuse", is_flag=True, help="Merge LoRA into a standalone backbone copy in RUN_DIR.")
@click.option("--copy-backbone", is_flag=True, help="Copy the backbone into RUN_DIR.")
@click.option("--force", is_flag=True, help="Overwrite an existing RUN_DIR.")
def train_command(model_dir, data_dir, run_dir, tasks, resume, fuse, copy_backbone, force, **flags):
    """Train classification heads for the RSG tasks on MODEL_DIR (a converted model)."""
    from pathlib import Path

    from mlx_rsg.run import tasks_with_train
    from mlx_rsg.train import parse_tasks, train

    chosen = parse_tasks(tasks)
    if tasks.strip().lower() == "all" and Path(data_dir).exists():
        # "all" means every task the data has a train split for (RuCoS may be missing).
        present = tasks_with_train(Path(data_dir), chosen)
        skipped = [t for t in chosen if t not in present]
        if skipped:
            click.echo(f"--tasks all: no train split for {', '.join(skipped)}; skipped", err=True)
        chosen = present or chosen
    cfg = config_from_options(TrainConfig, flags, tasks=chosen,
                              max_train_per_task=flags["max_train_per_task"] or None)  # fmt: skip
    metrics = train(
        model_dir,
        data_dir,
        run_dir,
        cfg,
        resume=resume,
        force=force,
        fuse=fuse,
        copy_backbone=copy_backbone,
    )
    best = metrics.get("best") or {}
    click.echo(
        f"best epoch {best.get('epoch')}: val score {best.get('score', float('nan')):.4f}"
        + (f"; total with LiDiRus {metrics['final']['total']:.4f}" if metrics.get("final") else "")
        + f"  -> {run_dir}"
    )


@click.command("predict")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--task", help="Task of the --input records (any case).")
@click.option("--input", "input_path", help="JSON Lines records in the official format, or -.")
@click.option("--data", "data_dir", type=click.Path(), help="RSG data directory (with --split).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default=None)
@click.option(
    "--tasks",
    "task_list",
    default="all",
    show_default=True,
    help="With --data: all, or a comma list.",
)
@click.option(
    "--submission",
    type=click.Path(dir_okay=False),
    help="With --split test: write the official submission zip here.",
)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option(
    "--max-per-task", type=int, default=None,
    help="With --data: ~N examples per task, whole records drawn with --seed.",
)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Draws --max-per-task's records (train --seed S draws the same val records).")
def predict_command(
    run_dir, task, input_path, data_dir, split, task_list, submission, batch_size, max_per_task,
    seed,
):
    """Predict with a trained RUN_DIR: one JSON line per --input record, val scores of a --data
    split, or the official test submission zip."""
    from mlx_rsg import predict

    predict.cli(
        run_dir=run_dir,
        task=task,
        input_path=input_path,
        data_dir=data_dir,
        split=split,
        task_list=task_list,
        submission=submission,
        batch_size=batch_size,
        max_per_task=max_per_task,
        seed=seed,
    )
