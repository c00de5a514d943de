"""Multi-task training of RSG heads on a shared MLX backbone, resumable after a kill -9.

Defaults reproduce the PyTorch reference (Gemma-3-1b-it, nine linear heads on a shared backbone,
the bottom ~46% of layers frozen, fp32, AdamW, lr 5e-6, effective batch 16, dropout 0.1, linear
warmup over 100 steps, 3 epochs) with two deliberate differences:

- batch 8 x grad-accum 2 instead of 1 x 16: the same effective batch of 16 and the same number of
  optimizer steps, but 8-row GEMMs are several times faster per example than 1-row ones;
- the heads get their own learning rate (1e-3). A fresh randomly initialised head trained at the
  backbone's 5e-6 barely moves in 3 epochs (the reference's heads learned mostly through the
  backbone); pretrained weights need small steps, a new linear layer needs large ones.

Task sampling (documented rule): examples-proportional mixing with a per-task limit K (Raffel et
al., 2020, T5 section 3.5.2). Each task contributes about K = --max-train-per-task training
examples (units: one per MuSeRC answer, gold + negatives per RuCoS query), as whole records drawn
once from the seed so every epoch sees the same records (and the frozen prefix cache is reused);
each epoch visits every selected record once; each batch holds one task (one head, one loss) and
the batches of all tasks are shuffled together, so a task's share of the updates is proportional
to min(N_task, K). RuCoS trains on its gold entity plus up to
--max-negatives sampled wrong entities per query, resampled each epoch.

Determinism and resume: the data order of epoch e is a pure function of (seed, e); mx.random is
reseeded from (seed, batch index) before every batch (dropout), so a resumed run replays exactly
the batches, dropout masks and optimizer updates of an uninterrupted one. Python's and numpy's
global RNG states are saved too, for any code that draws from them. Checkpoints are written to a
new directory, then a pointer file is swapped atomically, then the previous one is removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mlx_rsg.errors import UserError
from mlx_rsg.io import read_json_object
from mlx_rsg.options import opt
from mlx_rsg.progress import Progress
from mlx_rsg.run import (  # noqa: F401  (parse_tasks: re-exported)
    METHODS,
    RUN_FORMAT,
    RUN_VERSION,
    TRAIN_TASKS,
    WEIGHTS,
    backbone_ref,
    check_replaceable_run,
    config_dict,
    dataclass_from_dict,
    diagnostic_records,
    examples_in,
    parse_tasks,
    read_run_json,
    sample_examples,
    sample_records,
    save_weights,
    task_info,
    trainable_weights,
    write_json,
)

REFERENCE_FROZEN_FRACTION = 12 / 26  # the reference froze 12 of Gemma-3-1b's 26 layers


@dataclass
class TrainConfig:
    """Every `mlx-rsg train` flag, its one definition (the CLI options are made from these
    fields). Saved in run.json; --resume requires the same values."""

    tasks: tuple[str, ...] = TRAIN_TASKS
    method: str = opt("freeze", choices=list(METHODS))
    freeze_layers: int | None = opt(
        None, "Bottom K layers frozen.", default_help="round(12/26 x layers), as the reference"
    )
    pooling: str = opt(
        "last", "Sentence pooling (RUSSE/RWSD always use span pooling).", choices=["last", "mean"]
    )
    dropout: float = opt(0.1)
    lora_rank: int = opt(8)
    lora_alpha: float = opt(16.0)
    lora_layers: int | None = opt(
        None, "Top N layers get LoRA.", default_help="those above --freeze-layers"
    )
    lora_targets: tuple[str, ...] = opt(
        ("q_proj", "v_proj"), "Linear layer names inside each block."
    )
    adapter_size: int = opt(64)
    adapter_layers: int | None = opt(
        None, "MLP adapters after the top N blocks.", default_help="those above --freeze-layers"
    )
    adapter_dropout: float = opt(0.1)
    epochs: int = opt(3)
    lr: float = opt(5e-6, "Peak learning rate of the backbone's trainable weights.")
    head_lr: float = opt(1e-3, "Peak learning rate of the new classification heads.")
    weight_decay: float = opt(0.01)
    batch_size: int = opt(8)
    grad_accum: int = opt(2)
    warmup: int = opt(100, "Linear warmup, in optimizer steps; then linear decay to 0.")
    max_len: int = opt(256)
    seed: int = opt(0)
    # Caps count examples (units: one per MuSeRC answer, gold + negatives per RuCoS query) and
    # draw whole records, so one number keeps every task in proportion.
    max_train_per_task: int | None = opt(
        5000, "At most ~N training examples per task, drawn as whole records (examples = units: "
        "one per MuSeRC answer, gold + negatives per RuCoS query; 0: no cap)."
    )  # fmt: skip
    max_eval_per_task: int | None = opt(
        None, "At most ~N val examples per task, drawn as whole records."
    )
    max_negatives: int = opt(4, "RuCoS: wrong entities sampled per query per epoch.")
    checkpoint_every: int = opt(
        50, "Optimizer steps between resume checkpoints (and every epoch end)."
    )
    prefix_cache: bool = opt(
        True, "Compute the frozen layers once per example and reuse them every epoch."
    )
    grad_checkpoint: bool = opt(
        False, "Recompute the trained layers' activations in backward (less memory, slower)."
    )
    cache_dir: str | None = opt(
        None, "Memory-map the prefix cache here instead of keeping it in RAM.", path=True
    )

    def validate(self) -> None:
        bad = [t for t in self.tasks if t not in TRAIN_TASKS]
        if bad:
            raise UserError(f"--tasks: unknown or untrainable task {bad[0]!r}")
        if not self.tasks:
            raise UserError("--tasks: no task selected")
        if self.method not in METHODS:
            raise UserError(f"--method: {self.method!r} is not one of {', '.join(METHODS)}")
        for name in ("epochs", "batch_size", "grad_accum", "max_len", "lora_rank", "adapter_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')}: must be at least 1")
        for name in ("lr", "head_lr"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')}: must be positive")
        if self.warmup < 0:
            raise UserError("--warmup: must be >= 0")
        if not 0 <= self.dropout < 1 or not 0 <= self.adapter_dropout < 1:
            raise UserError("--dropout: must be in [0, 1)")
        for name in ("max_train_per_task", "max_eval_per_task", "freeze_layers"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise UserError(f"--{name.replace('_', '-')}: must be >= 0")


# --------------------------------------------------------------------------- optimizer


def lr_schedule(peak: float, warmup: int, total: int):
    """Linear warmup from 0 to `peak` over `warmup` steps, then linear decay to 0 at `total`
    (transformers' get_linear_schedule_with_warmup, which the reference used)."""
    import mlx.optimizers as optim

    decay = optim.linear_schedule(peak, 0.0, max(total - warmup, 1))
    if warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, peak, warmup), decay], [warmup])


def is_head_param(path: str) -> bool:
    return path.startswith("heads.")


def make_optimizer(cfg: TrainConfig, total_steps: int):
    """AdamW with two parameter groups: heads at head_lr, everything else trainable at lr."""
    import mlx.optimizers as optim

    def adamw(peak):
        return optim.AdamW(
            learning_rate=lr_schedule(peak, cfg.warmup, total_steps),
            weight_decay=cfg.weight_decay,
            bias_correction=True,  # as torch.optim.AdamW
        )

    return optim.MultiOptimizer(
        [adamw(cfg.head_lr), adamw(cfg.lr)], [lambda p, _: is_head_param(p)]
    )


def compiled_update(model, optimizer) -> Callable[[Any, int], None]:
    """update(grads, k): `optimizer.update(model, grads / k)` as one compiled graph.

    Uncompiled, AdamW is a dozen element-wise kernels per parameter, each a full pass over every
    trained weight on one core; compiled they fuse into one pass (README, Benchmarks). Build it
    after any state is restored
    (the compiled graph holds on to the optimizer's state containers).
    """
    from functools import partial

    import mlx.core as mx
    from mlx.utils import tree_map

    optimizer.init(model.trainable_parameters())
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(grads, k):
        optimizer.update(model, tree_map(lambda g: g / k, grads))

    return lambda grads, k: step(grads, mx.array(k, dtype=mx.float32))


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    v, internal, g = state["python"]
    random.setstate((v, tuple(internal), g))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def write_checkpoint(run_dir: Path, model, optimizer, position: Position) -> None:
    """New directory first, then swap the `checkpoints/LAST` pointer, then drop the old one: a
    kill at any moment leaves one complete checkpoint."""
    from dataclasses import asdict

    from mlx.utils import tree_flatten

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
    previous = _last_checkpoint(run_dir)
    with open(ckpts / ".LAST.tmp", "w") as f:
        f.write(name)
    (ckpts / ".LAST.tmp").replace(ckpts / "LAST")
    if previous is not None and previous.name != name:
        shutil.rmtree(previous, ignore_errors=True)


def _last_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "LAST"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def read_checkpoint(run_dir: Path, model, optimizer) -> Position:
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    path = _last_checkpoint(run_dir)
    if path is None:
        raise UserError(f"{run_dir}: no checkpoint to resume from (checkpoints/LAST missing)")
    model.load_weights(list(mx.load(str(path / WEIGHTS)).items()), strict=False)
    optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
    position = json.loads((path / "position.json").read_text())
    _set_rng_state(position.pop("rng"))
    return Position(**position)


# --------------------------------------------------------------------------- data plan


@dataclass
class TaskData:
    name: str
    train: list = field(default_factory=list)  # records (capped)
    val: list = field(default_factory=list)


def load_task_data(data_dir: Path, cfg: TrainConfig, log) -> dict[str, TaskData]:
    from mlx_rsg.data import available_splits, load_split

    out: dict[str, TaskData] = {}
    for task in cfg.tasks:
        splits = available_splits(data_dir, task)
        if "train" not in splits:
            raise UserError(f"{data_dir}: task {task} has no train split")
        train = load_split(data_dir, task, "train")
        val = load_split(data_dir, task, "val") if "val" in splits else []
        out[task] = TaskData(
            task,
            sample_records(
                train,
                cfg.max_train_per_task,
                cfg.seed,
                f"{task}:train",
                lambda r, t=task: examples_in(t, r, cfg.max_negatives),
            ),
            sample_examples(task, val, cfg.max_eval_per_task, cfg.seed, "val"),
        )
        log(f"{task}: {len(out[task].train)}/{len(train)} train, {len(out[task].val)} val records")
    if "TERRa" in cfg.tasks:
        lidirus = diagnostic_records(data_dir)
        if lidirus:
            out["LiDiRus"] = TaskData(
                "LiDiRus", [], sample_examples("LiDiRus", lidirus, cfg.max_eval_per_task, cfg.seed,
                                               "val")
            )
            log(
                f"LiDiRus: {len(out['LiDiRus'].val)} diagnostic records, scored with the TERRa head"
            )
    return out


# --------------------------------------------------------------------------- the loop


def classifier_config(cfg: TrainConfig, num_layers: int):
    """The model's config from the training flags; freeze_layers defaults to the reference's
    frozen fraction (12 of 26 layers -> 8 of 18 for Gemma-3-270M)."""
    from mlx_rsg.model import ClassifierConfig

    freeze = cfg.freeze_layers
    if freeze is None:
        freeze = round(REFERENCE_FROZEN_FRACTION * num_layers)
    if freeze > num_layers:
        raise UserError(f"--freeze-layers: {freeze} > the model's {num_layers} layers")
    # Every model setting is a training flag of the same name (TrainConfig holds them all).
    shared = {f.name: getattr(cfg, f.name) for f in fields(ClassifierConfig)}
    shared["lora_targets"] = tuple(cfg.lora_targets)
    return ClassifierConfig(**{**shared, "freeze_layers": freeze})


def heads_for(tasks: tuple[str, ...]) -> dict[str, int]:
    """Head name -> outputs: one score per unit for choice tasks, one logit per label otherwise."""
    from mlx_rsg.tasks import REGISTRY

    heads: dict[str, int] = {}
    for t in tasks:
        spec = REGISTRY[t]
        heads[spec.head] = 1 if spec.choice else len(spec.labels)
    return heads


def _batch_seed(seed: int, global_batch: int) -> int:
    return (seed * 1_000_003 + global_batch) % (2**31)


class _LossLog:
    """losses.jsonl: one line per training batch. On resume, lines past the checkpoint are
    dropped so the file always matches the run's actual history."""

    def __init__(self, path: Path, keep_below: int | None):
        self.path = path
        self.by_epoch: dict[int, list[float]] = {}  # every loss of the run, resumed ones too
        if keep_below is not None and path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln)["batch"] < keep_below]
            with open(path, "w") as f:
                f.write("".join(ln + "\n" for ln in kept))
            for row in map(json.loads, kept):
                self.by_epoch.setdefault(row["epoch"], []).append(row["loss"])
        elif keep_below is None:
            path.write_text("")
        self.f = open(path, "a")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        self.by_epoch.setdefault(row["epoch"], []).append(row["loss"])

    def mean_loss(self, epoch: int) -> float:
        """The epoch's mean training loss, over every batch (before a resume too)."""
        losses = self.by_epoch.get(epoch, [])
        return sum(losses) / max(len(losses), 1)

    def close(self) -> None:
        self.f.close()


def seeded_generator(salt: str):
    """A numpy Generator seeded from a string (Python's str hash is salted per process)."""
    import numpy as np

    return np.random.default_rng(
        int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little")
    )


def _train_batches(task: str, records: list, tokenizer, cfg: TrainConfig, epoch: int) -> list:
    """One epoch's batches of one task. Units are rebuilt per epoch only because RuCoS draws
    fresh negatives; the rng depends on (seed, task, epoch) alone."""
    from mlx_rsg.batching import encode_units, make_batches
    from mlx_rsg.tasks import make_units

    rng = seeded_generator(f"{cfg.seed}:{task}:units:{epoch}")
    units = make_units(task, records, train=True, rng=rng, max_negatives=cfg.max_negatives)
    encoded = encode_units(units, tokenizer, cfg.max_len)
    return make_batches(encoded, cfg.batch_size, rng=random.Random(f"{cfg.seed}:{task}:{epoch}"))


def epoch_plan(data: dict[str, TaskData], tokenizer, cfg: TrainConfig, epoch: int) -> list:
    """All tasks' batches of one epoch, shuffled together (examples-proportional mixing)."""
    batches = []
    for task in cfg.tasks:
        batches += _train_batches(task, data[task].train, tokenizer, cfg, epoch)
    random.Random(f"{cfg.seed}:order:{epoch}").shuffle(batches)
    return batches


def _same_config(saved: TrainConfig, cfg: TrainConfig) -> None:
    diff = [
        f"--{k.replace('_', '-')} {getattr(saved, k)!r} (now {getattr(cfg, k)!r})"
        for k in config_dict(cfg)
        if getattr(saved, k) != getattr(cfg, k)
    ]
    if diff:
        raise UserError(f"--resume needs the run's own flags; it was trained with {diff[0]}")


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


def train(
    model_dir: str | Path,
    data_dir: str | Path,
    run_dir: str | Path,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    force: bool = False,
    fuse: bool = False,
    copy_backbone: bool = False,
    stop_after_batches: int | None = None,
    log=None,
) -> dict[str, Any]:
    """Train, evaluate every epoch, keep the best weights; returns metrics.json's content.

    `stop_after_batches` ends the process's work early (tests of resume use it like a kill)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    model_dir, data_dir, run_dir = Path(model_dir), Path(data_dir), Path(run_dir)
    _check_start(model_dir, data_dir, run_dir, cfg, resume, force, fuse)
    loop = _Loop.build(model_dir, data_dir, run_dir, cfg, resume, log)
    for epoch in range(loop.position.epoch, cfg.epochs):
        if not loop.run_epoch(epoch, stop_after_batches):
            loop.losses.close()
            return {"stopped_at_batch": loop.position.batch}
        loop.end_epoch(epoch)
    loop.losses.close()
    return _finish(
        run_dir, model_dir, loop.model, loop.tokenizer, loop.data, cfg, loop.position, fuse,
        copy_backbone, log,
    )  # fmt: skip


def _check_start(model_dir, data_dir, run_dir, cfg, resume, force, fuse) -> None:
    """Every check that can fail before any work; then a --force'd old run is removed (only a
    run directory of ours that holds none of the inputs)."""
    cfg.validate()
    if fuse and cfg.method == "mlp-adapter":
        raise UserError("--fuse: MLP adapters are not linear and cannot be merged; omit --fuse")
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: model directory not found")
    if not data_dir.exists():
        raise UserError(f"{data_dir}: data not found")
    if resume:
        info = read_run_json(run_dir)
        _same_config(dataclass_from_dict(TrainConfig, info["train"]), cfg)
        if backbone_ref(model_dir)["sha256"] != info["backbone"]["sha256"]:
            raise UserError(f"{model_dir}: not the backbone this run was started with")
    classifier_config(cfg, _num_layers(model_dir))  # bad --freeze-layers fails before any work
    if not resume and run_dir.exists():
        if not force:
            raise UserError(
                f"{run_dir}: already exists (use --force to overwrite, --resume to continue)"
            )
        check_replaceable_run(run_dir, model_dir, data_dir)
        shutil.rmtree(run_dir)


@dataclass
class _Loop:
    """What the epochs share: the model and its optimizer, the data, the caches, the position."""

    cfg: TrainConfig
    run_dir: Path
    data: dict[str, TaskData]
    model: Any
    tokenizer: Any
    optimizer: Any
    position: Position
    losses: _LossLog
    log: Callable[[str], None]
    plans: dict[int, list] = field(default_factory=dict)
    cache: Any = None  # PrefixCache of the train split's frozen prefix, or None
    val_cache: Any = None
    value_and_grad: Any = None
    update: Any = None
    t_start: float = 0.0

    @classmethod
    def build(cls, model_dir, data_dir, run_dir, cfg: TrainConfig, resume: bool, log) -> _Loop:
        import mlx.core as mx
        import mlx.nn as nn

        from mlx_rsg.backbone import load_backbone, load_tokenizer
        from mlx_rsg.batching import loss_fn
        from mlx_rsg.features import PrefixCache
        from mlx_rsg.model import RSGClassifier

        data = load_task_data(data_dir, cfg, log)
        bb = load_backbone(model_dir)
        tokenizer = load_tokenizer(model_dir)
        heads = heads_for(cfg.tasks)
        mx.random.seed(cfg.seed)
        model = RSGClassifier(bb, classifier_config(cfg, bb.num_layers), heads)
        mx.eval(model.parameters())
        loop = cls(cfg, run_dir, data, model, tokenizer, None, Position(), None, log)
        batches_per_epoch = len(loop.plan(0))
        if batches_per_epoch == 0:
            raise UserError(f"{data_dir}: no training examples for {', '.join(cfg.tasks)}")
        total_steps = math.ceil(batches_per_epoch / cfg.grad_accum) * cfg.epochs
        loop.optimizer = make_optimizer(cfg, total_steps)
        if resume:
            loop.position = read_checkpoint(run_dir, model, loop.optimizer)
            log(f"resuming at epoch {loop.position.epoch + 1}, "
                f"batch {loop.position.batch_in_epoch}")  # fmt: skip
        else:
            run_dir.mkdir(parents=True)
            write_json(run_dir / "run.json", {
                "format": RUN_FORMAT, "version": RUN_VERSION, "status": "training",
                "backbone": backbone_ref(model_dir), "classifier": config_dict(model.cfg),
                "train": config_dict(cfg), "heads": heads, "tasks": task_info(list(data)),
            })  # fmt: skip
        loop.losses = _LossLog(run_dir / "losses.jsonl", loop.position.batch if resume else None)
        # Train and val units share keys (record idx), so each split gets its own cache; the val
        # prefix is then computed once for every epoch's evaluation too.
        if _use_cache(cfg, model):
            sub = (lambda s: str(Path(cfg.cache_dir) / s)) if cfg.cache_dir else (lambda s: None)
            loop.cache = PrefixCache(model, cache_dir=sub("train"))
            loop.val_cache = PrefixCache(model, cache_dir=sub("val"))
        loop.value_and_grad = nn.value_and_grad(model, lambda m, b, h0: loss_fn(m, b, h0))
        loop.update = compiled_update(model, loop.optimizer)
        loop.t_start = time.perf_counter() - loop.position.train_seconds
        return loop

    def plan(self, epoch: int) -> list:
        """The epoch's batches (only the latest epoch's are kept)."""
        if epoch not in self.plans:
            self.plans.clear()
            self.plans[epoch] = epoch_plan(self.data, self.tokenizer, self.cfg, epoch)
        return self.plans[epoch]

    def run_epoch(self, epoch: int, stop_after_batches: int | None) -> bool:
        """Train the rest of `epoch`; False if stopped early by `stop_after_batches`."""
        import mlx.core as mx
        from mlx.utils import tree_map

        cfg, pos = self.cfg, self.position
        batches = self.plan(epoch)
        bar = Progress(len(batches), f"epoch {epoch + 1}/{cfg.epochs}", done=pos.batch_in_epoch)
        self.model.train()
        accum, n_accum = None, 0
        for i in range(pos.batch_in_epoch, len(batches)):
            batch = batches[i]
            mx.random.seed(_batch_seed(cfg.seed, pos.batch))
            h0 = self.cache.prefix(batch) if self.cache is not None else None
            (loss, n), grads = self.value_and_grad(self.model, batch, h0)
            accum = grads if accum is None else tree_map(mx.add, accum, grads)
            n_accum += 1
            mx.eval(loss, accum)
            loss_value = loss.item()
            self.losses.write({"batch": pos.batch, "step": pos.step, "epoch": epoch,
                               "task": batch.task, "loss": loss_value})  # fmt: skip
            pos.batch += 1
            pos.batch_in_epoch = i + 1
            bar.update(1, int(n), loss_value)
            if n_accum == cfg.grad_accum or i == len(batches) - 1:
                self.update(accum, n_accum)
                mx.eval(self.model.parameters(), self.optimizer.state)
                accum, n_accum = None, 0
                pos.step += 1
                if pos.step % cfg.checkpoint_every == 0 and i < len(batches) - 1:
                    pos.train_seconds = time.perf_counter() - self.t_start
                    write_checkpoint(self.run_dir, self.model, self.optimizer, pos)
            if stop_after_batches is not None and pos.batch >= stop_after_batches:
                bar.close()
                return False
        bar.close()
        return True

    def end_epoch(self, epoch: int) -> None:
        """Evaluate on val, keep the best weights, write metrics and the epoch's checkpoint."""
        from mlx_rsg.predict import evaluate

        cfg, pos = self.cfg, self.position
        scores = evaluate(
            self.model,
            self.tokenizer,
            {t: self.data[t].val for t in cfg.tasks if self.data[t].val},
            cfg.max_len,
            cfg.batch_size,
            log=self.log,
            h0_fn=self.val_cache.prefix if self.val_cache is not None else None,
            desc=f"val {epoch + 1}/{cfg.epochs}",
        )
        pos.history.append({
            "epoch": epoch + 1,
            "step": pos.step,
            **scores,
            "train_loss": self.losses.mean_loss(epoch),
            "seconds": round(time.perf_counter() - self.t_start, 1),
        })  # fmt: skip
        self.log(
            f"epoch {epoch + 1}: val score {scores['score']:.4f} "
            + " ".join(f"{t}={v['score']:.3f}" for t, v in scores["tasks"].items())
        )
        if pos.best is None or scores["score"] > pos.best["score"]:
            save_weights(self.run_dir / WEIGHTS, trainable_weights(self.model))
            pos.best = {"epoch": epoch + 1, "score": scores["score"]}
        pos.epoch, pos.batch_in_epoch = epoch + 1, 0
        pos.train_seconds = time.perf_counter() - self.t_start
        _write_metrics(self.run_dir, pos, final=None)
        write_checkpoint(self.run_dir, self.model, self.optimizer, pos)


def _num_layers(model_dir: Path) -> int:
    path = model_dir / "config.json"
    config = read_json_object(path, f"{model_dir}: no config.json (not a converted model)")
    config = config.get("text_config", config)
    if "num_hidden_layers" not in config:
        raise UserError(f"{path}: field 'num_hidden_layers': missing")
    return int(config["num_hidden_layers"])


def _use_cache(cfg: TrainConfig, model) -> bool:
    return cfg.prefix_cache and model.trainable_start() > 0


def _write_metrics(run_dir: Path, position: Position, final: dict | None) -> dict:
    metrics = {
        "selection": "best epoch by the mean official val score of the trained tasks",
        "history": position.history,
        "best": position.best,
        "train_seconds": round(position.train_seconds, 1),
    }
    if final is not None:
        metrics["final"] = final
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _finish(run_dir, model_dir, model, tokenizer, data, cfg, position, fuse, copy_backbone, log):
    """Reload the best weights, score LiDiRus with the TERRa head, write the final run.json."""
    import mlx.core as mx

    from mlx_rsg.predict import evaluate
    from mlx_rsg.run import copy_model_dir, fuse_lora, mark_merged, write_backbone

    model.load_weights(list(mx.load(str(run_dir / WEIGHTS)).items()), strict=False)
    model.eval()
    final = None
    if "LiDiRus" in data:
        best = position.history[position.best["epoch"] - 1]
        diag = evaluate(model, tokenizer, {"LiDiRus": data["LiDiRus"].val}, cfg.max_len,
                        cfg.batch_size, log=log, desc="LiDiRus")  # fmt: skip
        per_task = {**best["tasks"], **diag["tasks"]}
        final = {
            "tasks": per_task,
            "total": _total(per_task),
            "note": "LiDiRus (diagnostic, scored once with the best epoch's TERRa head) "
            "included in the total",
        }
        log(f"LiDiRus (TERRa head): {diag['tasks']['LiDiRus']['score']:.4f}")
    info = read_run_json(run_dir)
    info["status"] = "done"
    info["best_epoch"] = position.best["epoch"]
    info["tasks"] = task_info(list(data))
    if fuse or copy_backbone:
        tmp = run_dir / ".backbone.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if fuse:
            n = fuse_lora(model)
            write_backbone(model.backbone, model_dir, tmp)
            save_weights(run_dir / WEIGHTS, trainable_weights(model))
            mark_merged(info, model.backbone.num_layers, cfg.method, n)
            log(f"fused {n} LoRA layers into backbone/")
        else:
            copy_model_dir(model_dir, tmp)
        shutil.rmtree(run_dir / "backbone", ignore_errors=True)
        tmp.rename(run_dir / "backbone")
        info["backbone"] = {**info["backbone"], "copied": True}
    write_json(run_dir / "run.json", info)
    return _write_metrics(run_dir, position, final)


def _total(per_task: dict[str, dict]) -> float:
    from mlx_rsg.tasks import total_score

    return total_score(
        {t: {k: v for k, v in s.items() if k != "score"} for t, s in per_task.items()}
    )
