"""Inference from a run directory, without the training code.

    import mlx_rsg
    clf = mlx_rsg.load("runs/gemma-270m")
    clf.predict("TERRa", [{"premise": "...", "hypothesis": "..."}])
    # -> [{"idx": 0, "label": "entailment", "probs": {"entailment": 0.91, "not_entailment": 0.09}}]

The same scoring path (`score_units` -> tasks.decode -> tasks.score_task) is what training uses
for its per-epoch validation, so a run directory predicts exactly what the in-memory model did.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_rsg.accel.cpu_parallel import model_rows
from mlx_rsg.data import available_splits, load_split
from mlx_rsg.data.sample import diagnostic_records, sample_examples
from mlx_rsg.distributed import SINGLE, World
from mlx_rsg.errors import UserError, located
from mlx_rsg.io import jsonl_values
from mlx_rsg.model import shared_prefix, substitution
from mlx_rsg.model.backbone import check_vocabulary, load_backbone, load_tokenizer
from mlx_rsg.model.batching import encode_units, make_batches
from mlx_rsg.model.classifier import RSGClassifier
from mlx_rsg.model.config import ClassifierConfig
from mlx_rsg.model.offsets import apply_calibration
from mlx_rsg.progress import Progress
from mlx_rsg.run import WEIGHTS, dataclass_from_dict, read_run_json, resolve_backbone, task_info
from mlx_rsg.submission import write_submission
from mlx_rsg.tasks import (
    TASKS,
    decode,
    make_units,
    official_name,
    parse_record,
    parse_tasks,
    score_task,
)
from mlx_rsg.weights import load_trainable


def score_units(
    model,
    tokenizer,
    task: str,
    records: list,
    batch_size: int,
    cache=None,
    on_batch=None,
    world: World = SINGLE,
    min_shared: int | None = None,
):
    """Run the classifier over every unit of `records` (truncated to the model's max length for
    the task); return (units, logits) in unit order, logits a numpy array (n_units, n_out).
    `cache`: a features.PrefixCache of the frozen prefix (training's val), filled as needed.
    Without one, units that share a token prefix of `min_shared` tokens or more (default
    `shared_prefix.MIN_SHARED`: a MuSeRC passage, a RuCoS query, a repeated RUSSE or DaNetQA
    text) run it once (`model.shared_prefix`). `on_batch(rows)` is called after each batch.
    A task the model decides otherwise (`model.substitution`: RWSD by the base LM) gets that
    decision's logits.
    `world`: each rank scores its share of the records; every rank gets all the logits."""
    prompt = model.cfg.prompt
    substitution = getattr(model, "substitution", None)
    if substitution is not None and substitution.task == task:  # every rank: a few records
        units = make_units(task, records, train=False, prompt=prompt)
        logits = substitution.logits(records)
        if on_batch is not None:
            on_batch(len(units))
        return units, logits
    if world.size > 1:
        units = make_units(task, records, train=False, prompt=prompt)
        where = {u.key: i for i, u in enumerate(units)}
        mine, logits = score_units(model, tokenizer, task, world.shard(records), batch_size,
                                   cache, on_batch, min_shared=min_shared)  # fmt: skip
        return units, world.gather_rows(len(units), [where[u.key] for u in mine], logits)
    units = make_units(task, records, train=False, prompt=prompt)
    encoded = encode_units(units, tokenizer, model.cfg.max_len_for(task))
    by_key: dict[Any, np.ndarray] = {}

    def keep(batch, logits: mx.array) -> None:
        for key, row in zip(batch.keys, np.array(logits.astype(mx.float32)), strict=True):
            by_key[key] = row
        if on_batch is not None:
            on_batch(len(batch.keys))

    groups, rest = [], encoded
    if cache is not None:
        cache.fill(encoded, batch_size)
    else:
        groups, rest = shared_prefix.group_shared(encoded, min_shared)
    for batch in make_batches(rest, batch_size, rng=None):
        h0 = cache.prefix(batch) if cache is not None else None
        keep(batch, model_rows(model, batch, h0))  # one row chunk per CPU core (evaluated)
    for group in groups:
        state = shared_prefix.PrefixState(model, group.prefix, model.n_blocks)
        for batch in make_batches(group.members, batch_size, rng=None):
            keep(batch, shared_prefix.shared_logits(model, state, batch))
    return units, np.stack([by_key[u.key] for u in units]) if units else np.zeros((0, 1))


def evaluate(
    model,
    tokenizer,
    records_by_task: dict[str, list],
    batch_size: int,
    log=None,
    cache=None,
    desc: str | None = None,
    predictions: dict | None = None,
    world: World = SINGLE,
    logits: dict | None = None,
) -> dict[str, Any]:
    """Official val metrics per task, each with a single `score` (two-metric tasks averaged),
    and `score`: their unweighted mean. `cache`: a PrefixCache of the frozen prefix.
    `predictions`: filled with (records, predictions) per task, as write_submission takes them.
    `logits`: filled with (records, unit keys, logits) per task.
    `desc`: show a progress bar over the units (this rank's share), so named."""
    model.eval()
    bar = None
    if desc:
        n = sum(len(make_units(t, world.shard(recs), train=False))
                for t, recs in records_by_task.items())  # fmt: skip
        bar = Progress(n, desc)
    tick = None if bar is None else (lambda rows: bar.update(rows, rows))
    tasks: dict[str, dict[str, float]] = {}
    for task, records in records_by_task.items():
        units, task_logits = score_units(
            model, tokenizer, task, records, batch_size, cache, on_batch=tick, world=world
        )
        keys = [u.key for u in units]
        preds = decode(task, records, keys, task_logits)
        if predictions is not None:
            predictions[task] = (records, preds)
        if logits is not None:
            logits[task] = (records, keys, task_logits)
        metrics = {k: float(v) for k, v in score_task(task, records, preds).items()}
        metrics["score"] = float(np.mean(list(metrics.values())))
        tasks[task] = metrics
    if bar is not None:
        bar.close()
    score = float(np.mean([m["score"] for m in tasks.values()])) if tasks else float("nan")
    return {"tasks": tasks, "score": score}


class Predictor:
    """A trained run: backbone + heads, ready to predict any task it was trained for."""

    def __init__(self, model, tokenizer, info: dict[str, Any], run_dir: Path):
        self.model, self.tokenizer, self.info, self.run_dir = model, tokenizer, info, run_dir
        self.batch_size = 16
        self.world: World = SINGLE  # the ranks scoring shares of the records (`distributed`)

    @property
    def tasks(self) -> list[str]:
        return list(self.info["tasks"])

    def task_name(self, task: str) -> str:
        by_lower = {t.lower(): t for t in self.tasks}
        if not isinstance(task, str):
            raise UserError(f"task: expected a task name such as {self.tasks[0]!r}, got "
                            f"{type(task).__name__}")  # fmt: skip
        if task.lower() not in by_lower:
            raise UserError(
                f"--task: {task!r} is not one of this run's tasks ({', '.join(self.tasks)})"
            )
        return by_lower[task.lower()]

    def decides_together(self, task: str) -> bool:
        """Whether a record's prediction depends on the other records of the call: RWSD decided
        by substitution compares the candidates for one pronoun (`model/substitution.py`)."""
        sub = self.model.substitution
        return sub is not None and sub.task == self.task_name(task)

    def predictions(self, task: str, records: list) -> tuple[list, list, np.ndarray]:
        """(predictions as tasks.decode returns them, units, logits)."""
        task = self.task_name(task)
        records = [as_record(task, r, i) for i, r in enumerate(_record_list(records))]
        seen: dict[Any, int] = {}
        for i, r in enumerate(records):  # predictions are matched to records by idx
            if seen.setdefault(r.idx, i) != i:
                raise UserError(f"records {seen[r.idx]} and {i} have the same idx {r.idx!r}")
        units, logits = score_units(self.model, self.tokenizer, task, records, self.batch_size,
                                    world=self.world)  # fmt: skip
        return decode(task, records, [u.key for u in units], logits), units, logits

    def predict(self, task: str, records: list) -> list[dict[str, Any]]:
        """One dict per record: idx, label (the task's official answer format) and probs."""
        task = self.task_name(task)
        records = [as_record(task, r, i) for i, r in enumerate(_record_list(records))]
        preds, units, logits = self.predictions(task, records)
        probs = unit_probabilities(self.info["tasks"][task], units, logits)
        out = []
        for rec, pred in zip(records, per_record(records, preds), strict=True):
            row = {"idx": rec.idx, "label": pred}
            p = probs.get(rec.idx)
            if p is not None:
                row["probs"] = p
            out.append(row)
        return out

    def evaluate(self, records_by_task: dict[str, list]) -> dict[str, Any]:
        return evaluate(self.model, self.tokenizer, records_by_task, self.batch_size,
                        world=self.world)  # fmt: skip


def per_record(records: list, preds) -> list:
    """decode's predictions aligned with records (it may return a list or an idx -> value map)."""
    if isinstance(preds, dict):
        return [preds[r.idx] for r in records]
    return list(preds)


def unit_probabilities(task_info: dict[str, Any], units: list, logits: np.ndarray) -> dict:
    """Per record idx: {label: p} for label tasks (softmax over the head's logits); for choice
    tasks the softmax over the record's candidates, keyed by candidate position."""
    out: dict[Any, Any] = {}
    if not len(units):
        return out
    if task_info["choice"]:
        groups: dict[Any, list[int]] = {}
        for i, u in enumerate(units):
            groups.setdefault(u.group, []).append(i)
        for rows in groups.values():
            s = logits[rows, 0]
            p = np.exp(s - s.max())
            p = p / p.sum()
            rec_idx = _record_idx(units[rows[0]])
            out.setdefault(rec_idx, []).append([round(float(x), 6) for x in p])
        return {k: v[0] if len(v) == 1 else v for k, v in out.items()}
    labels = task_info["labels"]
    for u, row in zip(units, logits, strict=True):
        p = np.exp(row - row.max())
        p = p / p.sum()
        rec_idx = _record_idx(u)
        entry = {str(lab): round(float(x), 6) for lab, x in zip(labels, p, strict=True)}
        if rec_idx in out:  # several units per record (MuSeRC answers): a list
            prev = out[rec_idx]
            out[rec_idx] = (prev if isinstance(prev, list) else [prev]) + [entry]
        else:
            out[rec_idx] = entry
    return out


def _record_idx(unit) -> Any:
    key = unit.key
    return key[0] if isinstance(key, tuple) else key


def _record_list(records) -> list:
    """The Python API's records argument, checked: a list (or tuple) of records."""
    if not isinstance(records, (list, tuple)):
        hint = " (one record: wrap it in a list)" if isinstance(records, dict) else ""
        raise UserError(f"records: expected a list of records, got {type(records).__name__}"
                        + hint)  # fmt: skip
    return list(records)


def as_record(task: str, obj, line: int | None = None):
    """A record dataclass from a dict in the official JSON format (or a record unchanged)."""
    if not isinstance(obj, dict):
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and hasattr(obj, "idx"):
            return obj  # a record object, as data.load_split returns them
        raise UserError(f"record {line}: expected a dict in the official JSON format (or a "
                        f"record object), got {type(obj).__name__}")  # fmt: skip

    if "idx" not in obj:  # records typed by hand: number them by position
        obj = {**obj, "idx": line}
    return parse_record(task, obj, path="<input>", line=line)


def load(run_dir: str | Path, verify: bool = True, calibrated: bool = True,
         world: World = SINGLE, decisions: bool = True) -> Predictor:  # fmt: skip
    """Load a run directory: backbone (checked against its sha256), heads and trained weights,
    with run.json's calibration added to the heads' biases (`calibrated=False`: as trained)
    and its decisions (`decisions=False`: every task by its head; RWSD may be decided by
    substitution, `model/substitution.py`). `world`: the ranks that will score shares of the
    records, on this rank's share of the cores."""
    run_dir = Path(run_dir)
    info = read_run_json(run_dir)
    if not (run_dir / WEIGHTS).is_file():
        raise UserError(f"{run_dir}: no {WEIGHTS} (training has not finished an epoch yet)")
    model_dir = resolve_backbone(run_dir, info, verify=verify)
    bb = load_backbone(model_dir, cores=world.cores)
    tokenizer = load_tokenizer(model_dir)
    check_vocabulary(bb, tokenizer, model_dir)
    ccfg = dataclass_from_dict(ClassifierConfig, info["classifier"])  # typed by read_run_json
    model = RSGClassifier(bb, ccfg, info["heads"])
    load_trainable(model, run_dir / WEIGHTS)
    if calibrated:
        apply_calibration(model, info.get("calibration", {}))
    entry = info.get("decisions", {}).get("RWSD", {"by": "head"})
    if decisions and entry["by"] == "substitution":
        model.substitution = substitution.build(bb, entry, tokenizer, run_dir, verify,
                                                world.cores, _to_stderr)  # fmt: skip
    mx.eval(model.parameters())
    model.eval()
    if "TERRa" in info["tasks"] and "LiDiRus" not in info["tasks"]:
        # The diagnostic is predicted and scored with the TERRa head.
        info["tasks"]["LiDiRus"] = task_info(["LiDiRus"])["LiDiRus"]
    predictor = Predictor(model, tokenizer, info, run_dir)
    predictor.world = world
    return predictor


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_records(path: str, task: str) -> list:
    """TASK's records in JSON Lines from a file or '-' (stdin), numbered by line where they have
    no idx; one-line errors naming the file, line and field."""
    name = official_name(task)
    if name is None:
        raise UserError(f"--task: {task!r} is not one of {', '.join(TASKS)}")
    task = name
    if path == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise UserError("--input -: standard input is closed")
        raw, name = sys.stdin.buffer.read(), "<stdin>"
    else:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{path}: no such file")
        raw, name = p.read_bytes(), path
    out, lines = [], {}
    for n, obj in jsonl_values(name, raw):
        if not isinstance(obj, dict):
            raise UserError(located(name, n, None, "expected a JSON object"))
        obj = {**obj, "idx": obj.get("idx", n - 1)}  # records without one: numbered by line
        key = json.dumps(obj["idx"])
        if lines.setdefault(key, n) != n:
            raise UserError(located(name, n, "idx", f"{obj['idx']!r} is also line {lines[key]}'s"))
        out.append(parse_record(task, obj, path=name, line=n))
    return out


def data_records(
    info: dict[str, Any],
    data_dir: str,
    split: str,
    task_list: str,
    max_per_task: int | None,
    seed: int = 0,
) -> dict[str, list]:
    """Records of `split` per task a run (its run.json `info`) can predict, LiDiRus with the
    TERRa head; `max_per_task` samples ~N examples per task as `run.sample_examples` does."""
    wanted = set(parse_tasks(task_list)) if task_list.lower() != "all" else set(TASKS)
    out: dict[str, list] = {}
    for task in TASKS:
        if task not in wanted and not (task == "LiDiRus" and "TERRa" in wanted):
            continue
        if task == "LiDiRus":
            if "TERRa" not in info["heads"]:
                continue
            # The diagnostic is both LiDiRus's val (labelled) and its test submission.
            records = (
                diagnostic_records(Path(data_dir)) if split != "test" else _lidirus_test(data_dir)
            )
        else:
            if task not in info["tasks"] or split not in available_splits(data_dir, task):
                continue
            records = load_split(data_dir, task, split)
        if records:
            out[task] = sample_examples(task, records, max_per_task, seed, split)
    if not out:
        raise UserError(
            f"{data_dir}: no {split} data for this run's tasks ({', '.join(info['tasks'])})"
        )
    return out


def _lidirus_test(data_dir: str) -> list:
    splits = available_splits(data_dir, "LiDiRus")
    return load_split(data_dir, "LiDiRus", splits[0]) if splits else []


def write_run_submission(predictor: Predictor, by_task: dict[str, list], out: str) -> None:
    """The official submission zip of the predictions (rank 0 writes it)."""
    preds = {t: predictor.predictions(t, recs)[0] for t, recs in by_task.items()}
    if predictor.world.is_main:
        write_submission(out, {t: (by_task[t], preds[t]) for t in by_task})
