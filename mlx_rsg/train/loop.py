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
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from mlx_rsg.accel import runtime
from mlx_rsg.distributed import SINGLE, World
from mlx_rsg.errors import UserError
from mlx_rsg.io import read_json_object, write_json
from mlx_rsg.model import methods, substitution
from mlx_rsg.model.backbone import check_vocabulary, load_backbone, load_tokenizer
from mlx_rsg.model.batching import examples_in, loss_fn, shard_range, take_rows
from mlx_rsg.model.classifier import RSGClassifier
from mlx_rsg.model.dropout import batch_rows
from mlx_rsg.model.features import PrefixCache
from mlx_rsg.model.label_words import label_word_heads
from mlx_rsg.model.methods.lora import default_targets, fuse_lora
from mlx_rsg.model.offsets import calibrated
from mlx_rsg.model.precision import set_weights
from mlx_rsg.model_files import copy_model_dir, weight_hashes
from mlx_rsg.predict import evaluate
from mlx_rsg.progress import Progress
from mlx_rsg.run import (
    RUN_FORMAT,
    RUN_VERSION,
    WEIGHTS,
    backbone_ref,
    check_replaceable_run,
    config_dict,
    dataclass_from_dict,
    mark_merged,
    read_run_json,
    run_lock,
    task_info,
)
from mlx_rsg.submission import write_submission
from mlx_rsg.tasks import total_score
from mlx_rsg.train.calibrate import calibrated_scores, choose_calibration
from mlx_rsg.train.checkpoint import (
    LossLog,
    Position,
    broadcast_state,
    peek_position,
    read_checkpoint,
    write_checkpoint,
)
from mlx_rsg.train.config import TrainConfig, classifier_config, heads_for
from mlx_rsg.train.decide import choose_rwsd_decision
from mlx_rsg.train.loss_scale import dynamic, initial_scale, update_scale
from mlx_rsg.train.optim import compiled_update, make_optimizer
from mlx_rsg.train.plan import (
    TaskData,
    batch_seed,
    epoch_batches,
    epoch_units,
    load_task_data,
    max_lens,
    with_dev_trained,
)
from mlx_rsg.train.select import log_loss
from mlx_rsg.version import __version__
from mlx_rsg.weights import save_weights, trainable_weights, write_backbone

VAL_PREDICTIONS = "val_predictions.zip"  # written into RUN_DIR with --dev-per-task
DEV_PREDICTIONS = "dev_predictions"  # epochN.zip per epoch, with a dev split


def _same_config(saved: TrainConfig, cfg: TrainConfig) -> None:
    diff = [
        f"--{k.replace('_', '-')} {getattr(saved, k)!r} (now {getattr(cfg, k)!r})"
        for k in config_dict(cfg)
        if getattr(saved, k) != getattr(cfg, k)
    ]
    if diff:
        raise UserError(f"--resume needs the run's own flags; it was trained with {diff[0]}")


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
    world: World = SINGLE,
) -> dict[str, Any]:
    """Train, evaluate every epoch, keep the best weights; returns metrics.json's content.

    `stop_after_batches` ends the process's work early (tests of resume use it like a kill).
    `world`: the ranks of a data-parallel run (`distributed`); rank 0 logs and writes."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not world.is_main:
        log = lambda msg: None  # noqa: E731
    model_dir, data_dir, run_dir = Path(model_dir), Path(data_dir), Path(run_dir)
    with run_lock(run_dir) if world.is_main else nullcontext():  # one writer per run directory
        hashes = _check_start(model_dir, data_dir, run_dir, cfg, resume, force, fuse, world)
        loop = _Loop.build(model_dir, data_dir, run_dir, cfg, resume, log, world, hashes)
        while True:
            for epoch in range(loop.position.epoch, loop.epochs):
                if not loop.run_epoch(epoch, stop_after_batches):
                    loop.losses.close()
                    return {"stopped_at_batch": loop.position.batch}
                loop.end_epoch(epoch)
            if not cfg.refit or loop.position.phase == "refit":
                break
            loop.start_refit(model_dir)
        loop.losses.close()
        return _finish(loop, model_dir, fuse, copy_backbone)


def _check_start(model_dir, data_dir, run_dir, cfg, resume, force, fuse, world) -> dict | None:
    """Every check that can fail before any work; then a --force'd old run is removed (only a
    run directory of ours that holds none of the inputs). The run directory is rank 0's.
    Returns the backbone's weight hashes if it computed them (--resume on rank 0), else None."""
    cfg.validate()
    if fuse and not methods.get(cfg.method).mergeable:
        raise UserError("--fuse: MLP adapters are not linear and cannot be merged; omit --fuse")
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: model directory not found")
    if not data_dir.exists():
        raise UserError(f"{data_dir}: data not found")
    hashes = None
    if resume and world.is_main:
        info = read_run_json(run_dir)
        saved = dataclass_from_dict(TrainConfig, info["train"], run_dir / "run.json", "train.")
        if "share_prefix" not in info["train"]:  # a run from before it batched units apart
            saved = replace(saved, share_prefix=False)
        _same_config(saved, cfg)
        hashes = weight_hashes(model_dir)
        if hashes != info["backbone"]["sha256"]:
            raise UserError(f"{model_dir}: not the backbone this run was started with")
    layers = num_layers(model_dir)
    ccfg = classifier_config(cfg, layers)  # a bad --freeze-layers fails before any work
    layers = ccfg.feature_layer or layers  # the blocks the classifier keeps (checked above)
    _check_quantized_backbone(model_dir, cfg, methods.get(cfg.method).depth(ccfg, layers), fuse)
    if not resume and world.is_main and run_dir.exists():
        if not force:
            raise UserError(
                f"{run_dir}: already exists (use --force to overwrite, --resume to continue)"
            )
        check_replaceable_run(run_dir, model_dir, data_dir)
        shutil.rmtree(run_dir)
    return hashes


def _check_quantized_backbone(model_dir: Path, cfg: TrainConfig, depth: int, fuse: bool) -> None:
    """A quantized MODEL_DIR trains LoRA (QLoRA), adapters or heads on its rounded weights, so
    the run scores, and ships, the quantized model itself. Its weights cannot train, and
    merging LoRA into them would round the update again."""
    bits = quantized_bits(model_dir)
    if bits is None:
        return
    if cfg.method == "freeze" and depth:
        raise UserError(
            f"--method freeze: {model_dir} is quantized ({bits}-bit), and quantized weights do "
            "not train; use --method lora on it (QLoRA) or train the float model"
        )
    if fuse:
        raise UserError(
            f"--fuse: {model_dir} is quantized ({bits}-bit): merging LoRA into its weights "
            "would round them again and change the decisions val was scored with; omit --fuse "
            "(--copy-backbone makes the run standalone)"
        )


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
    losses: LossLog
    log: Callable[[str], None]
    plans: dict[int, tuple] = field(default_factory=dict)
    cache: Any = None  # PrefixCache of the train split's frozen prefix, or None
    eval_cache: Any = None  # the same for the split epochs are chosen on (dev, else val)
    value_and_grad: Any = None
    update: Any = None
    t_start: float = 0.0
    world: World = SINGLE

    @classmethod
    def build(cls, model_dir, data_dir, run_dir, cfg: TrainConfig, resume: bool, log,
              world: World = SINGLE, hashes: dict | None = None) -> _Loop:  # fmt: skip
        """`hashes`: the backbone's weight hashes if the caller computed them already. A resumed
        run continues the phase its checkpoint is in (--refit: train + dev are trained on)."""
        data = load_task_data(data_dir, cfg, log)
        phase = _resumed_phase(run_dir, resume, world)
        # Hashed once (~1 GB for Gemma-3-270M): every rank's fingerprint, and run.json's.
        if hashes is None and (world.size > 1 or (world.is_main and not resume)):
            hashes = weight_hashes(model_dir)
        if world.size > 1:
            fingerprint = _fingerprint(hashes, cfg, resume, data)
            world.check_same("flags, model files or data", fingerprint)
        bb = load_backbone(model_dir, cores=world.cores)
        tokenizer = load_tokenizer(model_dir)
        check_vocabulary(bb, tokenizer, model_dir)
        heads = heads_for(cfg.tasks)
        ccfg = classifier_config(cfg, bb.num_layers)
        ccfg.lora_targets = default_targets(ccfg.lora_targets, bb.config["model_type"])
        # lengths from the splits as they are (a refit trains on dev too, at the same lengths)
        ccfg.task_max_len = tuple(f"{t}={n}" for t, n in max_lens(cfg, data, tokenizer).items())
        if phase.phase == "refit":
            data = with_dev_trained(data)
        model = _new_model(bb, ccfg, cfg)
        loop = cls(cfg, run_dir, data, model, tokenizer, None, phase, None, log, world=world)
        if not loop.plan(0):
            raise UserError(f"{data_dir}: no training examples for {', '.join(cfg.tasks)}")
        if not resume:  # a resumed run's heads come from its checkpoint
            loop.init_heads()
        loop.optimizer = make_optimizer(cfg, loop.total_steps())
        if resume and world.is_main:
            _check_runtime(run_dir, bb.runtime, log)
            loop.position = read_checkpoint(run_dir, model, loop.optimizer)
            log(f"resuming at epoch {loop.position.epoch + 1}, "
                f"batch {loop.position.batch_in_epoch}")  # fmt: skip
        if world.size > 1:  # every rank starts from rank 0's weights (and resumed state)
            loop.position = broadcast_state(world, model, loop.optimizer, loop.position, resume)
        if not resume and world.is_main:
            run_dir.mkdir(parents=True)
            write_json(run_dir / "run.json", {
                "format": RUN_FORMAT, "version": RUN_VERSION, "status": "training",
                "backbone": backbone_ref(model_dir, hashes), "classifier": config_dict(model.cfg),
                "train": config_dict(cfg), "heads": heads, "tasks": task_info(list(data)),
                "runtime": runtime.record(bb.runtime),
            })  # fmt: skip
        losses = run_dir / "losses.jsonl" if world.is_main else None  # others: in memory
        loop.losses = LossLog(losses, loop.position.batch if resume else None)
        # Train and val units share keys (record idx), so each split gets its own cache; the
        # evaluated split's prefix is then computed once for every epoch's evaluation too.
        if _use_cache(cfg, model):
            sub = (lambda s: str(Path(cfg.cache_dir) / s)) if cfg.cache_dir else (lambda s: None)
            loop.cache = PrefixCache(model, cache_dir=sub("train"))
            loop.eval_cache = PrefixCache(model, cache_dir=sub("eval"))
            if resume:
                loop.refill_cache()
        if not resume:
            loop.position.loss_scale = initial_scale(cfg.dtype)
        loop.value_and_grad = loop.scaled_value_and_grad()
        loop.update = compiled_update(model, loop.optimizer)
        loop.t_start = time.perf_counter() - loop.position.train_seconds
        return loop

    @property
    def epochs(self) -> int:
        """The epochs of the current phase: --epochs, or a refit's chosen number."""
        refit = self.position.refit
        return refit["epochs"] if self.position.phase == "refit" and refit else self.cfg.epochs

    def total_steps(self) -> int:
        """Optimizer steps of the current phase (its learning-rate schedule's length)."""
        return math.ceil(len(self.plan(0)) / self.cfg.grad_accum) * self.epochs

    def plan(self, epoch: int) -> list:
        """The epoch's batches (only the latest epoch's are kept)."""
        return self._epoch(epoch)[1]

    def _epoch(self, epoch: int) -> tuple[list, list]:
        """(the epoch's encoded units of every task, its batches)."""
        if epoch not in self.plans:
            self.plans.clear()
            lengths = {t: self.model.cfg.max_len_for(t) for t in self.cfg.tasks}
            units = epoch_units(self.data, self.tokenizer, self.cfg, epoch, lengths)
            batches = epoch_batches(units, self.cfg, epoch)
            self.plans[epoch] = ([e for us in units.values() for e in us], batches)
        return self.plans[epoch]

    def init_heads(self) -> None:
        """--head-init label-words: each head with label words starts at their output rows."""
        if self.cfg.head_init != "label-words":
            return
        by_task: dict[str, list] = {}
        for e in self._epoch(0)[0]:
            by_task.setdefault(e.unit.task, []).append(e)
        scales = label_word_heads(self.model, self.tokenizer, by_task, self.cfg.batch_size)
        self.log("heads at their label words, x RMS " + ", ".join(f"{h} {s:.1f}" for h, s in
                                                                   scales.items()))  # fmt: skip

    def scaled_value_and_grad(self):
        """(loss, examples), gradients of the model's trainable parameters, both at the current
        loss scale (1 unless float16: `loss_scale.py`)."""

        head_only = self.cfg.head_only_tasks()

        def scaled(model, batch, h0):
            loss, n = loss_fn(model, batch, h0, head_only=batch.task in head_only)
            return loss * self.position.loss_scale, n

        return nn.value_and_grad(self.model, scaled)

    def _fill_shared(self, units: list, batches: list, desc: str | None = None) -> None:
        """Cache the rows of the epoch's units whose passage several units share (run once for
        them all): only this rank's rows of the batches under data parallelism."""
        if self.world.size > 1:
            mine = {i for b in batches for i in b.ids[slice(*self._rows(b))]}
            units = [e for e in units if (e.unit.task, e.unit.key) in mine]
        self.cache.fill(units, self.cfg.batch_size, desc=desc)

    def refill_cache(self) -> None:
        """A resumed run's frozen-prefix rows, computed in the batches the stopped run computed
        them in, in its order: a GEMM's last bits can depend on the batch's shape (OpenBLAS's
        Haswell kernels), so rows recomputed in the resumed epoch's batches instead would make
        its losses differ from the uninterrupted run's. Costs what the stopped run spent on
        them; only the rows it had (a kill loses the in-RAM cache)."""
        pos = self.position
        done = [(e, None) for e in range(pos.epoch)] + [(pos.epoch, pos.batch_in_epoch)]
        for epoch, upto in done:
            units, batches = self._epoch(epoch)
            self._fill_shared(units, batches)
            for batch in batches[:upto]:
                part = self._part(batch)
                if part is not None:
                    self.cache.prefix(part)
        self.log(f"frozen-prefix cache refilled as the stopped run filled it: {len(self.cache)} "
                 "examples")

    def run_epoch(self, epoch: int, stop_after_batches: int | None) -> bool:
        """Train the rest of `epoch`; False if stopped early by `stop_after_batches`."""

        cfg, pos, world = self.cfg, self.position, self.world
        units, batches = self._epoch(epoch)
        if self.cache is not None:
            self._fill_shared(units, batches, desc="shared passages")
        name = "refit epoch" if pos.phase == "refit" else "epoch"
        bar = Progress(len(batches), f"{name} {epoch + 1}/{self.epochs}", done=pos.batch_in_epoch)
        self.model.train()
        accum, n_accum = None, 0
        for i in range(pos.batch_in_epoch, len(batches)):
            batch = batches[i]
            mx.random.seed(batch_seed(cfg.seed, pos.batch))
            if world.size == 1:
                h0 = self.cache.prefix(batch) if self.cache is not None else None
                (loss, n), grads = self.value_and_grad(self.model, batch, h0)
            else:
                loss, n, grads = self._shard_step(batch)
            accum = grads if accum is None else tree_map(mx.add, accum, grads)
            n_accum += 1
            mx.eval(loss, accum)
            loss_value = loss.item() / pos.loss_scale
            if not math.isfinite(loss_value):  # nothing to gain from going on: stop, say where
                raise UserError(
                    f"{self.run_dir}: the training loss is {loss_value} at batch {pos.batch} "
                    f"(epoch {epoch + 1}, {batch.task}); lower --lr / --head-lr"
                )
            self.losses.write({"batch": pos.batch, "step": pos.step, "epoch": epoch,
                               "phase": pos.phase, "task": batch.task,
                               "loss": loss_value})  # fmt: skip
            pos.batch += 1
            pos.batch_in_epoch = i + 1
            bar.update(1, int(n), loss_value)
            if n_accum == cfg.grad_accum or i == len(batches) - 1:
                grads, scale = world.sum_tree(accum), pos.loss_scale
                if not dynamic(cfg.dtype) or update_scale(pos, grads):  # else: overflow, skip
                    self.update(grads, n_accum * scale)
                mx.eval(self.model.parameters(), self.optimizer.state)
                accum, n_accum = None, 0
                pos.step += 1
                if pos.step % cfg.checkpoint_every == 0 and i < len(batches) - 1 and world.is_main:
                    pos.train_seconds = time.perf_counter() - self.t_start
                    write_checkpoint(self.run_dir, self.model, self.optimizer, pos)
            if stop_after_batches is not None and pos.batch >= stop_after_batches:
                bar.close()
                return False
        bar.close()
        return True

    def _rows(self, batch) -> tuple[int, int]:
        return shard_range(batch, self.world.rank, self.world.size)

    def _part(self, batch):
        """This rank's rows of `batch` as its step runs them: the batch itself on one rank, None
        where another rank has them all."""
        if self.world.size == 1:
            return batch
        start, end = self._rows(batch)
        return take_rows(batch, start, end) if end > start else None

    def _shard_step(self, batch) -> tuple[mx.array, int, Any]:
        """This rank's rows of `batch`: (the whole batch's mean loss, its examples, this rank's
        share of the batch's gradient). Shares are weighted by examples, so their sum over the
        ranks is the gradient one process computes on the whole batch."""
        start, _ = self._rows(batch)
        total = examples_in(batch)
        part = self._part(batch)
        if part is not None:
            h0 = self.cache.prefix(part) if self.cache is not None else None
            with batch_rows(start, len(batch.keys)):  # the whole batch's dropout masks
                (loss, n), grads = self.value_and_grad(self.model, part, h0)
            share = n / total
            loss, grads = loss * share, tree_map(lambda g: g * share, grads)
        else:  # a batch of one large choice group: another rank has it all
            loss = mx.array(0.0)
            grads = tree_map(mx.zeros_like, self.model.trainable_parameters())
        return self.world.all_sum(loss), total, grads

    def end_epoch(self, epoch: int) -> None:
        """Evaluate on dev (else val), keep the best weights, write metrics and the epoch's
        checkpoint."""

        cfg, pos = self.cfg, self.position
        if pos.phase == "refit":
            self._end_refit_epoch(epoch)
            return
        split = "dev" if cfg.has_dev else "val"
        scores, logits, records = self._score_epoch(epoch, split)
        # how many records each score stands on (folds of a cross-validation are pooled by it)
        entry = {"epoch": epoch + 1, "step": pos.step, **scores, "records": records}
        line = f"epoch {epoch + 1}: {split} score {scores['score']:.4f} " + " ".join(
            f"{t}={v['score']:.3f}" for t, v in scores["tasks"].items()
        )
        chosen_on = scores["score"]
        if logits is not None and cfg.calibrate:  # as the calibrated run will decide
            calibrated = calibrated_scores(scores["tasks"], logits)
            chosen_on = sum(calibrated.values()) / len(calibrated)
            entry["calibrated"] = {"tasks": calibrated, "score": chosen_on}
            line += f"; calibrated {chosen_on:.4f}"
        criterion = chosen_on  # higher is better
        if logits is not None:
            losses = {t: log_loss(t, *logits[t]) for t in logits}
            mean = sum(losses.values()) / len(losses)
            entry["dev_loss"] = {"tasks": losses, "mean": mean}
            line += f"; dev loss {mean:.4f}"
            if cfg.select == "loss":
                criterion = -mean
        entry["train_loss"] = self.losses.mean_loss(epoch)
        entry["seconds"] = round(time.perf_counter() - self.t_start, 1)
        if dynamic(cfg.dtype):
            entry["loss_scale"] = {"scale": pos.loss_scale, "skipped_steps": pos.skipped_steps}
            line += f"; loss scale {pos.loss_scale:g} ({pos.skipped_steps} steps skipped)"
        pos.history.append(entry)
        self.log(line)
        main = self.world.is_main
        if pos.best is None or criterion > pos.best["criterion"]:
            if main:
                save_weights(self.run_dir / WEIGHTS, trainable_weights(self.model))
            pos.best = {"epoch": epoch + 1, "score": chosen_on, "criterion": criterion}
        pos.epoch, pos.batch_in_epoch = epoch + 1, 0
        pos.train_seconds = time.perf_counter() - self.t_start
        if main:
            _write_metrics(self.run_dir, cfg, pos, final=None)
            write_checkpoint(self.run_dir, self.model, self.optimizer, pos)

    def _score_epoch(self, epoch: int, split: str) -> tuple[dict, dict | None, dict[str, int]]:
        """The epoch's scores on `split`; with a dev split also its logits per task, and each
        dev record's decision (as trained) in RUN_DIR/dev_predictions/epochN.zip. Returns the
        records scored per task too."""
        cfg = self.cfg
        logits, predictions = ({}, {}) if cfg.has_dev else (None, None)
        records = {t: getattr(self.data[t], split) for t in cfg.tasks}
        records = {t: recs for t, recs in records.items() if recs}
        scores = evaluate(self.model, self.tokenizer, records, cfg.batch_size, log=self.log,
                          cache=self.eval_cache, desc=f"{split} {epoch + 1}/{cfg.epochs}",
                          predictions=predictions, world=self.world, logits=logits)  # fmt: skip
        if predictions and self.world.is_main:
            (self.run_dir / DEV_PREDICTIONS).mkdir(exist_ok=True)
            write_submission(self.run_dir / DEV_PREDICTIONS / f"epoch{epoch + 1}.zip", predictions)
        return scores, logits, {t: len(recs) for t, recs in records.items()}

    def start_refit(self, model_dir: Path) -> None:
        """--refit: choose the calibration on dev with the best epoch's weights, then start
        again from the backbone as it was, to train on train + dev for the best epoch's number
        of epochs. The frozen-prefix cache carries over (the frozen blocks are the same)."""
        cfg, pos, world = self.cfg, self.position, self.world
        _load_best(self)
        calibration = {}
        if cfg.calibrate:
            calibration = choose_calibration(
                self.model, self.tokenizer, {t: self.data[t].dev for t in cfg.tasks},
                cfg.batch_size, self.log, world, train={t: self.data[t].train for t in cfg.tasks},
            )  # fmt: skip
        rwsd = _rwsd_decision(self, model_dir, calibration)
        epochs = pos.best["epoch"]
        self.log(f"refit: epoch {epochs} chosen on dev; training again on train + dev for "
                 f"{epochs} epoch(s)")  # fmt: skip
        pos.phase = "refit"
        pos.refit = {"epochs": epochs, "calibration": calibration, "rwsd": rwsd}
        pos.epoch = pos.batch_in_epoch = 0
        self.data = with_dev_trained(self.data)
        self.plans.clear()
        bb = load_backbone(model_dir, cores=self.world.cores)
        self.model = _new_model(bb, self.model.cfg, cfg)
        self.init_heads()
        self.optimizer = make_optimizer(cfg, self.total_steps())
        if self.cache is not None:
            self.cache.model = self.model
        self.eval_cache = None
        self.value_and_grad = self.scaled_value_and_grad()
        self.update = compiled_update(self.model, self.optimizer)
        if world.is_main:
            _write_metrics(self.run_dir, cfg, pos, final=None)
            write_checkpoint(self.run_dir, self.model, self.optimizer, pos)

    def _end_refit_epoch(self, epoch: int) -> None:
        """A refit epoch: nothing is scored (dev is trained on); the last one's weights are the
        run's."""
        pos, main = self.position, self.world.is_main
        pos.train_seconds = time.perf_counter() - self.t_start
        entry = {"phase": "refit", "epoch": epoch + 1, "step": pos.step,
                 "train_loss": self.losses.mean_loss(epoch, "refit"),
                 "seconds": round(pos.train_seconds, 1)}  # fmt: skip
        pos.history.append(entry)
        self.log(f"refit epoch {epoch + 1}/{self.epochs}: train loss {entry['train_loss']:.4f}")
        if epoch + 1 == self.epochs and main:
            save_weights(self.run_dir / WEIGHTS, trainable_weights(self.model))
        pos.epoch, pos.batch_in_epoch = epoch + 1, 0
        if main:
            _write_metrics(self.run_dir, self.cfg, pos, final=None)
            write_checkpoint(self.run_dir, self.model, self.optimizer, pos)


def _new_model(bb, ccfg, cfg: TrainConfig) -> RSGClassifier:
    """A classifier as training starts it: heads at zero, LoRA / adapters seeded from --seed."""
    mx.random.seed(cfg.seed)
    model = RSGClassifier(bb, ccfg, heads_for(cfg.tasks))
    mx.eval(model.parameters())
    return model


def _resumed_phase(run_dir: Path, resume: bool, world: World) -> Position:
    """A new run's Position; with --resume, the phase and refit plan of the last checkpoint
    (rank 0 reads it, every rank gets it), which decide what the run trains on."""
    if not resume:
        return Position()
    text = None
    if world.is_main:
        peek = peek_position(run_dir)
        text = json.dumps({"phase": peek.phase, "refit": peek.refit})
    if world.size > 1:
        text = world.broadcast_bytes(text.encode() if text else None).decode()
    return Position(**json.loads(text))


def _load_best(loop: _Loop) -> None:
    """The weights the run keeps (the best epoch's, or the refit's), on every rank."""
    world = loop.world
    best = dict(mx.load(str(loop.run_dir / WEIGHTS))) if world.is_main else None
    set_weights(loop.model, world.broadcast_arrays(best))
    loop.model.eval()


def _model_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    return read_json_object(path, f"{model_dir}: no config.json (not a converted model)")


def quantized_bits(model_dir: Path) -> int | None:
    """The bits of a quantized model directory (mlx-rsg quantize, mlx-lm convert -q), else None."""
    q = _model_config(model_dir).get("quantization")
    return q.get("bits") if isinstance(q, dict) else None


def num_layers(model_dir: Path) -> int:
    """The converted model's number of decoder blocks (its config.json)."""
    path = model_dir / "config.json"
    config = _model_config(model_dir)
    config = config.get("text_config", config)
    n = config.get("num_hidden_layers")
    if n is None:
        raise UserError(f"{path}: field 'num_hidden_layers': missing")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"{path}: field 'num_hidden_layers': expected a positive integer, got "
                        f"{json.dumps(n)[:40]}")  # fmt: skip
    return n


def _use_cache(cfg: TrainConfig, model) -> bool:
    return cfg.prefix_cache and model.trainable_start() > 0


def _write_metrics(run_dir: Path, cfg: TrainConfig, position: Position, final: dict | None) -> dict:
    metrics = _metrics(cfg, position, final)
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _metrics(cfg: TrainConfig, position: Position, final: dict | None) -> dict:
    split = "dev (carved from train)" if cfg.has_dev else "val"
    how = f"best epoch by the mean official {split} score of the trained tasks"
    if cfg.has_dev and cfg.calibrate:
        how += ", label heads at their calibrated offsets"
    if cfg.has_dev and cfg.select == "loss":
        how = "best epoch by the lowest mean dev log-loss of the trained tasks' heads"
    if cfg.refit:
        how += "; then trained again on train + dev for that many epochs (--refit)"
    metrics = {
        "selection": how,
        "history": position.history,
        "best": position.best,
        "train_seconds": round(position.train_seconds, 1),
    }
    if final is not None:
        metrics["final"] = final
    return metrics


def _finish(loop: _Loop, model_dir: Path, fuse: bool, copy_backbone: bool) -> dict[str, Any]:
    """Reload the best weights, score LiDiRus with the TERRa head, write the final run.json."""
    cfg, run_dir, log, world = loop.cfg, loop.run_dir, loop.log, loop.world
    _load_best(loop)
    model = loop.model
    final = None
    if cfg.has_dev:
        final = _score_val_once(loop, model_dir)
    elif "LiDiRus" in loop.data or "RWSD" in loop.data:
        chosen = loop.position.history[loop.position.best["epoch"] - 1]
        rwsd = _rwsd_decision(loop, model_dir, {})
        again = {t: loop.data[t].val for t in ("LiDiRus", "RWSD") if t in loop.data}
        if rwsd.get("by") != "substitution":  # RWSD's val as the best epoch scored it
            again.pop("RWSD", None)
        per_task = dict(chosen["tasks"])
        if again:
            scored = evaluate(model, loop.tokenizer, again, cfg.batch_size, log=log,
                              desc=", ".join(again), world=world)["tasks"]  # fmt: skip
            per_task.update(scored)
            log(" ".join(f"{t}: {v['score']:.4f}" for t, v in scored.items()))
        final = {
            "tasks": per_task,
            "total": _total(per_task),
            "rwsd_decision": rwsd,
            "note": "the best epoch's val scores; LiDiRus (diagnostic, scored once with the "
            "best epoch's TERRa head) included in the total; RWSD as --rwsd-decision decides",
        }
    if not world.is_main:
        return _metrics(cfg, loop.position, final)
    info = read_run_json(run_dir)
    info["status"] = "done"
    info["best_epoch"] = loop.position.best["epoch"]
    if final is not None and final.get("calibration"):
        info["calibration"] = {t: {"offsets": c["offsets"], "prior_shift": c["prior_shift"]}
                               for t, c in final["calibration"].items()}  # fmt: skip
    info["tasks"] = task_info(list(loop.data))
    if final is not None and final.get("rwsd_decision"):
        info["decisions"] = {"RWSD": final["rwsd_decision"]}
    if fuse or copy_backbone:
        _write_own_backbone(loop, model_dir, fuse, info)
    write_json(run_dir / "run.json", info)
    return _write_metrics(run_dir, cfg, loop.position, final)


def _write_own_backbone(loop: _Loop, model_dir: Path, fuse: bool, info: dict) -> None:
    """RUN_DIR/backbone (--fuse, --copy-backbone): LoRA fused in, and only the blocks the
    classifier runs (a `--feature-layer` run's blocks above its layer are dropped)."""
    model, run_dir, log = loop.model, loop.run_dir, loop.log
    tmp = run_dir / ".backbone.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    dropped = model.blocks_dropped
    if fuse or dropped:
        n = fuse_lora(model)
        write_backbone(model.backbone, model_dir, tmp)
        if fuse:
            save_weights(run_dir / WEIGHTS, trainable_weights(model))
            mark_merged(info, model.backbone.num_layers, loop.cfg.method, n)
            log(f"fused {n} LoRA layers into backbone/")
        if dropped:
            log(f"backbone/: the {dropped} blocks above --feature-layer {model.n_blocks} dropped "
                "(never run)")  # fmt: skip
    else:
        copy_model_dir(model_dir, tmp)
    shutil.rmtree(run_dir / "backbone", ignore_errors=True)
    tmp.rename(run_dir / "backbone")
    info["backbone"] = {**info["backbone"], "copied": True}


def _check_runtime(run_dir: Path, now: runtime.Runtime, log) -> None:
    """A run resumed where the kernels, fast paths or cores differ from its start goes on as a
    sister of the run it would have been (its floats drift apart): say so, and how to pin them."""
    recorded = read_run_json(run_dir).get("runtime")
    changed = runtime.differences(recorded, runtime.record(now)) if recorded else []
    if changed:
        env = " ".join(f"{k}={v}" for k, v in runtime.pinning(recorded).items())
        log(f"note: resumed with other choices than the run started with ({'; '.join(changed)}): "
            f"it goes on, but not bit for bit; to pin its own: {env}")


def _rwsd_decision(loop: _Loop, model_dir: Path, calibration: dict) -> dict[str, Any]:
    """How RWSD is decided (--rwsd-decision), chosen on its dev records; {} without RWSD. The
    model decides that way from here on."""
    if "RWSD" not in loop.data:
        return {}
    return choose_rwsd_decision(loop.model, loop.tokenizer, model_dir, loop.cfg.rwsd_decision,
                                loop.data["RWSD"].dev, calibration, loop.cfg.batch_size,
                                loop.log, loop.world)  # fmt: skip


def _score_val_once(loop: _Loop, model_dir: Path) -> dict[str, Any]:
    """With a dev split: the calibration chosen on dev (at a refit's start, or now) goes into
    the heads while every task's val split is scored once, LiDiRus with its calibrated copy of
    the TERRa head, and those predictions are written in the official submission format to
    RUN_DIR/val_predictions.zip. The offsets go into run.json; the heads stay as trained for
    the weights file, --fuse and --copy-backbone."""
    cfg, model, tokenizer, data, world = loop.cfg, loop.model, loop.tokenizer, loop.data, loop.world
    pos = loop.position
    if pos.phase == "refit":
        calibration, rwsd = pos.refit["calibration"], pos.refit.get("rwsd", {})
        if rwsd.get("by") == "substitution":  # chosen at the refit's start, on dev
            model.substitution = substitution.build(model.backbone, rwsd, tokenizer,
                                                    verify=False, cores=world.cores)  # fmt: skip
    else:
        calibration = {}
        if cfg.calibrate:
            dev = {t: data[t].dev for t in cfg.tasks}
            train = {t: data[t].train for t in cfg.tasks}
            calibration = choose_calibration(model, tokenizer, dev, cfg.batch_size, loop.log,
                                             world, train=train)  # fmt: skip
        rwsd = _rwsd_decision(loop, model_dir, calibration)
    val = {t: d.val for t, d in data.items() if d.val}
    predictions: dict[str, tuple] = {}
    with calibrated(model, calibration):
        scores = evaluate(model, tokenizer, val, cfg.batch_size, log=loop.log,
                          desc="val (once)", predictions=predictions, world=world)  # fmt: skip
    if world.is_main:
        write_submission(loop.run_dir / VAL_PREDICTIONS, predictions)
    loop.log("val: " + " ".join(f"{t}={v['score']:.3f}" for t, v in scores["tasks"].items()))
    return {
        "split": "val",
        "tasks": scores["tasks"],
        "total": _total(scores["tasks"]),
        "calibration": calibration,
        "rwsd_decision": rwsd,
        "predictions": VAL_PREDICTIONS,
        "note": "val scored once, with the epoch chosen and the decisions calibrated on dev"
        + ("; trained again on train + dev for the chosen epochs" if pos.phase == "refit" else "")
        + "; LiDiRus (diagnostic) with its calibrated copy of the TERRa head, in the total",
    }


def _fingerprint(weights: dict[str, str], cfg: TrainConfig, resume: bool, data: dict) -> str:
    """What every rank of a distributed run must agree on: versions, flags, weights (their
    weight_hashes), records."""
    records = hashlib.sha256()
    for name, d in sorted(data.items()):
        records.update(repr((name, d.train, d.dev, d.val)).encode())
    return json.dumps({
        "versions": [__version__, mx.__version__], "train": config_dict(cfg), "resume": resume,
        "weights": weights, "records": records.hexdigest(),
    }, sort_keys=True)  # fmt: skip


def _total(per_task: dict[str, dict]) -> float:
    return total_score(
        {t: {k: v for k, v in s.items() if k != "score"} for t, s in per_task.items()}
    )
