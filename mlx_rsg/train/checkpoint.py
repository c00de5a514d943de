"""Resumable state: the run's `Position`, checkpoints written so a kill -9 at any moment leaves
one complete checkpoint, the RNG states, and losses.jsonl kept in step with them."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mlx_rsg.errors import UserError
from mlx_rsg.io import write_json
from mlx_rsg.model.precision import set_weights
from mlx_rsg.run import WEIGHTS
from mlx_rsg.weights import save_weights, trainable_weights


@dataclass
class Position:
    """Where a run is: written into every checkpoint (position.json), restored by --resume."""

    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # batches of the current epoch done
    batch: int = 0  # batches done in all
    step: int = 0  # optimizer steps done
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per finished epoch
    best: dict[str, Any] | None = None  # {"epoch", "score"} of the best epoch so far
    train_seconds: float = 0.0
    # "select": the epochs scored on dev; "refit" (--refit): training again on train + dev for
    # refit["epochs"] epochs, with the calibration chosen on dev at its start
    phase: str = "select"
    refit: dict[str, Any] | None = None
    # float16's loss scale, its finite steps in a row and the steps it skipped (loss_scale.py)
    loss_scale: float = 1.0
    finite_steps: int = 0
    skipped_steps: int = 0


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    v, internal, g = state["python"]
    random.setstate((v, tuple(internal), g))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def write_checkpoint(run_dir: Path, model, optimizer, position: Position) -> None:
    """New directory first, then swap the `checkpoints/LAST` pointer, then drop the old one: a
    kill at any moment leaves one complete checkpoint."""
    ckpts = run_dir / "checkpoints"
    name = f"step-{position.step:08d}-batch-{position.batch:08d}"
    tmp = ckpts / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(tmp / WEIGHTS, trainable_weights(model))
    save_weights(tmp / "optimizer.safetensors", dict(tree_flatten(optimizer.state)))
    write_json(tmp / "position.json", {**asdict(position), "rng": _rng_state()})
    final = ckpts / name
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    with open(ckpts / ".LAST.tmp", "w") as f:
        f.write(name)
    (ckpts / ".LAST.tmp").replace(ckpts / "LAST")
    for old in ckpts.iterdir():  # the previous one, and any a kill left (one writer: the lock)
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def _last_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "LAST"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def peek_position(run_dir: Path) -> Position:
    """The last checkpoint's position, without loading anything else (Position() if none)."""
    path = _last_checkpoint(run_dir)
    if path is None:
        return Position()
    position = json.loads((path / "position.json").read_text())
    position.pop("rng", None)
    return Position(**position)


def read_checkpoint(run_dir: Path, model, optimizer) -> Position:
    path = _last_checkpoint(run_dir)
    if path is None:
        raise UserError(f"{run_dir}: no checkpoint to resume from (checkpoints/LAST missing)")
    set_weights(model, mx.load(str(path / WEIGHTS)))
    optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
    position = json.loads((path / "position.json").read_text())
    _set_rng_state(position.pop("rng"))
    return Position(**position)


def broadcast_state(world, model, optimizer, position: Position, resumed: bool) -> Position:
    """Rank 0's trainable weights on every rank; after a resume (read by rank 0 only, which holds
    the run directory) also its optimizer state, position and RNG states."""
    weights = world.broadcast_arrays(trainable_weights(model) if world.is_main else None)
    set_weights(model, weights)
    if not resumed:
        return position
    state = world.broadcast_arrays(dict(tree_flatten(optimizer.state)) if world.is_main else None)
    optimizer.state = tree_unflatten(list(state.items()))
    text = json.dumps({**asdict(position), "rng": _rng_state()}) if world.is_main else None
    shared = json.loads(world.broadcast_bytes(text.encode() if text else None))
    _set_rng_state(shared.pop("rng"))
    return Position(**shared)


class LossLog:
    """losses.jsonl: one line per training batch. On resume, lines past the checkpoint are
    dropped so the file always matches the run's actual history (a last line torn by a power
    loss too)."""

    def __init__(self, path: Path | None, keep_below: int | None):
        self.path = path  # None: kept in memory only (the ranks of a distributed run but 0)
        # every loss of the run, resumed ones too, by (phase, epoch)
        self.by_epoch: dict[tuple[str, int], list[float]] = {}
        self.f = None
        if path is None:
            return
        if keep_below is not None and path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if lines and not _whole(lines[-1]):
                lines.pop()
            kept = [ln for ln in lines if json.loads(ln)["batch"] < keep_below]
            with open(path, "w") as f:
                f.write("".join(ln + "\n" for ln in kept))
            for row in map(json.loads, kept):
                self._keep(row)
        elif keep_below is None:
            path.write_text("")
        self.f = open(path, "a")

    def write(self, row: dict) -> None:
        if self.f is not None:
            self.f.write(json.dumps(row) + "\n")
            self.f.flush()
        self._keep(row)

    def _keep(self, row: dict) -> None:
        self.by_epoch.setdefault((row.get("phase", "select"), row["epoch"]), []).append(row["loss"])

    def mean_loss(self, epoch: int, phase: str = "select") -> float:
        """The epoch's mean training loss, over every batch (before a resume too)."""
        losses = self.by_epoch.get((phase, epoch), [])
        return sum(losses) / max(len(losses), 1)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def _whole(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True
