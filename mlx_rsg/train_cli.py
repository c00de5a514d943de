"""`mlx-rsg train` and `mlx-rsg predict`: thin click wrappers over train.py and predict.py.

Kept out of cli.py so that file stays one registration line per module; heavy imports happen
inside the commands so `mlx-rsg --help` stays fast."""

from __future__ import annotations

import click

_D = None  # the TrainConfig defaults, read lazily below


def _defaults():
    global _D
    if _D is None:
        from mlx_rsg.train import TrainConfig

        _D = TrainConfig()
    return _D


def _default(name: str):
    return getattr(_defaults(), name)


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
@click.option(
    "--method",
    type=click.Choice(["heads", "freeze", "lora", "mlp-adapter"]),
    default=_default("method"),
    show_default=True,
)
@click.option(
    "--freeze-layers",
    type=int,
    default=None,
    help="Bottom K layers frozen [default: round(12/26 x layers), as the reference].",
)
@click.option(
    "--pooling",
    type=click.Choice(["last", "mean"]),
    default=_default("pooling"),
    show_default=True,
    help="Sentence pooling (RUSSE/RWSD always use span pooling).",
)
@click.option("--dropout", type=float, default=_default("dropout"), show_default=True)
@click.option("--lora-rank", type=int, default=_default("lora_rank"), show_default=True)
@click.option("--lora-alpha", type=float, default=_default("lora_alpha"), show_default=True)
@click.option(
    "--lora-layers",
    type=int,
    default=None,
    help="Top N layers get LoRA [default: those above --freeze-layers].",
)
@click.option(
    "--lora-targets",
    default=",".join(_default("lora_targets")),
    show_default=True,
    help="Comma list of linear layer names inside each block.",
)
@click.option("--adapter-size", type=int, default=_default("adapter_size"), show_default=True)
@click.option(
    "--adapter-layers",
    type=int,
    default=None,
    help="MLP adapters after the top N blocks [default: those above --freeze-layers].",
)
@click.option(
    "--adapter-dropout", type=float, default=_default("adapter_dropout"), show_default=True
)
@click.option("--epochs", type=int, default=_default("epochs"), show_default=True)
@click.option(
    "--lr",
    type=float,
    default=_default("lr"),
    show_default=True,
    help="Peak learning rate of the backbone's trainable weights.",
)
@click.option(
    "--head-lr",
    type=float,
    default=_default("head_lr"),
    show_default=True,
    help="Peak learning rate of the new classification heads.",
)
@click.option("--weight-decay", type=float, default=_default("weight_decay"), show_default=True)
@click.option("--batch-size", type=int, default=_default("batch_size"), show_default=True)
@click.option("--grad-accum", type=int, default=_default("grad_accum"), show_default=True)
@click.option(
    "--warmup",
    type=int,
    default=_default("warmup"),
    show_default=True,
    help="Linear warmup, in optimizer steps; then linear decay to 0.",
)
@click.option("--max-len", type=int, default=_default("max_len"), show_default=True)
@click.option("--seed", type=int, default=_default("seed"), show_default=True)
@click.option(
    "--max-train-per-task",
    type=int,
    default=_default("max_train_per_task"),
    show_default=True,
    help="At most ~N training examples per task, drawn as whole records (examples = units: one "
    "per MuSeRC answer, gold + negatives per RuCoS query; 0: no cap).",
)
@click.option(
    "--max-eval-per-task",
    type=int,
    default=None,
    help="At most ~N val examples per task, drawn as whole records.",
)
@click.option(
    "--max-negatives",
    type=int,
    default=_default("max_negatives"),
    show_default=True,
    help="RuCoS: wrong entities sampled per query per epoch.",
)
@click.option(
    "--checkpoint-every",
    type=int,
    default=_default("checkpoint_every"),
    show_default=True,
    help="Optimizer steps between resume checkpoints.",
)
@click.option(
    "--prefix-cache/--no-prefix-cache",
    default=True,
    show_default=True,
    help="Compute the frozen layers once per example and reuse them every epoch.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Memory-map the prefix cache here instead of keeping it in RAM.",
)
@click.option(
    "--grad-checkpoint",
    is_flag=True,
    help="Recompute the trained layers' activations in backward (less memory, slower).",
)
@click.option("--resume", is_flag=True, help="Continue RUN_DIR from its last checkpoint.")
@click.option("--fuse", is_flag=True, help="Merge LoRA into a standalone backbone copy in RUN_DIR.")
@click.option("--copy-backbone", is_flag=True, help="Copy the backbone into RUN_DIR.")
@click.option("--force", is_flag=True, help="Overwrite an existing RUN_DIR.")
def train_command(
    model_dir,
    data_dir,
    run_dir,
    tasks,
    resume,
    fuse,
    copy_backbone,
    force,
    lora_targets,
    max_train_per_task,
    **flags,
):
    """Train classification heads for the RSG tasks on MODEL_DIR (a converted model)."""
    from pathlib import Path

    from mlx_rsg.run import tasks_with_train
    from mlx_rsg.train import TrainConfig, parse_tasks, train

    chosen = parse_tasks(tasks)
    if tasks.strip().lower() == "all" and Path(data_dir).exists():
        # "all" means every task the data has a train split for (RuCoS may be missing).
        present = tasks_with_train(Path(data_dir), chosen)
        skipped = [t for t in chosen if t not in present]
        if skipped:
            click.echo(f"--tasks all: no train split for {', '.join(skipped)}; skipped", err=True)
        chosen = present or chosen
    cfg = TrainConfig(
        tasks=chosen,
        lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
        max_train_per_task=max_train_per_task or None,
        **flags,
    )
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
