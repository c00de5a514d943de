"""The leaderboard's submission zip: one `Task.jsonl` per task, labels spelled as it expects.

  write_submission(out_zip, {task: (records, predictions)})   predictions in tasks.decode's form
  read_submission(zip) -> {task: {idx: prediction}}            back in decode's form, to re-score

Spelling (checked against the official sample_submission.zip): TERRa/LiDiRus/RCB the label
strings; RUSSE/DaNetQA "true"/"false" and RWSD "True"/"False" as JSON strings; PARus 0/1;
MuSeRC {"idx", "passage": {"questions": [{"idx", "answers": [{"idx", "label": 0/1}]}]}};
RuCoS the entity text. Lines are `json.dumps` with its defaults (ASCII escapes, ", " / ": "),
one per record, each ending in a newline, exactly as the sample.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlx_rsg import tasks
from mlx_rsg.errors import UserError, located
from mlx_rsg.io import atomic_file, jsonl_values
from mlx_rsg.metrics import aligned


def submission_row(task: str, record, prediction) -> dict[str, Any]:
    """One line of `Task.jsonl` for a record and its prediction."""
    if task not in tasks.REGISTRY:
        raise ValueError(f"unknown task {task!r}")
    return tasks.REGISTRY[task].submission_row(record, prediction)


def write_submission(out_zip: str | os.PathLike, by_task: dict[str, tuple[Sequence, Any]]) -> Path:
    """Write the zip atomically (nothing is left behind if any prediction is invalid)."""
    out_zip = Path(out_zip)
    members = {}
    for task, (records, predictions) in by_task.items():
        preds = aligned(records, predictions)
        lines = [
            json.dumps(submission_row(task, r, p)) for r, p in zip(records, preds, strict=True)
        ]
        members[f"{task}.jsonl"] = "".join(s + "\n" for s in lines)
    with atomic_file(out_zip, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in members.items():
            z.writestr(name, text)
    return out_zip


def _parse_line(task: str, obj: Any, where: str, line: int) -> tuple[int, Any]:
    if not isinstance(obj, dict):
        raise UserError(located(where, line, None, "not a JSON object"))
    if "idx" not in obj:
        raise UserError(located(where, line, "idx", "missing"))
    return tasks.REGISTRY[task].read_submission_row(obj, where, line)


def read_submission(path: str | os.PathLike) -> dict[str, dict[Any, Any]]:
    """{task: {idx: prediction}} for every `Task.jsonl` in the zip, predictions in decode's form."""
    path = Path(path)
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable zip ({e})") from None
    out: dict[str, dict[Any, Any]] = {}
    with z:
        for name in z.namelist():
            stem = Path(name).name
            if not stem.endswith(".jsonl") or stem.startswith("."):
                continue
            task = stem[: -len(".jsonl")]
            if task not in tasks.REGISTRY:
                raise UserError(f"{path}:{name}: unknown task {task!r}")
            where = f"{path}:{name}"
            preds: dict[Any, Any] = {}
            for line, obj in jsonl_values(where, z.read(name)):
                idx, pred = _parse_line(task, obj, where, line)
                if idx in preds:
                    raise UserError(located(where, line, "idx", f"duplicate idx {idx!r}"))
                preds[idx] = pred
            out[task] = preds
    return out
