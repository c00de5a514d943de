"""The `mlx-rsg` command line: one thin layer over the library. Each command's options come from
its config dataclass where it has one (`options.config_options`); the modules that do the work
(and import mlx) are imported inside the commands, so `mlx-rsg --help` stays fast."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from mlx_rsg.bench.config import BenchConfig
from mlx_rsg.convert import ConvertOptions
from mlx_rsg.errors import PEER_LOST, UserError
from mlx_rsg.options import AT_LEAST_0, AT_LEAST_1, config_from_options, config_options, number_type
from mlx_rsg.quant.recipe import QuantizeOptions
from mlx_rsg.quickstart import QuickstartConfig
from mlx_rsg.serve.config import ServeConfig
from mlx_rsg.train.config import TrainConfig
from mlx_rsg.version import __version__


class _Group(click.Group):
    """Turn UserError and a bad flag or argument into one line on stderr and exit code 2, never
    a traceback or click's usage block."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.NoArgsIsHelpError, click.exceptions.Exit):
            raise  # --help, --version: click's Exit is a RuntimeError, not a lost peer
        except click.UsageError as e:  # raised while the subcommand parses its command line
            see = f" (see {_command_path(e.ctx)} --help)" if e.ctx else ""
            _fail(e.format_message().rstrip(".") + see)
        except UserError as e:
            _fail(str(e))
        except OSError as e:  # a full or read-only disk, a missing permission: what and where
            _fail(os_error_line(e))
        except RuntimeError as e:
            from mlx_rsg.distributed import lost_peer

            if not lost_peer(e):
                raise
            _fail(f"{PEER_LOST}: it stopped (its error is above) or its machine went away")


# errors of writing: a copy that fails names its destination (shutil sets filename to the source)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def os_error_line(e: OSError) -> str:
    """What could not be done to which path: a copy's destination when writing it failed."""
    if e.filename2 is not None:
        if e.errno in _WRITE_ERRNOS:
            return f"{e.filename2}: {e.strerror or e}"
        return f"{e.filename} -> {e.filename2}: {e.strerror or e}"
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"


def _command_path(ctx: click.Context) -> str:
    """`mlx-rsg SUBCOMMAND ...`, whatever name the program was started by (`python -m`, tests)."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["mlx-rsg", *reversed(names)])


# what str.splitlines() breaks at, so an error quoting a value stays one line
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def _fail(message: str) -> None:
    """One `error:` line, naming the rank in a distributed run (mlx.launch sets MLX_RANK)."""
    rank = os.environ.get("MLX_RANK")
    message = message.translate(_LINE_BREAKS)  # a quoted value's line breaks are escaped
    if len(message) > 1000:  # a value pasted by mistake (a whole text as a flag) is quoted short
        message = f"{message[:500]} ... ({len(message) - 1000} characters) ... {message[-500:]}"
    click.echo(f"error: {'' if rank is None else f'rank {rank}: '}{message}", err=True)
    sys.exit(2)


def _world():
    """The ranks mlx.launch started (a single process otherwise). Ranks on one machine share its
    cores: each process's BLAS (one per process, this command's to set) gets its rank's share;
    the models it loads split their rows by the same share (`World.cores`)."""
    from mlx_rsg.accel import blas
    from mlx_rsg.distributed import launched

    world = launched()
    if world.local_ranks > 1 and blas.get_threads() is not None:
        blas.set_threads(world.cores)
    return world


def _runs_a_model() -> None:
    """What a command that runs a model does first: let MLX keep freed buffers (accel/memory.py).
    In the command's body, not the group's callback: `--help` is parsed after that callback,
    and help imports no MLX."""
    from mlx_rsg.accel.memory import keep_freed_buffers

    keep_freed_buffers()


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mlx-rsg")
def main() -> None:
    """Russian SuperGLUE on Apple MLX: convert, train, quantize, benchmark."""


# --------------------------------------------------------------------------------- info


@main.command()
@click.argument("model", required=False, type=click.Path(exists=True, file_okay=False))
def info(model) -> None:
    """Print versions, the device, the BLAS with its measured GEMM speed, and which CPU fast
    paths this machine uses (timed once per machine, then cached) for MODEL (a model or run
    directory; default: Gemma-3-270M's shapes)."""
    import mlx.core as mx
    import mlx_lm

    from mlx_rsg.accel import blas, fastpaths

    click.echo(f"mlx-rsg   {__version__}")
    click.echo(f"mlx       {mx.__version__}")
    click.echo(f"mlx-lm    {mlx_lm.__version__}")
    click.echo(f"device    {mx.default_device()}")
    click.echo(f"blas      {blas.describe()}")
    for reason in blas.ERRORS:
        click.echo(f"          (not used: {reason})")
    if mx.default_device() != mx.cpu:
        click.echo("fast paths: none (they are for the CPU; on the GPU every layer runs MLX's "
                   "own kernels)")  # fmt: skip
        return
    gflops = blas.gemm_gflops(n=1024)
    slow = f"  slow: {blas.fix_hint()}" if gflops < blas.SLOW_GFLOPS else ""
    click.echo(f"gemm      {gflops:.1f} GFLOP/s (float32, 1024^3, {blas.get_threads() or '?'} "
               f"BLAS threads){slow}")  # fmt: skip
    config, quantized, what = None, True, "Gemma-3-270M shapes"
    if model:
        config, quantized = _model_config(model)
        what = f"{model}: {config.get('model_type')}{', quantized' if quantized else ''}"
    click.echo(f"fast paths ({what}, 8x128; cache {fastpaths.cache_path()}):")
    fastpaths.report(config, quantized, log=click.echo)


def _model_config(path: str) -> tuple[dict, bool]:
    """config.json of a model directory, or of a run directory's backbone; and if quantized."""
    from mlx_rsg.io import read_json_object
    from mlx_rsg.run import read_run_json, resolve_backbone

    root = Path(path)
    if (root / "run.json").is_file():
        root = resolve_backbone(root, read_run_json(root), verify=False)
    config = read_json_object(root / "config.json", f"{path}: not a model or run directory")
    config = config.get("text_config", config)
    return config, "quantization" in config


# -------------------------------------------------------------------------------- data


@main.group("data")
def data_group() -> None:
    """Inspect or download Russian SuperGLUE data."""


@data_group.command("info")
@click.argument("path", type=click.Path())
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False),
              help="A model directory: also report the units' token lengths with its tokenizer.")
@click.option("--max-len", type=number_type(int, AT_LEAST_1), default=256, show_default=True,
              help="With --model: report the share of units longer than this.")
def data_info_command(path: str, model_dir: str | None, max_len: int) -> None:
    """Examples, label distribution and mean length (characters) per task and split in PATH
    (a directory in the official layout, the official zip, or .jsonl.gz files); with --model,
    the units' token lengths (median / 95th percentile / longest), the share --max-len
    truncates, the shortest multiple of 32 that 95 % of them fit in, and what one pass costs:
    every unit's tokens at --max-len, and with each record's shared passage counted once (what
    train --task-max-train budgets spend)."""
    from mlx_rsg.data.info import format_table, summary

    tokenizer = None
    if model_dir:
        from mlx_rsg.model.backbone import load_tokenizer

        tokenizer = load_tokenizer(model_dir)
    # read everything first: an error prints nothing else
    table = format_table(summary(path, tokenizer, max_len))
    click.echo(path)
    click.echo(table)


@data_group.command("download")
@click.argument("out_dir", metavar="DIR", type=click.Path())
@click.option("--revision", default=None, help="A branch, tag or commit of the Hub repo.")
@click.option("--force", is_flag=True, help="Overwrite DIR.")
def data_download_command(out_dir: str, revision: str | None, force: bool) -> None:
    """Download the Hub dataset repo RussianNLP/russian_super_glue into DIR (atomically)."""
    from mlx_rsg.data import available_splits
    from mlx_rsg.data.info import HUB_REPO, download
    from mlx_rsg.tasks import TASKS

    out = download(out_dir, force=force, revision=revision)
    found = [t for t in TASKS if available_splits(out, t)]
    click.echo(f"{HUB_REPO} -> {out}")
    click.echo(f"tasks readable in the official layout: {', '.join(found) or 'none'}")


# ----------------------------------------------------------------------------- convert


@main.command("convert")
@click.argument("source")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="OUT directory.")
@config_options(ConvertOptions)
def convert_command(source, out, **options) -> None:
    """Convert SOURCE (gemma-3-270m, a .gguf file, an HF model dir or a hub id org/name) to an
    MLX model directory OUT."""
    from mlx_rsg.convert.hf import convert, summary

    opts = config_from_options(ConvertOptions, options)
    click.echo(summary(convert(source, out, **dataclasses.asdict(opts))))


# ------------------------------------------------------------------------------- train


@main.command("train")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_dir", required=True, type=click.Path(), help="RSG data directory.")
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(),
              help="RUN_DIR to write.")  # fmt: skip
@click.option("--tasks", default="all", show_default=True,
              help="all, or a comma list (terra,rcb,...; any case). LiDiRus rides on TERRa.")
@config_options(TrainConfig, skip=("tasks",))
@click.option("--resume", is_flag=True, help="Continue RUN_DIR from its last checkpoint.")
@click.option("--fuse", is_flag=True, help="Merge LoRA into a standalone backbone copy in RUN_DIR.")
@click.option("--copy-backbone", is_flag=True, help="Copy the backbone into RUN_DIR.")
@click.option("--force", is_flag=True, help="Overwrite an existing RUN_DIR.")
def train_command(model_dir, data_dir, run_dir, tasks, resume, fuse, copy_backbone, force, **flags):
    """Train classification heads for the RSG tasks on MODEL_DIR (a converted model)."""
    from mlx_rsg.data.sample import tasks_with_train
    from mlx_rsg.tasks import parse_tasks
    from mlx_rsg.train.loop import train

    _runs_a_model()
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
    world = _world()
    metrics = train(model_dir, data_dir, run_dir, cfg, resume=resume, force=force, fuse=fuse,
                    copy_backbone=copy_backbone, world=world)  # fmt: skip
    if not world.is_main:
        return
    best, final = metrics.get("best") or {}, metrics.get("final")
    split = "dev" if cfg.has_dev else "val"
    click.echo(
        f"best epoch {best.get('epoch')}: {split} score {best.get('score', float('nan')):.4f}"
        + (f"; val total with LiDiRus {final['total']:.4f}" if final else "")
        + f"  -> {run_dir}"
    )


# ----------------------------------------------------------------------------- predict


@main.command("predict")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--task", help="Task of the --input records (any case).")
@click.option("--input", "input_path", help="JSON Lines records in the official format, or -.")
@click.option("--data", "data_dir", type=click.Path(), help="RSG data directory (with --split).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default=None)
@click.option("--tasks", "task_list", default="all", show_default=True,
              help="With --data: all, or a comma list.")  # fmt: skip
@click.option("--submission", type=click.Path(dir_okay=False),
              help="With --split test: write the official submission zip here.")  # fmt: skip
@click.option("--batch-size", type=number_type(int, AT_LEAST_1), default=16, show_default=True)
@click.option("--max-per-task", type=number_type(int, AT_LEAST_1), default=None,
              help="With --data: ~N examples per task, whole records drawn with --seed.")
@click.option("--seed", type=number_type(int, AT_LEAST_0), default=0, show_default=True,
              help="Draws --max-per-task's records (train --seed S draws the same val records).")
def predict_command(run_dir, task, input_path, data_dir, split, task_list, submission, batch_size,
                    max_per_task, seed) -> None:  # fmt: skip
    """Predict with a trained RUN_DIR: one JSON line per --input record, val scores of a --data
    split, or the official test submission zip. Every flag is checked before the model loads."""
    from mlx_rsg import predict

    _runs_a_model()
    _check_predict_flags(task, input_path, data_dir, split, submission)
    records = predict.read_records(input_path, task) if input_path is not None else None
    world = _world()
    predictor = predict.load(run_dir, world=world)
    predictor.batch_size = batch_size
    if records is not None:
        rows = predictor.predict(task, records)
        for row in rows if world.is_main else ():
            click.echo(json.dumps(row, ensure_ascii=False, default=_json_default))
        return
    by_task = predict.data_records(predictor.info, data_dir, split, task_list, max_per_task, seed)
    if split == "test":
        predict.write_run_submission(predictor, by_task, submission)
        if world.is_main:
            click.echo(f"wrote {submission} ({', '.join(by_task)})")
    else:
        scores = predictor.evaluate(by_task)
        if world.is_main:
            _print_scores(scores)


def _check_predict_flags(task, input_path, data_dir, split, submission) -> None:
    if (input_path is None) == (data_dir is None):
        raise UserError("give either --task and --input FILE.jsonl, or --data RSG_DIR --split")
    if input_path is not None and not task:
        raise UserError("--input needs --task")
    if data_dir is not None and split is None:
        raise UserError("--data needs --split (val to score, test with --submission)")
    if submission and split != "test":
        raise UserError("--submission needs --split test")
    if split == "test" and not submission:
        raise UserError("--split test needs --submission out.zip (test labels are hidden)")


def _print_scores(scores: dict[str, Any]) -> None:
    from mlx_rsg.tasks import total_score

    for t, m in scores["tasks"].items():
        detail = " ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "score")
        click.echo(f"{t:8s} {m['score']:.4f}  {detail}")
    if len(scores["tasks"]) > 1:
        total = total_score(
            {t: {k: v for k, v in m.items() if k != "score"} for t, m in scores["tasks"].items()}
        )
        click.echo(f"{'total':8s} {total:.4f}  (mean over {len(scores['tasks'])} tasks)")


def _json_default(v):
    import numpy as np

    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


# ---------------------------------------------------------------------------- quantize


@main.command("quantize")
@click.argument("source", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="OUT directory.")
@config_options(QuantizeOptions)
def quantize_command(source, out, **options) -> None:
    """Quantize a RUN_DIR (trained weights merged first) or a converted MODEL_DIR into OUT."""
    from mlx_rsg.quant.quantize import quantize

    _runs_a_model()
    opts = config_from_options(QuantizeOptions, options)
    quantize(source, out, **dataclasses.asdict(opts), world=_world())


# ------------------------------------------------------------------------------- bench


@main.command("bench")
@click.argument("baseline", type=click.Path())
@click.argument("variants", nargs=-1, type=click.Path())
@click.option("--data", "data_dir", required=True, type=click.Path(), help="RSG data directory.")
@click.option("-o", "--output", "out_dir", default="bench", show_default=True, type=click.Path())
@config_options(BenchConfig)
def bench_command(baseline, variants, data_dir, out_dir, **options) -> None:
    """Score BASELINE (fp32 run dir) and each VARIANT run dir on every task in --data: official
    metrics, total, delta, flip rate, per-class P/R/F1, size, memory, latency, throughput."""
    from mlx_rsg.bench.measure import bench
    from mlx_rsg.bench.report import write_markdown

    _runs_a_model()
    world = _world()
    result = bench(baseline, list(variants), data_dir, out_dir,
                   config_from_options(BenchConfig, options), world=world)  # fmt: skip
    if not world.is_main:
        return
    click.echo(write_markdown(result))
    click.echo(f"wrote {os.path.join(out_dir, 'bench.json')}, bench.md, bench.png")


# --------------------------------------------------------------------------- quickstart


@main.command("quickstart")
@click.option("--data", "data_dir", required=True, type=click.Path(), help="RSG data directory.")
@click.option("-o", "--work-dir", default="quickstart", show_default=True, type=click.Path())
@config_options(QuickstartConfig, only=("source",))
@click.option("--force", is_flag=True, help="Start over instead of reusing finished steps.")
def quickstart_command(data_dir, work_dir, force, **options) -> None:
    """convert -> train heads on every task -> quantize 8/4-bit -> bench, CPU-sized (minutes)."""
    from mlx_rsg.quickstart import quickstart

    _runs_a_model()
    quickstart(data_dir, work_dir, config_from_options(QuickstartConfig, options), force)


# -------------------------------------------------------------------------------- serve


@main.command("serve")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@config_options(ServeConfig)
def serve_command(run_dirs, **options) -> None:
    """Serve RUN_DIRS (fp32 or quantized runs, named by their directory) over HTTP: POST
    /v1/predict, GET /v1/models, /health, a page to try them at /, the API's schema at /docs.
    Binds 127.0.0.1 unless --host says otherwise; SIGTERM or Ctrl-C stops it gracefully."""
    from mlx_rsg.serve.server import serve

    _runs_a_model()
    serve(list(run_dirs), config_from_options(ServeConfig, options))


# ------------------------------------------------------------------------------- launch


@main.command("launch", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
def launch_command(args) -> None:
    """mlx.launch ARGS (its options, then -- and the command every rank runs), with an exit code:
    2 and the failing rank's error as the last line when any rank failed, 0 when all succeeded
    (mlx.launch itself exits 0 either way)."""
    from mlx_rsg.launch import launch

    sys.exit(launch(list(args)))
