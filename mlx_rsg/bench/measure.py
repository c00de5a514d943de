"""`mlx-rsg bench`: quality, size, memory and speed of an fp32 run and its variants, side by side.

    from mlx_rsg.bench.measure import bench
    result = bench("runs/fp32", ["runs/q8", "runs/q4"], "rsg/", "bench-out", BenchConfig())

Every run directory is loaded with `mlx_rsg.load` and scored on the same records through the same
path as `mlx-rsg predict` (`predict.score_units` -> `tasks.decode` -> `tasks.score_task`). Its
predictions are also written as an official submission zip, read back and rescored: bench stops
with an error unless the two scores are exactly equal, so the table is what the leaderboard would
say about the same predictions.

Tasks whose data are fixtures (synthetic, ours) are marked and kept out of `total`: they get their
own `total_fixture`. A task is a fixture if --fixture-tasks names it, or if its data path has a
directory named `fixtures` or a `FIXTURE` marker file (in the task's directory or the data root).

OUT_DIR/bench.json (format "mlx-rsg-bench", version 1):
  format, version, created (UTC ISO time), env {mlx_rsg, mlx, device, blas},
  config {data, split, max_per_task, batch_size, latency_samples, warmup, seed},
  baseline: name of the first run (the reference for delta and flip rate),
  tasks: {task: {records, units, fixture, metrics: [official metric names]}},
  skipped: {task: reason}  (tasks the data or the runs do not have),
  variants: [ {
    name, path, quantization (the backbone config's "quantization" entry, or null),
    scores: {task: {<metric>: value, ..., score: mean of the task's metrics}},
    total, total_fixture: total_score over real / fixture tasks (null when there are none),
    delta, delta_fixture: total - the baseline's (0 for the baseline),
    delta_tasks: {task: score - the baseline's score},
    flips: {task: fraction of predictions that differ from the baseline's},
    flip_rate: all tasks pooled (one prediction = one record; one answer for MuSeRC),
    flip_directions: {task: {"<baseline answer>-><this run's answer>": count}, most first},
    delta_se: {rounds, tasks: {task: SE}, total: SE} of the deltas, by a paired bootstrap over
              records (compare.py; null for the baseline),
    flips_by_margin: {edges, decisions, flipped, tasks}: per bin of the baseline's margin, over
              the label tasks (compare.py; null for the baseline),
    class_report: {task: {label: {precision, recall, f1, support}}}  (not RuCoS),
    size_bytes: {backbone, trainable, substitution, total}  (weight files on disk),
    memory: {mlx_peak_bytes (mx.get_peak_memory), rss_peak_bytes (getrusage high-water, reset
             per run where Linux allows), rss_reset: bool},
    latency_ms: {p50, p95, samples, batch_size: 1}  (one record end to end: tokenise, forward,
                decode; the same sampled records for every run, after warm-up),
    throughput: {examples_per_s, units_per_s, seconds, batch_size}  (the whole scoring pass),
    submission: path of the submission zip in OUT_DIR, relative } ]
"""

from __future__ import annotations

import gc
import json
import random
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_rsg.accel import blas
from mlx_rsg.bench.compare import against_baseline, flat_predictions, metrics
from mlx_rsg.bench.config import BenchConfig
from mlx_rsg.bench.report import write_chart, write_markdown
from mlx_rsg.data import available_splits
from mlx_rsg.distributed import SINGLE, World
from mlx_rsg.errors import UserError
from mlx_rsg.io import atomic_dir, check_replaceable, read_json_object
from mlx_rsg.metrics import class_report
from mlx_rsg.options import check_bounds
from mlx_rsg.predict import data_records, load, score_units
from mlx_rsg.progress import Progress
from mlx_rsg.run import RunRef, disk_size, open_runs, quantization, resolve_backbone
from mlx_rsg.submission import read_submission, write_submission
from mlx_rsg.tasks import (
    REGISTRY,
    TASKS,
    decode,
    make_units,
    official_name,
    total_score,
)
from mlx_rsg.version import __version__

BENCH_FORMAT = "mlx-rsg-bench"
BENCH_VERSION = 1


# --------------------------------------------------------------------------- run dirs


def check_runs(baseline: str, variants: list[str]) -> list[RunRef]:
    """Read every run.json before any model is loaded; refuse runs that cannot be compared."""
    refs = open_runs([baseline, *variants])
    base = refs[0]
    for ref in refs[1:]:
        ours, theirs = _architecture(ref), _architecture(base)
        if ours != theirs:
            raise UserError(f"{ref.path}: its backbone ({_describe(ours)}) is not the baseline's "
                            f"({_describe(theirs)}): not a variant of the same model")  # fmt: skip
        if ref.info["heads"] != base.info["heads"]:
            raise UserError(
                f"{ref.path}/run.json: field 'heads': {_heads(ref.info)} differ from the "
                f"baseline's {_heads(base.info)} ({base.path})"
            )
        for task, t in base.info["tasks"].items():
            other = ref.info["tasks"].get(task)
            if other is not None and other.get("labels") != t.get("labels"):
                raise UserError(
                    f"{ref.path}/run.json: field 'tasks.{task}.labels': {other.get('labels')} "
                    f"differ from the baseline's {t.get('labels')}"
                )
    return refs


def _architecture(ref: RunRef) -> dict[str, Any]:
    """What quantization keeps and another model changes: type, width, the blocks the
    classifier runs (a feature-layer run's quantized copy stores no others), vocabulary."""
    root = resolve_backbone(ref.path, ref.info, verify=False)
    config = read_json_object(root / "config.json", f"{root}: no config.json")
    config = config.get("text_config", config)
    arch = {k: config.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                       "vocab_size")}  # fmt: skip
    feature_layer = ref.info["classifier"].get("feature_layer")
    if isinstance(feature_layer, int) and isinstance(arch["num_hidden_layers"], int):
        arch["num_hidden_layers"] = min(arch["num_hidden_layers"], feature_layer)
    return arch


def _describe(arch: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in arch.items())


def _heads(info: dict) -> str:
    return ", ".join(f"{k}:{v}" for k, v in info["heads"].items())


def load_run(ref: RunRef, world: World = SINGLE):
    """mlx_rsg.load, with unreadable weight files turned into a one-line error."""
    try:
        predictor = load(ref.path, world=world)
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{ref.path}: cannot load the run: {msg}") from None
    return predictor


# --------------------------------------------------------------------------- data


def select_data(
    info: dict, data_dir: str, cfg: BenchConfig
) -> tuple[dict[str, list], dict[str, str], set[str]]:
    """(records by task, skipped task -> reason, fixture tasks) for the baseline's tasks."""
    if not Path(data_dir).exists():
        raise UserError(f"--data: {data_dir} does not exist")
    records = data_records(info, data_dir, cfg.split, "all", cfg.max_per_task, cfg.seed)
    skipped = {}
    for task in TASKS:
        if task in records:
            continue
        head = REGISTRY[task].head
        if head not in info["heads"]:
            skipped[task] = f"the run has no {head} head"
        elif task != "LiDiRus" and cfg.split not in available_splits(data_dir, task):
            skipped[task] = f"no {cfg.split} split in the data"
        else:
            skipped[task] = "no labelled records in the data"
    for task, recs in records.items():
        if REGISTRY[task].unlabelled_field(recs[0]):
            raise UserError(
                f"{data_dir}: {task} {cfg.split} has no labels (bench needs a labelled split)"
            )
    fixtures = {t for t in records if is_fixture(data_dir, t, cfg.fixture_tasks)}
    return records, skipped, fixtures


def is_fixture(data_dir: str, task: str, named: tuple[str, ...] = ()) -> bool:
    """Named by --fixture-tasks, or a `fixtures` directory on the path, or a FIXTURE marker."""
    lowered = {t.lower() for t in named}
    if "all" in lowered or task.lower() in lowered:
        return True
    root = Path(data_dir).resolve()
    task_dir = (Path(data_dir) / task).resolve()
    if "fixtures" in root.parts or "fixtures" in task_dir.parts:
        return True
    return (root / "FIXTURE").exists() or (task_dir / "FIXTURE").exists()


# --------------------------------------------------------------------------- predictions


def check_submission(zip_path: Path, records: dict[str, list], preds: dict, scores: dict) -> None:
    """Write the official submission, read it back, rescore; the scores must be identical."""
    write_submission(zip_path, {t: (records[t], preds[t]) for t in records})
    back = read_submission(zip_path)
    for task, recs in records.items():
        if task not in back:
            raise RuntimeError(f"{zip_path}: {task} missing from the submission zip")
        again = metrics(task, recs, [back[task][r.idx] for r in recs])
        if again != scores[task]:
            raise RuntimeError(
                f"{zip_path}: {task}: the submission scores {again}, bench scored {scores[task]}"
            )


# --------------------------------------------------------------------------- timing


def predict_all(predictor, records: dict[str, list], batch_size: int, desc: str):
    """Predictions per task (the Predictor.predictions path), their logits per task in unit
    order, the pass's wall time and its number of units."""
    n_units = sum(len(make_units(t, recs, train=False)) for t, recs in records.items())
    mine = sum(len(make_units(t, predictor.world.shard(recs), train=False))
               for t, recs in records.items())  # fmt: skip
    bar = Progress(mine, desc)

    preds, logits_by_task, seconds = {}, {}, 0.0
    for task, recs in records.items():
        t0 = time.perf_counter()
        units, logits = score_units(
            predictor.model, predictor.tokenizer, task, recs, batch_size,
            on_batch=lambda rows: bar.update(rows, rows), world=predictor.world,
        )
        preds[task] = decode(task, recs, [u.key for u in units], logits)
        logits_by_task[task] = logits
        seconds += time.perf_counter() - t0
    bar.close()
    return preds, logits_by_task, seconds, n_units


def latency_sample(records: dict[str, list], n: int, seed: int) -> list[tuple[str, Any]]:
    """Up to n (task, record) pairs, round-robin over tasks, drawn once from the seed."""
    rng = random.Random(seed)
    pools = {t: rng.sample(recs, len(recs)) for t, recs in records.items()}
    out: list[tuple[str, Any]] = []
    while len(out) < n and any(pools.values()):
        for task, pool in pools.items():
            if pool and len(out) < n:
                out.append((task, pool.pop()))
    return out


def measure_latency(predictor, sample: list, warmup: int, desc: str) -> dict[str, Any]:
    def one(task, rec):
        units, logits = score_units(
            predictor.model, predictor.tokenizer, task, [rec], 1
        )
        decode(task, [rec], [u.key for u in units], logits)

    for task, rec in sample[:warmup]:
        one(task, rec)
    bar = Progress(len(sample), desc)
    times = []
    for task, rec in sample:
        t0 = time.perf_counter()
        one(task, rec)
        times.append(time.perf_counter() - t0)
        bar.update(1, 1)
    bar.close()
    ms = np.array(times) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)) if len(ms) else None,
        "p95": float(np.percentile(ms, 95)) if len(ms) else None,
        "samples": len(ms),
        "batch_size": 1,
    }


# --------------------------------------------------------------------------- memory


def reset_rss_peak() -> bool:
    """Reset the process's RSS high-water mark (Linux: /proc/self/clear_refs, value 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes; Linux: KiB


# --------------------------------------------------------------------------- the bench


def bench_run(ref: RunRef, records, sample, base_preds, base_logits, cfg: BenchConfig,
              out: Path | None, fixtures, world: World = SINGLE):  # fmt: skip
    """Every measurement for one run directory (`out` None: write no submission). With several
    ranks, rank 0 times the latency sample alone, then all score their shares of the records."""
    gc.collect()
    mx.clear_cache()
    rss_reset = reset_rss_peak()
    mx.reset_peak_memory()
    predictor = load_run(ref, world)
    latency = None
    if world.is_main:
        latency = measure_latency(predictor, sample, cfg.warmup, f"{ref.name} latency")
    world.barrier()
    preds, logits, seconds, n_units = predict_all(predictor, records, cfg.batch_size,
                                                  f"{ref.name} predict")  # fmt: skip
    memory = {
        "mlx_peak_bytes": int(mx.get_peak_memory()),
        "rss_peak_bytes": rss_peak_bytes(),
        "rss_reset": rss_reset,
    }
    del predictor

    scores = {t: metrics(t, recs, preds[t]) for t, recs in records.items()}
    zip_rel = f"submissions/{ref.name}.zip"
    if out is not None:
        check_submission(out / zip_rel, records, preds, {t: scores[t] for t in records})
    compared = against_baseline(records, preds, base_preds, base_logits, fixtures, cfg.seed)
    n_records = sum(len(r) for r in records.values())
    row = {
        "name": ref.name,
        "path": str(ref.path),
        "quantization": quantization(ref),
        "scores": scores,
        **_totals(scores, fixtures),
        **compared,
        "class_report": _class_reports(records, preds),
        "size_bytes": disk_size(ref),
        "memory": memory,
        "latency_ms": latency,
        "throughput": {
            "examples_per_s": n_records / seconds if seconds else None,
            "units_per_s": n_units / seconds if seconds else None,
            "seconds": seconds,
            "batch_size": cfg.batch_size,
        },
        "submission": zip_rel,
    }
    return row, preds, logits


def _class_reports(records, preds) -> dict[str, Any]:
    """Per-class precision / recall / F1 of every label task."""
    reports = {}
    for task, recs in records.items():
        labels = REGISTRY[task].class_labels
        if labels is not None:
            gold, pred = flat_predictions(task, recs, preds[task])
            rep = class_report(gold, pred, labels)
            reports[task] = {str(k): {m: _num(v) for m, v in r.items()} for k, r in rep.items()}
    return reports


def _num(v):
    return v.item() if isinstance(v, np.generic) else v


def _totals(scores: dict, fixtures: set[str]) -> dict[str, float | None]:
    def total(tasks):
        per = {t: {k: v for k, v in scores[t].items() if k != "score"} for t in tasks}
        return float(total_score(per)) if per else None

    return {
        "total": total([t for t in scores if t not in fixtures]),
        "total_fixture": total([t for t in scores if t in fixtures]),
    }


def _add_deltas(rows: list[dict]) -> None:
    base = rows[0]
    for row in rows:
        for key in ("total", "total_fixture"):
            a, b = row[key], base[key]
            row["delta" + key[len("total") :]] = None if a is None or b is None else a - b
        row["delta_tasks"] = {
            t: s["score"] - base["scores"][t]["score"] for t, s in row["scores"].items()
        }


def _env() -> dict[str, Any]:
    return {
        "mlx_rsg": __version__,
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "blas": blas.describe(),
    }


def bench(
    baseline: str,
    variants: list[str],
    data_dir: str,
    out_dir: str,
    cfg: BenchConfig | None = None,
    log=None,
    world: World = SINGLE,
) -> dict[str, Any]:
    """Benchmark `baseline` (the fp32 reference) and `variants`; write OUT_DIR atomically.
    `world`: ranks score shares of the records (`distributed`); rank 0 writes OUT_DIR."""
    cfg = cfg or BenchConfig()
    log = log or (lambda m: print(m, file=sys.stderr))
    if not world.is_main:
        log = lambda m: None  # noqa: E731
    _check_config(cfg)
    inputs = (baseline, *variants, data_dir)
    check_replaceable(Path(out_dir), cfg.force, "bench.json", inputs)  # again before the swap
    refs = check_runs(baseline, variants)
    records, skipped, fixtures = select_data(refs[0].info, data_dir, cfg)
    for task, why in skipped.items():
        log(f"skipping {task}: {why}")
    sample = latency_sample(records, cfg.latency_samples, cfg.seed)
    result = _result_head(refs[0].name, records, skipped, fixtures, data_dir, cfg)
    if world.size > 1:
        result["config"]["ranks"] = world.size
    # Rank 0 writes OUT_DIR; the other ranks score their shares and write nothing.
    out = atomic_dir(out_dir, cfg.force, "bench.json", inputs) if world.is_main else nullcontext()
    with out as tmp:
        if tmp is not None:
            (tmp / "submissions").mkdir()
        base_preds = base_logits = None
        for ref in refs:
            row, preds, logits = bench_run(ref, records, sample, base_preds, base_logits, cfg,
                                           tmp, fixtures, world)  # fmt: skip
            if base_preds is None:
                base_preds, base_logits = preds, logits
            result["variants"].append(row)
            log(f"{ref.name}: total {_fmt(row['total'])}, flip rate {row['flip_rate']:.3f}")
        if tmp is None:
            return result
        _add_deltas(result["variants"])
        with open(tmp / "bench.json", "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
            f.write("\n")
        (tmp / "bench.md").write_text(write_markdown(result), encoding="utf-8")
        write_chart(result, tmp / "bench.png")
    return result


def _check_config(cfg: BenchConfig) -> None:
    check_bounds(cfg)
    if cfg.split == "test":
        raise UserError("--split test: test labels are hidden; bench needs val (or train)")
    if cfg.split not in ("train", "val"):
        raise UserError(f"--split: {cfg.split!r} is not val or train")
    for entry in cfg.fixture_tasks:
        for name in entry.split(","):
            if name.strip().lower() != "all" and official_name(name.strip()) is None:
                raise UserError(f"--fixture-tasks: {name.strip()!r} is not a task (one of "
                                f"{', '.join(TASKS)}, or all)")  # fmt: skip


def _result_head(baseline: str, records: dict, skipped: dict, fixtures: set, data_dir: str,
                 cfg: BenchConfig) -> dict[str, Any]:  # fmt: skip
    """bench.json before the runs' rows: format, environment, config, the tasks scored."""
    result: dict[str, Any] = {
        "format": BENCH_FORMAT,
        "version": BENCH_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "env": _env(),
        "config": {"data": str(data_dir), **asdict(cfg)},
        "baseline": baseline,
        "tasks": {
            t: {
                "records": len(recs),
                "units": len(make_units(t, recs, train=False)),
                "fixture": t in fixtures,
                "metrics": list(REGISTRY[t].metrics),
            }
            for t, recs in records.items()
        },
        "skipped": skipped,
        "variants": [],
    }
    result["config"]["fixture_tasks"] = list(cfg.fixture_tasks)
    result["config"].pop("force")
    return result


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
