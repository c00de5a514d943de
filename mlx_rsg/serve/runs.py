"""The run directories a server answers for: each loaded once, at start, before the port opens.

Loading evaluates every weight into memory (`mlx_rsg.load`), so a run directory replaced or
deleted on disk while the server runs changes nothing it answers: restart to pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlx_rsg.bench.measure import load_run
from mlx_rsg.errors import UserError
from mlx_rsg.predict import Predictor
from mlx_rsg.run import RunRef, disk_size, open_runs, quantization


@dataclass
class ServedRun:
    name: str  # the request's "model"
    predictor: Predictor
    description: dict[str, Any]  # what GET /v1/models says about it


def load_runs(paths: list[str], log=print) -> dict[str, ServedRun]:
    """Every run directory in `paths`, by short name (the directory's; '-2' on clashes). Every
    run.json is checked before the first model loads."""
    if not paths:
        raise UserError("serve: give at least one RUN_DIR")
    refs = open_runs(paths)
    runs = {}
    for ref in refs:
        log(f"loading {ref.name} ({ref.path})")
        predictor = load_run(ref)  # unreadable weights: one line naming the run
        runs[ref.name] = ServedRun(ref.name, predictor, describe(ref, predictor))
    return runs


def describe(ref: RunRef, predictor: Predictor) -> dict[str, Any]:
    q = quantization(ref)
    return {
        "name": ref.name,
        "path": str(ref.path),
        "tasks": predictor.tasks,
        "method": (ref.info.get("train") or {}).get("method"),  # how it was trained
        "bits": int(q["bits"]) if q and "bits" in q else 32,
        "quantization": q,
        "size_bytes": disk_size(ref)["total"],
    }
