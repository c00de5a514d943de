"""`mlx-rsg data ...`: a thin click layer over mlx_rsg.data_info (imported lazily)."""

from __future__ import annotations

import click


@click.group("data")
def data_group() -> None:
    """Inspect or download Russian SuperGLUE data."""


@data_group.command("info")
@click.argument("path", type=click.Path())
def info_command(path: str) -> None:
    """Examples, label distribution and mean length (characters) per task and split in PATH
    (a directory in the official layout, the official zip, or .jsonl.gz files)."""
    from mlx_rsg.data.info import format_table, summary

    table = format_table(summary(path))  # read everything first: an error prints nothing else
    click.echo(path)
    click.echo(table)


@data_group.command("download")
@click.argument("out_dir", metavar="DIR", type=click.Path())
@click.option("--revision", default=None, help="A branch, tag or commit of the Hub repo.")
@click.option("--force", is_flag=True, help="Overwrite DIR.")
def download_command(out_dir: str, revision: str | None, force: bool) -> None:
    """Download the Hub dataset repo RussianNLP/russian_super_glue into DIR (atomically)."""
    from mlx_rsg import data
    from mlx_rsg.data.info import HUB_REPO, download
    from mlx_rsg.tasks import TASKS

    out = download(out_dir, force=force, revision=revision)
    found = [t for t in TASKS if data.available_splits(out, t)]
    click.echo(f"{HUB_REPO} -> {out}")
    click.echo(f"tasks readable in the official layout: {', '.join(found) or 'none'}")
