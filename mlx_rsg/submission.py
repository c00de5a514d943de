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

from mlx_rsg.errors import UserError, located
from mlx_rsg.io import atomic_file, jsonl_values
from mlx_rsg.metrics import aligned

BOOL_SPELLING = {
    "RUSSE": ("false", "true"),
    "DaNetQA": ("false", "true"),
    "RWSD": ("False", "True"),
}


def submission_row(task: str, record, prediction) -> dict[str, Any]:
    """One line of `Task.jsonl` for a record and its prediction."""
    from mlx_rsg.tasks import TASK_SPECS

    if task not in TASK_SPECS:
        raise ValueError(f"unknown task {task!r}")
    if task == "MuSeRC":
        questions = [
            {
                "idx": q.idx,
                "answers": [{"idx": a.idx, "label": int(prediction[a.idx])} for a in q.answers],
            }
            for q in record.questions
        ]
        return {"idx": record.idx, "passage": {"questions": questions}}
    if task in BOOL_SPELLING:
        if not isinstance(prediction, bool):
            raise ValueError(f"{task} idx {record.idx}: prediction {prediction!r} is not a bool")
        label: Any = BOOL_SPELLING[task][int(prediction)]
    elif task == "PARus":
        if prediction not in (0, 1) or isinstance(prediction, bool):
            raise ValueError(f"PARus idx {record.idx}: prediction {prediction!r} is not 0 or 1")
        label = int(prediction)
    elif task == "RuCoS":
        label = str(prediction)
    else:
        if prediction not in TASK_SPECS[task].labels:
            raise ValueError(f"{task} idx {record.idx}: unknown label {prediction!r}")
        label = prediction
    return {"idx": record.idx, "label": label}


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


def _label(task: str, value, where: str, line: int) -> Any:
    """A submission label back in decode's form; UserError naming file, line and field."""
    from mlx_rsg.tasks import TASK_SPECS

    def bad(msg: str) -> UserError:
        return UserError(located(where, line, "label", msg))

    if task in BOOL_SPELLING:
        if isinstance(value, bool):
            return value
        spelled = {s: bool(i) for i, s in enumerate(BOOL_SPELLING[task])}
        if value not in spelled:
            raise bad(f"{value!r} is not one of {list(spelled)}")
        return spelled[value]
    if task == "PARus":
        if isinstance(value, bool) or value not in (0, 1):
            raise bad(f"{value!r} is not 0 or 1")
        return int(value)
    if task == "RuCoS":
        if not isinstance(value, str):
            raise bad(f"{value!r} is not a string")
        return value
    if value not in TASK_SPECS[task].labels:
        raise bad(f"{value!r} is not one of {list(TASK_SPECS[task].labels)}")
    return value


def _parse_line(task: str, obj: Any, where: str, line: int) -> tuple[int, Any]:
    if not isinstance(obj, dict):
        raise UserError(located(where, line, None, "not a JSON object"))
    if "idx" not in obj:
        raise UserError(located(where, line, "idx", "missing"))
    idx = obj["idx"]
    if task != "MuSeRC":
        if "label" not in obj:
            raise UserError(located(where, line, "label", "missing"))
        return idx, _label(task, obj["label"], where, line)
    try:
        answers = {}
        for q in obj["passage"]["questions"]:
            for a in q["answers"]:
                if a["label"] not in (0, 1) or isinstance(a["label"], bool):
                    raise UserError(located(where, line, "label", f"{a['label']!r} is not 0 or 1"))
                answers[a["idx"]] = int(a["label"])
    except (KeyError, TypeError) as e:
        raise UserError(located(where, line, "passage", f"malformed ({e!r})")) from None
    return idx, answers


def read_submission(path: str | os.PathLike) -> dict[str, dict[Any, Any]]:
    """{task: {idx: prediction}} for every `Task.jsonl` in the zip, predictions in decode's form."""
    from mlx_rsg.tasks import TASK_SPECS

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
            if task not in TASK_SPECS:
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
