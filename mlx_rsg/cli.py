"""The `mlx-rsg` command line: a thin layer over the library. Each command imports its module
lazily so `mlx-rsg --help` stays fast."""

from __future__ import annotations

import sys

import click

from mlx_rsg.bench.measure import BenchConfig
from mlx_rsg.errors import UserError
from mlx_rsg.options import config_options
from mlx_rsg.version import __version__


class _Group(click.Group):
    """Turn UserError into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


# Commands that run a model: the CLI lets MLX keep freed buffers for them (backbone.py).
_MODEL_COMMANDS = {"train", "predict", "bench", "quantize", "quickstart"}


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mlx-rsg")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Russian SuperGLUE on Apple MLX: convert, train, quantize, benchmark."""
    if ctx.invoked_subcommand in _MODEL_COMMANDS:
        from mlx_rsg.accel.memory import keep_freed_buffers

        keep_freed_buffers()


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
    from pathlib import Path

    from mlx_rsg.io import read_json_object
    from mlx_rsg.run import read_run_json, resolve_backbone

    root = Path(path)
    if (root / "run.json").is_file():
        root = resolve_backbone(root, read_run_json(root), verify=False)
    config = read_json_object(root / "config.json", f"{path}: not a model or run directory")
    config = config.get("text_config", config)
    return config, "quantization" in config


# --- commands are registered below, one block per module ---

from mlx_rsg.train_cli import predict_command, train_command  # noqa: E402

main.add_command(train_command)
main.add_command(predict_command)


@main.command("bench")
@click.argument("baseline", type=click.Path())
@click.argument("variants", nargs=-1, type=click.Path())
@click.option("--data", "data_dir", required=True, type=click.Path(), help="RSG data directory.")
@click.option("-o", "--output", "out_dir", default="bench", show_default=True, type=click.Path())
@config_options(BenchConfig)
def bench_command(**kwargs) -> None:
    """Score BASELINE (fp32 run dir) and each VARIANT run dir on every task in --data: official
    metrics, total, delta, flip rate, per-class P/R/F1, size, memory, latency, throughput."""
    from mlx_rsg.bench.measure import cli

    cli(**kwargs)


@main.command("quickstart")
@click.option("--data", "data_dir", required=True, type=click.Path(), help="RSG data directory.")
@click.option("-o", "--work-dir", default="quickstart", show_default=True, type=click.Path())
@click.option("--source", default="gemma-3-270m", show_default=True, help="What to convert.")
@click.option("--force", is_flag=True, help="Start over instead of reusing finished steps.")
def quickstart_command(data_dir, work_dir, source, force) -> None:
    """convert -> train heads on every task -> quantize 8/4-bit -> bench, CPU-sized (~14 min)."""
    from mlx_rsg.quickstart import QuickstartConfig, quickstart

    quickstart(data_dir, work_dir, QuickstartConfig(source=source), force)


from mlx_rsg.data_cli import data_group  # noqa: E402

main.add_command(data_group)


@main.command("quantize")
@click.argument("source", type=click.Path())
@click.option("--bits", type=click.Choice(["4", "8"]), default=None, help="q4 or q8 recipe.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default=None,
              help="Weights per scale/bias (default: the recipe's, 64).")
@click.option("--recipe", default=None, help="A quantize/*.toml recipe, e.g. q4-mixed.")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="OUT directory.")
@click.option("--force", is_flag=True, help="Overwrite OUT.")
@click.option("--calib-data", type=click.Path(), default=None,
              help="RSG_DIR whose train splits calibrate a gptq recipe (e.g. q4-gptq).")
def quantize_command(source, bits, group_size, recipe, out, force, calib_data) -> None:
    """Quantize a RUN_DIR (trained weights merged first) or a converted MODEL_DIR into OUT."""
    from mlx_rsg.quant.quantize import quantize

    quantize(
        source,
        out,
        bits=int(bits) if bits else None,
        group_size=int(group_size) if group_size else None,
        recipe=recipe,
        force=force,
        calib_data=calib_data,
    )


@main.command("convert")
@click.argument("source")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="OUT directory.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
              show_default=True, help="Floating-point type of the saved weights.")
@click.option("--force", is_flag=True, help="Overwrite OUT.")
def convert_command(source, out, dtype, force) -> None:
    """Convert SOURCE (gemma-3-270m, a .gguf file, an HF model dir or a hub id org/name) to an
    MLX model directory OUT."""
    from mlx_rsg.convert.hf import convert, summary

    click.echo(summary(convert(source, out, dtype=dtype, force=force)))
