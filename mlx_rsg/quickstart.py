"""`mlx-rsg quickstart`: the whole pipeline, CPU-sized, in one command.

    convert (embedded Gemma-3-270M) -> train every task (the top 4 of the first 10 blocks, one
    epoch, chosen and calibrated on a dev split) -> quantize (8-bit, 4-bit round-to-nearest,
    4-bit GPTQ calibrated on RSG train examples) -> bench

Everything goes under WORK_DIR (model/, runs/fp32, runs/<recipe>, bench/). A step whose output
is already complete is reused, so an interrupted quickstart continues where it stopped; `--force`
starts over. The defaults are sized for minutes on 2 CPU cores (docs/cli.md): the real run's
shape on fewer blocks, examples and tokens (blocks 7-10 trained, the blocks above never run, the
bottom six's output computed once per example) and caps counted in classification examples.
They show the pipeline and its quality/speed trade-offs, not the best scores the model can
reach — see docs/training.md for a full run.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlx_rsg.errors import UserError
from mlx_rsg.options import opt


@dataclass
class QuickstartConfig:
    source: str = opt("gemma-3-270m", "What to convert (anything `mlx-rsg convert` accepts).")
    # The best calibrated dev score within twice the minutes of the heads the quickstart trained
    # before (docs/training.md, "The quickstart's recipe, per minute"): `freeze` on the top
    # `trained_blocks` of the blocks up to `feature_depth` (block 10 of Gemma-3-270M's 18; the
    # blocks above never run), one epoch.
    method: str = "freeze"
    feature_depth: float = 10 / 18
    trained_blocks: int = 4
    epochs: int = 1
    lr: float = 5e-5
    head_lr: float = 1e-3
    batch_size: int = 8
    grad_accum: int = 2
    warmup: int = 20
    max_len: int = 128  # each task gets what 95 % of its examples fit in, at most this
    max_train_per_task: int = 240  # classification examples per task
    dev_per_task: int = 80  # carved out of train: the epoch and decisions are chosen on it
    max_eval_per_task: int = 80
    recipes: tuple[str, ...] = ("q8", "q4", "q4-gptq")  # quantize/<name>.toml
    seed: int = 0


# A whole quickstart's `quickstart.json` (its step minutes, machine and table), committed: each step
# says its share of that run's time as it starts, so a newcomer can tell how far along it is. The
# total depends on the CPU; docs/cli.md renders the same file.
MEASURED = Path(__file__).with_name("quickstart_measured.json")
RESULT = "quickstart.json"  # what a quickstart writes into WORK_DIR

# What the quickstart's closing lines point to: the command of the committed real run
# (benchmarks/results/quality.json; docs/training.md, "Score against minutes"), the first 12
# blocks with the top 4 trained and PARus's head trained alone, inside 90 minutes on 2 cores.
FULL_RECIPE = (
    "mlx-rsg train {model} --data {data} -o runs/g270m --method freeze --feature-layer 12 "
    "--freeze-layers 8 --max-train-per-task 1000 "
    "--task-max-train terra=all,danetqa=1400,russe=1600,muserc=1800 --dev-per-task 160 "
    "--epochs 2 --lr 5e-5 --head-lr 1e-3 --warmup 30 --max-len 640 --task-max-len auto "
    "--head-only PARus"
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _done_run(path: Path) -> bool:
    try:
        info = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("status") == "done" and (path / "trainable.safetensors").is_file()


def measured() -> dict | None:
    """The committed quickstart's result (None if the file is missing or unreadable)."""
    try:
        result = json.loads(MEASURED.read_text(encoding="utf-8"))
        return result if isinstance(result.get("steps"), dict) and result.get("minutes") else None
    except (OSError, ValueError, AttributeError):
        return None


def _share(step: str) -> str:
    result = measured()
    if result is None or step not in result["steps"]:
        return ""
    return f"(~{100 * result['steps'][step] / result['minutes']:.0f}% of the quickstart's time)"


def _timed(steps: dict[str, float], label: str, fn, *args):
    """Run one step, say how long it took and record its minutes under `label`, unless the step
    returned False (it reused a finished output: no measurement)."""
    t0 = time.perf_counter()
    out = fn(*args)
    minutes = (time.perf_counter() - t0) / 60
    _log(f"      {label} took {minutes:.1f} min")
    if out is not False:
        steps[label] = round(minutes, 2)
    return out


def step_convert(cfg: QuickstartConfig, model_dir: Path) -> bool:
    from mlx_rsg.convert.hf import convert
    from mlx_rsg.model_files import MANIFEST

    if (model_dir / MANIFEST).is_file():
        _log(f"[1/4] convert: using {model_dir}")
        return False
    _log(f"[1/4] convert {cfg.source} -> {model_dir} {_share('convert')}")
    convert(cfg.source, model_dir, dtype="float32", force=model_dir.exists())
    return True


def step_train(cfg: QuickstartConfig, model_dir: Path, data_dir: Path, run_dir: Path) -> bool:
    from mlx_rsg.data.sample import tasks_with_train
    from mlx_rsg.train import TRAIN_TASKS, TrainConfig, train
    from mlx_rsg.train.loop import num_layers

    if _done_run(run_dir):
        _log(f"[2/4] train: using {run_dir}")
        return False
    tasks = tasks_with_train(data_dir, TRAIN_TASKS)
    depth = num_layers(model_dir)
    layer = feature_layer(cfg, depth)
    frozen = max(0, layer - cfg.trained_blocks)
    _log(f"[2/4] train {cfg.method}: blocks {frozen + 1}-{layer} of {depth} for "
         f"{', '.join(tasks)} -> {run_dir} {_share('train')}")  # fmt: skip
    tcfg = TrainConfig(
        tasks=tasks,
        method=cfg.method,
        feature_layer=layer,
        freeze_layers=frozen,
        epochs=cfg.epochs,
        lr=cfg.lr,
        head_lr=cfg.head_lr,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        warmup=cfg.warmup,
        max_len=cfg.max_len,
        task_max_len=("auto",),
        max_train_per_task=cfg.max_train_per_task,
        dev_per_task=cfg.dev_per_task,
        max_eval_per_task=cfg.max_eval_per_task,
        seed=cfg.seed,
    )
    train(model_dir, data_dir, run_dir, tcfg, force=run_dir.exists(), log=_log)
    return True


def feature_layer(cfg: QuickstartConfig, depth: int) -> int:
    """The block whose output the heads read (the blocks above are dropped): `feature_depth` of
    a `depth`-block model."""
    return min(depth, max(1, round(cfg.feature_depth * depth)))


def step_quantize(run_dir: Path, out: Path, recipe: str, data_dir: Path) -> bool:
    from mlx_rsg.quant.quantize import quantize

    if _done_run(out):
        _log(f"[3/4] quantize: using {out}")
        return False
    _log(f"[3/4] quantize {recipe} -> {out} {_share(f'quantize {recipe}')}")
    quantize(run_dir, out, recipe=recipe, force=out.exists(), calib_data=data_dir)
    return True


def quickstart(data_dir: str | Path, work_dir: str | Path, cfg: QuickstartConfig, force: bool):
    """Run the four steps; returns bench.json's content and prints bench.md's table."""
    from mlx_rsg.accel.blas import warn_if_slow
    from mlx_rsg.bench.measure import BenchConfig, bench

    data_dir, work = Path(data_dir), Path(work_dir)
    if not data_dir.exists():
        raise UserError(f"--data: {data_dir} does not exist")
    warn_if_slow(_log)
    if force and work.exists():
        _check_replaceable(work, data_dir)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir, runs = work / "model", work / "runs"
    t0 = time.perf_counter()
    _announce()
    steps: dict[str, float] = {}
    _timed(steps, "convert", step_convert, cfg, model_dir)
    _timed(steps, "train", step_train, cfg, model_dir, data_dir, runs / "fp32")
    variants = []
    for recipe in cfg.recipes:
        out = runs / recipe
        _timed(steps, f"quantize {recipe}", step_quantize, runs / "fp32", out, recipe, data_dir)
        variants.append(str(out))
    _log(f"[4/4] bench fp32 vs {', '.join(cfg.recipes)} {_share('bench')}")
    # The same val records training evaluated on (same cap, same seed), so bench's fp32 total
    # is the training run's total with LiDiRus.
    bcfg = BenchConfig(max_per_task=cfg.max_eval_per_task, force=True, seed=cfg.seed)
    args = (str(runs / "fp32"), variants, str(data_dir), str(work / "bench"), bcfg, _log)
    result = _timed(steps, "bench", bench, *args)
    minutes = (time.perf_counter() - t0) / 60
    table = (work / "bench" / "bench.md").read_text(encoding="utf-8").split("### Per-class")[0]
    if len(steps) == 3 + len(cfg.recipes):  # every step ran: a whole measurement
        _write_result(work / RESULT, cfg, steps, minutes, table.strip())
    print(table.strip())
    print(f"\n{_same_records_note(runs / 'fp32', result, cfg)}")
    print(f"quickstart: {minutes:.1f} min; everything is in {work}/ (bench/bench.md for details)")
    print(
        f"\nThis was a demonstration of the pipeline: `{cfg.method}` for {cfg.epochs} "
        f"epoch{'s' if cfg.epochs != 1 else ''} on ~{cfg.max_train_per_task} training examples "
        f"per task of at most {cfg.max_len} tokens, scored on ~{cfg.max_eval_per_task} val "
        "examples per task. "
        "The full recipe (docs/training.md) trains blocks 9-12 of the first 12 on up to 1,800 "
        "examples per task of up to 640 tokens for 2 epochs, and scores all of val once "
        "(its minutes and score on 2 cores: the README, and docs/training.md, \"Score against "
        "minutes\"):"
        "\n  "
        + FULL_RECIPE.format(model=model_dir, data=data_dir)
    )
    serve = f"mlx-rsg serve {runs / 'fp32'} {' '.join(variants)} --data {data_dir}"
    print(f"\nTry the runs on a page or over HTTP: {serve}   (then open http://127.0.0.1:8000/)")
    return result


def _announce() -> None:
    result = measured()
    if result is None:
        _log("quickstart: 4 steps")
        return
    cpu = result.get("machine", {})
    _log(f"quickstart: 4 steps, {result['minutes']:.0f} min measured on {cpu.get('cores', '?')} "
         "CPU cores with a fast BLAS; each step says its share of the time")  # fmt: skip


def _write_result(path: Path, cfg: QuickstartConfig, steps: dict, minutes: float, table: str):
    """WORK_DIR/quickstart.json: what this quickstart cost per step, where, and its table (the
    committed MEASURED is one of these)."""
    from dataclasses import asdict

    from mlx_rsg.accel.fastpaths import machine
    from mlx_rsg.io import write_json

    write_json(path, {"benchmark": "quickstart", "minutes": round(minutes, 2), "steps": steps,
                      "machine": machine(), "config": asdict(cfg), "table": table})  # fmt: skip


def _check_replaceable(work: Path, data_dir: Path) -> None:
    """--force deletes WORK_DIR: only one the quickstart made (model/, runs/, bench/ and its own
    temporaries) and that holds no input (`-o .` in a checkout must not delete the checkout)."""
    from mlx_rsg.io import holds

    if holds(work, data_dir):
        raise UserError(f"{work}: holds the data {data_dir}; refusing to delete it with --force")
    foreign = sorted(p.name for p in work.iterdir() if p.name not in _OURS and p.name[0] != ".")
    if foreign:
        raise UserError(f"{work}: not a quickstart directory (holds {foreign[0]}); refusing to "
                        "delete it with --force")  # fmt: skip


_OURS = {"model", "runs", "bench", RESULT}  # what a quickstart writes into WORK_DIR


def _same_records_note(run_dir: Path, result: dict, cfg: QuickstartConfig) -> str:
    """How training's val score relates to the table's fp32 total (the same records)."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    fp32 = result["variants"][0]
    total = fp32["total"] if fp32["total"] is not None else fp32["total_fixture"]
    same = (f"bench's fp32 total {total:.3f}: the same ~{cfg.max_eval_per_task} val examples per "
            f"task (seed {cfg.seed}).")  # fmt: skip
    final = metrics.get("final") or {}
    if cfg.dev_per_task:
        return (f"Training chose its epoch and decisions on a dev split carved out of train "
                f"and scored val once, with LiDiRus, as bench counts: {final['total']:.3f}; "
                f"{same}")  # fmt: skip
    with_lidirus = f"; with LiDiRus, as bench counts, {final['total']:.3f}" if final else ""
    return (f"Training's val score {metrics['best']['score']:.3f} (best epoch) is the mean over "
            f"the trained tasks{with_lidirus}; {same}")  # fmt: skip
