"""The run directory: everything inference needs, loadable without the training code.

    RUN_DIR/
      run.json                 format version, backbone reference (path + sha256 of its weight
                               files, or "backbone/" when copied or fused), ClassifierConfig,
                               TrainConfig, tasks with their heads and label sets, best epoch
      trainable.safetensors    the best epoch's trained weights: heads + LoRA / adapters /
                               unfrozen layers (names as in model.trainable_parameters())
      metrics.json             val scores after every epoch, best epoch, wall time
      losses.jsonl             one line per training batch (step, task, loss, lr)
      checkpoints/             the last checkpoint for --resume (weights, optimizer, position)
      backbone/                only with --copy-backbone or --fuse: a standalone model directory

Only run.json, trainable.safetensors and (if present) backbone/ are read by `load_run`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlx_rsg.errors import UserError, located
from mlx_rsg.io import check_replaceable, check_safetensors, jsonable, read_json_object
from mlx_rsg.model.config import ClassifierConfig
from mlx_rsg.model_files import MANIFEST, weight_hashes
from mlx_rsg.tasks import PROMPTS, REGISTRY

RUN_FORMAT = "mlx-rsg-run"
# 2: RUSSE/RWSD heads pool a third span (a question after the text), NLI premises are cut from
# their start, a LiDiRus head may sit beside TERRa's. A version-1 run's units are not these.
RUN_VERSION = 2
WEIGHTS = "trainable.safetensors"


def backbone_ref(model_dir: str | Path, sha256: dict[str, str] | None = None) -> dict[str, Any]:
    """run.json's "backbone": the model directory and its weight_hashes (given, or computed)."""
    model_dir = Path(model_dir).resolve()
    sha256 = weight_hashes(model_dir) if sha256 is None else sha256
    return {"path": str(model_dir), "sha256": sha256, "copied": False}


def mark_merged(info: dict[str, Any], num_layers: int, method: str, lora_fused: int) -> None:
    """run.json `info` of a run whose trained layers are now part of its own backbone copy
    (train --fuse, quantize of a run): every backbone layer frozen, the method it came from.
    A `heads` run trained no layer: it stays as it is (with its --feature-layer, if any)."""
    if method == "heads":
        return
    info["classifier"]["method"] = "freeze"
    info["classifier"]["freeze_layers"] = num_layers
    if lora_fused:
        info["fused"] = {"lora_layers_fused": lora_fused, "from": method}


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    info = read_json_object(path, f"{run_dir}: not a run directory (no run.json)")
    if info.get("format") != RUN_FORMAT:
        raise UserError(f"{path}: field 'format': expected {RUN_FORMAT!r}")
    version = info.get("version", 0)
    if not isinstance(version, int) or version > RUN_VERSION:
        raise UserError(f"{path}: field 'version': {version!r} is not one this mlx-rsg reads")
    if version < RUN_VERSION:
        raise UserError(f"{path}: field 'version': {version} is a run of an older mlx-rsg whose "
                        "task inputs differ from this one's; train it again")  # fmt: skip
    for key in ("backbone", "classifier", "heads", "tasks"):
        if not isinstance(info.get(key), dict):
            got = "missing" if key not in info else f"expected an object, got {info[key]!r:.40}"
            raise UserError(located(path, None, key, got))
    bad = [k for k, v in info["heads"].items() if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise UserError(located(path, None, f"heads.{bad[0]}", "expected a number of outputs"))
    ref = info["backbone"]
    if not ref.get("copied") and not isinstance(ref.get("path"), str):
        raise UserError(located(path, None, "backbone.path", "expected a path"))
    ccfg = dataclass_from_dict(ClassifierConfig, info["classifier"], path, "classifier.")
    if ccfg.prompt not in PROMPTS:
        msg = f"{ccfg.prompt!r} is not one of {', '.join(PROMPTS)}"
        raise UserError(located(path, None, "classifier.prompt", msg))
    _check_calibration(path, info)
    _check_decisions(path, info)
    return info


def _check_decisions(path: Path, info: dict) -> None:
    """run.json's `decisions` (optional): how a task is decided when not by its head, as
    `model/substitution.py` reads it (RWSD by substitution)."""
    decisions = info.get("decisions", {})
    if not isinstance(decisions, dict):
        raise UserError(located(path, None, "decisions", "expected an object"))
    for task, entry in decisions.items():
        where = f"decisions.{task}"
        if task != "RWSD" or "RWSD" not in info["heads"]:
            raise UserError(located(path, None, where, "only RWSD, a task of the run, has one"))
        by = entry.get("by") if isinstance(entry, dict) else None
        if by not in ("head", "substitution"):
            raise UserError(located(path, None, f"{where}.by", "expected head or substitution"))
        if by == "head":
            continue
        lm = entry.get("lm")
        if not isinstance(lm, dict) or not isinstance(lm.get("path"), str) \
                or not isinstance(lm.get("sha256"), dict):
            raise UserError(located(path, None, f"{where}.lm", "expected path and sha256"))
        shared = entry.get("shared_blocks")
        if isinstance(shared, bool) or not isinstance(shared, int) or shared < 0:
            raise UserError(located(path, None, f"{where}.shared_blocks",
                                    "expected a number of blocks"))  # fmt: skip


def _check_calibration(path: Path, info: dict) -> None:
    """run.json's `calibration` (optional): per task, offsets for each output of its head."""
    calibration = info.get("calibration", {})
    if not isinstance(calibration, dict):
        raise UserError(located(path, None, "calibration", "expected an object"))
    for task, entry in calibration.items():
        where = f"calibration.{task}"
        head = REGISTRY[task].head if task in REGISTRY else None
        if head not in info["heads"]:
            raise UserError(located(path, None, where, "not a task of this run's heads"))
        offsets = entry.get("offsets") if isinstance(entry, dict) else None
        shift = entry.get("prior_shift", 0.0) if isinstance(entry, dict) else None
        numbers = isinstance(offsets, list) and all(_is_number(x) for x in offsets)
        if not numbers or len(offsets) != info["heads"][head] or not _is_number(shift):
            msg = f"expected offsets: {info['heads'][head]} numbers, prior_shift: a number"
            raise UserError(located(path, None, where, msg))


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def check_replaceable_run(run_dir: Path, *inputs: Path) -> None:
    """What `--force` may delete: RUN_DIR only if it is empty or a run directory of ours (its
    run.json says so), and never when it is, or holds, one of the command's own inputs."""
    check_replaceable(run_dir, True, None, inputs)  # never an input, never a file
    if any(run_dir.iterdir()):
        try:
            read_run_json(run_dir)
        except UserError:
            raise UserError(f"{run_dir}: not an mlx-rsg run directory (no valid run.json); "
                            "refusing to delete it with --force") from None


def dataclass_from_dict(cls, d: dict[str, Any], where: Path | str | None = None,
                        prefix: str = ""):  # fmt: skip
    """Rebuild a config dataclass from JSON, tolerating fields added later (defaults) and
    turning JSON lists back into tuples where the default is a tuple. A value of the wrong type
    is a one-line UserError naming `where` (the file) and the field (`prefix` + name)."""
    if not isinstance(d, dict):
        raise UserError(located(where, None, prefix.rstrip(".") or None,
                                f"expected an object, got {type(d).__name__}"))  # fmt: skip
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in d.items():
        if k not in hints:
            continue
        if not _has_type(v, hints[k]):
            raise UserError(located(where, None, prefix + k, f"expected {_type_words(hints[k])}, "
                                    f"got {json.dumps(v, ensure_ascii=False)[:40]}"))  # fmt: skip
        if isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a config field's annotation (int, float, str, bool, None,
    tuple[X, ...] and unions of them; anything else is not checked)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, (list, tuple)) and all(_has_type(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _type_words(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        plural = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
        return f"a list of {plural.get(item, 'values')}"
    names = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number",
             str: "a string"}  # fmt: skip
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def config_dict(cfg) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock (an advisory lock on `.RUN_DIR.lock` beside it, so it works
    before the directory exists and never lands in it; removed on release): a second writer of
    the same run gets a one-line error instead of interleaving its checkpoints and losses with
    the first's. The operating system drops the lock when the process ends, kill -9 included
    (the file stays then, unlocked, and the next run takes it over)."""
    run_dir = Path(run_dir).absolute()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f".{run_dir.name}.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder removes the file before unlocking: a lock on a removed file is stale.
            if not path.exists() or path.stat().st_ino != os.fstat(f.fileno()).st_ino:
                raise BlockingIOError
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise UserError(f"{run_dir}: another process (pid {holder}) is writing to this run "
                            "directory; wait for it or stop it") from None  # fmt: skip
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # nothing left beside the run; then let others in
            fcntl.flock(f, fcntl.LOCK_UN)


def resolve_backbone(run_dir: Path, info: dict[str, Any], verify: bool = True) -> Path:
    """The model directory a run was trained on; refuse if its weights changed since."""
    ref = info["backbone"]
    if ref.get("copied"):
        path = Path(run_dir) / "backbone"
    else:
        path = Path(ref["path"])
    if not path.is_dir():
        raise UserError(
            f"{run_dir}/run.json: field 'backbone.path': {path} does not exist "
            "(move it back, or train with --copy-backbone)"
        )
    if verify and not ref.get("copied"):
        now = weight_hashes(path)
        if now != ref["sha256"]:
            raise UserError(
                f"{run_dir}/run.json: field 'backbone.sha256': the weights in {path} are not "
                "the ones this run was trained on"
            )
    return path


@dataclass
class RunRef:
    """A run directory named for reports (bench's table, serve's /v1/models)."""

    name: str
    path: Path
    info: dict[str, Any]


def short_names(paths: list[str]) -> list[tuple[str, Path]]:
    """Unique short names for run directories (base names, '-2', '-3' on clashes)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        path = Path(p)
        base = path.resolve().name or str(p)
        seen[base] = seen.get(base, 0) + 1
        out.append((base if seen[base] == 1 else f"{base}-{seen[base]}", path))
    return out


def open_runs(paths: list[str]) -> list[RunRef]:
    """Run directories by short name, each checked before any model loads: it exists, its
    run.json reads, and its trained and backbone weights are whole safetensors files."""
    refs = []
    for name, path in short_names(paths):
        if not path.is_dir():
            raise UserError(f"{path}: no such run directory")
        info = read_run_json(path)  # checks the fields' types
        if not (path / WEIGHTS).is_file():
            raise UserError(f"{path}: no {WEIGHTS} (training has not finished an epoch yet)")
        check_safetensors(path / WEIGHTS)
        for f in sorted(Path(resolve_backbone(path, info, verify=False)).glob("*.safetensors")):
            check_safetensors(f)
        refs.append(RunRef(name, path, info))
    return refs


def disk_size(ref: RunRef) -> dict[str, int]:
    """Bytes of the weight files on disk: the backbone's, the trained ones, a quantized run's
    copy of the blocks its RWSD decision runs beyond the backbone's (`model/substitution.py`;
    a float run reads them from its backbone directory, counted whole), their total."""
    model_dir = resolve_backbone(ref.path, ref.info, verify=False)
    backbone = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    trainable = (ref.path / WEIGHTS).stat().st_size
    lm = ref.info.get("decisions", {}).get("RWSD", {}).get("lm", {})
    own = 0
    if lm.get("copied"):
        own = sum(f.stat().st_size for f in (ref.path / lm["path"]).glob("*.safetensors"))
    return {"backbone": backbone, "trainable": trainable, "substitution": own,
            "total": backbone + trainable + own}


def quantization(ref: RunRef) -> dict | None:
    """The backbone config's "quantization" entry (bits, group size) with the recipe's name and
    method, and the bits per weight from the manifest, when the run came from `mlx-rsg
    quantize` or was trained on a backbone it made; None for a float model."""
    root = Path(resolve_backbone(ref.path, ref.info, verify=False))
    try:
        q = json.loads((root / "config.json").read_text(encoding="utf-8")).get("quantization")
    except (OSError, json.JSONDecodeError):
        return None
    recipe = (ref.info.get("quantized") or {}).get("recipe") or {}
    # a run trained on a quantized backbone (QLoRA): the backbone's own manifest says how
    manifest_path = ref.path / MANIFEST if recipe else root / MANIFEST
    manifest: dict = {}
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict):
        manifest = {}
    recipe = recipe or manifest.get("recipe") or {}
    if q and isinstance(recipe, dict) and recipe.get("name"):  # config.json has bits only
        stored = manifest.get("stored")
        q = {**q, "recipe": recipe["name"], "method": recipe.get("method", "rtn"),
             "bits_per_weight": _number(manifest.get("bits_per_weight")),
             "bits_per_weight_stored": _number(stored.get("bits_per_weight"))
             if isinstance(stored, dict) else None}  # fmt: skip
    return q


def _number(value: Any) -> float | None:
    """A manifest's number, or None where it holds something else (it is only reported)."""
    return float(value) if _is_number(value) else None


def task_info(tasks: list[str]) -> dict[str, Any]:
    return {
        t: {
            "head": REGISTRY[t].head,
            "labels": [jsonable(v) for v in REGISTRY[t].labels],
            "choice": bool(REGISTRY[t].choice),
            "pooling": REGISTRY[t].pooling,
        }
        for t in tasks
    }
