"""The nine Russian SuperGLUE tasks, one module each, behind the `Task` interface (base.py).

  REGISTRY[name] -> Task          TASKS: the names in leaderboard order; TRAIN_TASKS: with train
  parse_records(task, obj, path, line), parse_record(...)   one JSON object of a task's file
  make_units(task, records, train, rng, max_negatives, prompt) -> [Unit]  contiguous per record
  encode_unit(unit, encode, max_len, bos) -> (ids, spans)
  decode(task, records, unit_keys, scores) -> predictions aligned with records
  gold_predictions(task, records), score_task(task, records, predictions)
  task_score(task, metrics), total_score({task: metrics})   the leaderboard's numbers

Predictions ("decode form"): NLI label strings, PARus the chosen choice 0/1, RUSSE / RWSD /
DaNetQA bool, MuSeRC {answer idx: 0/1}, RuCoS the entity text. Adding a task: a module defining
its record and `TASK`, and a line in REGISTRY below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from mlx_rsg.errors import DataError, UserError, located
from mlx_rsg.metrics import aligned
from mlx_rsg.tasks import danetqa, lidirus, muserc, parus, rcb, rucos, russe, rwsd, terra
from mlx_rsg.tasks.base import Answer, Task
from mlx_rsg.tasks.danetqa import DaNetQARecord
from mlx_rsg.tasks.fields import as_object
from mlx_rsg.tasks.muserc import MuSeRCAnswer, MuSeRCQuestion, MuSeRCRecord
from mlx_rsg.tasks.nli import NLIRecord
from mlx_rsg.tasks.parus import PARusRecord
from mlx_rsg.tasks.rucos import RuCoSRecord, rucos_candidates
from mlx_rsg.tasks.russe import RUSSERecord
from mlx_rsg.tasks.rwsd import RWSDRecord, rwsd_spans
from mlx_rsg.tasks.units import Unit, encode_unit

REGISTRY: dict[str, Task] = {
    t.name: t
    for t in (
        lidirus.TASK,
        rcb.TASK,
        parus.TASK,
        muserc.TASK,
        terra.TASK,
        russe.TASK,
        rwsd.TASK,
        danetqa.TASK,
        rucos.TASK,
    )
}
TASKS = tuple(REGISTRY)
TRAIN_TASKS = tuple(t for t, task in REGISTRY.items() if task.has_train)
# tasks whose module defines `augmented` (train's --augment)
AUGMENTABLE = tuple(t for t, task in REGISTRY.items() if type(task).augmented is not Task.augmented)
# How a unit ends: "plain", or "answer": with the task's `Answer` question where it has one
PROMPTS = ("plain", "answer")

Record = (
    NLIRecord | PARusRecord | MuSeRCRecord | RUSSERecord | RWSDRecord | DaNetQARecord | RuCoSRecord
)

__all__ = [
    "REGISTRY", "TASKS", "TRAIN_TASKS", "PROMPTS", "Answer", "Task", "Unit", "Record", "get",
    "official_name", "parse_tasks", "parse_records",
    "parse_record", "make_units", "encode_unit", "decode", "gold_predictions", "score_task",
    "task_score", "total_score", "rucos_candidates", "rwsd_spans", "NLIRecord", "PARusRecord",
    "MuSeRCAnswer", "MuSeRCQuestion", "MuSeRCRecord", "RUSSERecord", "RWSDRecord",
    "DaNetQARecord", "RuCoSRecord",
]  # fmt: skip


def official_name(name: str) -> str | None:
    """A task name in any case (terra, Terra) as the leaderboard spells it; None if unknown."""
    return _BY_LOWER.get(name.strip().lower())


_BY_LOWER = {t.lower(): t for t in REGISTRY}


def parse_tasks(spec: str) -> tuple[str, ...]:
    """'all' or a comma list of task names, any case -> official names in leaderboard order."""
    if spec.strip().lower() == "all":
        return TRAIN_TASKS
    chosen = []
    for part in spec.split(","):
        if not part.strip():
            continue
        name = official_name(part)
        if name == "LiDiRus":
            raise UserError(
                "--tasks: LiDiRus has no train split (it is scored with the TERRa head)"
            )
        if name is None:
            raise UserError(f"--tasks: unknown task {part.strip()!r} (one of {', '.join(TASKS)})")
        chosen.append(name)
    return tuple(t for t in TRAIN_TASKS if t in chosen)


def get(task: str) -> Task:
    if task not in REGISTRY:
        raise DataError(f"unknown task {task!r} (one of {', '.join(TASKS)})")
    return REGISTRY[task]


def parse_records(
    task: str, obj: object, path: object = "<input>", line: int | None = None
) -> list[Record]:
    """All records in one JSON object of TASK's file (RuCoS: one per query; others: one)."""
    spec = get(task)
    where = (path, line)
    return spec.parse(as_object(obj, None, where), where)


def parse_record(
    task: str, obj: object, path: object = "<input>", line: int | None = None
) -> Record:
    """The record in one JSON object of TASK's official file; DataError names path:line:field."""
    records = parse_records(task, obj, path, line)
    if len(records) != 1:
        msg = f"{len(records)} queries (read the file with load_split)"
        raise DataError(located(path, line, "qas", msg))
    return records[0]


def make_units(
    task: str,
    records: Sequence,
    train: bool = False,
    rng: np.random.Generator | None = None,
    max_negatives: int | None = None,
    prompt: str = "plain",
) -> list[Unit]:
    """Units of every record, contiguous per record. `train` only changes RuCoS: the gold entity
    plus at most `max_negatives` negatives sampled with `rng`. `prompt` "answer": each unit of
    a task with an `Answer` ends with its question (a run's `ClassifierConfig.prompt`)."""
    if task not in REGISTRY:
        raise ValueError(f"unknown task {task!r}")
    if prompt not in PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}")
    spec = REGISTRY[task]
    units = [u for r in records for u in spec.units(r, train, rng, max_negatives)]
    if prompt == "answer" and spec.answer is not None:
        end = ((spec.answer.question, False),)
        units = [replace(u, pieces=u.pieces + end) for u in units]
    return units


def decode(task: str, records: Sequence, unit_keys: Sequence[tuple], scores: np.ndarray) -> list:
    """Predictions aligned with `records`, in decode form. `scores` has one row per unit key;
    choice tasks use column 0 (their head has one output)."""
    scores = np.asarray(scores)
    by_key = {tuple(k): scores[i] for i, k in enumerate(unit_keys)}
    return [REGISTRY[task].decode(r, by_key) for r in records]


def gold_predictions(task: str, records: Sequence) -> list:
    """The gold labels of labelled records in decode's form (RuCoS: the first gold answer)."""
    return [REGISTRY[task].gold(r) for r in records]


def score_task(task: str, records: Sequence, predictions) -> dict[str, float]:
    """The task's official metrics (keys as Task.metrics) for predictions in decode's form,
    a list aligned with records or a dict keyed by record idx. Zero records score 0.0."""
    return REGISTRY[task].score(records, aligned(records, predictions))


def task_score(task: str | None, metrics: dict[str, float]) -> float:
    """One number per task: the mean of its official metrics (other keys, e.g. "score", ignored
    when the task is known)."""
    official = REGISTRY[task].metrics if task in REGISTRY else ()
    keys = [k for k in official if k in metrics]
    if not keys:
        keys = [k for k in metrics if k != "score"] or list(metrics)
    return float(np.mean([metrics[k] for k in keys]))


def total_score(per_task: dict[str, dict[str, float]]) -> float:
    """The leaderboard total: unweighted mean over tasks of each task's mean metric."""
    if not per_task:
        return float("nan")
    return float(np.mean([task_score(t, m) for t, m in per_task.items()]))
