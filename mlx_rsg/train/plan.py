"""What a training run sees: each task's sampled records, and every epoch's batches as a pure
function of (seed, epoch)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlx_rsg.data import available_splits, load_split
from mlx_rsg.data.info import fitting_max_len, unit_lengths
from mlx_rsg.errors import UserError
from mlx_rsg.model.batching import encode_units, make_batches
from mlx_rsg.model.config import parse_task_max_len
from mlx_rsg.run import diagnostic_records, examples_in, sample_examples, sample_records
from mlx_rsg.tasks import make_units
from mlx_rsg.train.config import TrainConfig


@dataclass
class TaskData:
    name: str
    train: list = field(default_factory=list)  # records (capped)
    val: list = field(default_factory=list)
    dev: list = field(default_factory=list)  # records carved out of train (--dev-per-task)


def split_dev(task: str, records: list, cfg: TrainConfig) -> tuple[list, list]:
    """(train, dev): ~--dev-per-task examples of whole records drawn from the seed, the rest
    train. No record is in both; with no dev split, all of them train."""
    if not cfg.dev_per_task:
        return list(records), []

    def size(r):
        return examples_in(task, r)

    dev = sample_records(records, cfg.dev_per_task, cfg.seed, f"{task}:dev", size)
    if len(dev) == len(records):
        raise UserError(f"--dev-per-task {cfg.dev_per_task}: it would take all of {task}'s "
                        f"{len(records)} training records")  # fmt: skip
    taken = {id(r) for r in dev}
    return [r for r in records if id(r) not in taken], dev


def load_task_data(data_dir: Path, cfg: TrainConfig, log) -> dict[str, TaskData]:
    out: dict[str, TaskData] = {}
    for task in cfg.tasks:
        splits = available_splits(data_dir, task)
        if "train" not in splits:
            raise UserError(f"{data_dir}: task {task} has no train split")
        train, dev = split_dev(task, load_split(data_dir, task, "train"), cfg)
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
            dev,
        )
        log(f"{task}: {len(out[task].train)}/{len(train)} train, "
            + (f"{len(dev)} dev, " if dev else "")
            + f"{len(out[task].val)} val records")  # fmt: skip
    if "TERRa" in cfg.tasks:
        lidirus = diagnostic_records(data_dir)
        if lidirus:
            out["LiDiRus"] = TaskData(
                "LiDiRus",
                [],
                sample_examples("LiDiRus", lidirus, cfg.max_eval_per_task, cfg.seed, "val"),
            )
            log(
                f"LiDiRus: {len(out['LiDiRus'].val)} diagnostic records, scored with the TERRa head"
            )
    return out


def batch_seed(seed: int, global_batch: int) -> int:
    return (seed * 1_000_003 + global_batch) % (2**31)


def seeded_generator(salt: str):
    """A numpy Generator seeded from a string (Python's str hash is salted per process)."""

    return np.random.default_rng(
        int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little")
    )


def epoch_units(data: dict[str, TaskData], tokenizer, cfg: TrainConfig, epoch: int,
                max_lens: dict[str, int]) -> dict[str, list]:  # fmt: skip
    """Every task's encoded training units of one epoch, truncated to its `max_lens` entry.
    Units are rebuilt per epoch only because RuCoS draws fresh negatives; the rng depends on
    (seed, task, epoch) alone."""
    out = {}
    for task in cfg.tasks:
        rng = seeded_generator(f"{cfg.seed}:{task}:units:{epoch}")
        units = make_units(task, data[task].train, train=True, rng=rng,
                           max_negatives=cfg.max_negatives)  # fmt: skip
        out[task] = encode_units(units, tokenizer, max_lens[task])
    return out


def epoch_batches(encoded: dict[str, list], cfg: TrainConfig, epoch: int) -> list:
    """All tasks' batches of one epoch, shuffled together (examples-proportional mixing)."""
    batches = []
    for task, units in encoded.items():
        rng = random.Random(f"{cfg.seed}:{task}:{epoch}")
        batches += make_batches(units, cfg.batch_size, rng=rng)
    random.Random(f"{cfg.seed}:order:{epoch}").shuffle(batches)
    return batches


def epoch_plan(data: dict[str, TaskData], tokenizer, cfg: TrainConfig, epoch: int,
               max_lens: dict[str, int]) -> list:  # fmt: skip
    """All tasks' batches of one epoch, each task's units truncated to its `max_lens` entry."""
    return epoch_batches(epoch_units(data, tokenizer, cfg, epoch, max_lens), cfg, epoch)


def max_lens(cfg: TrainConfig, data: dict[str, TaskData], tokenizer) -> dict[str, int]:
    """Each trained task's token budget: --task-max-len's TASK=N, else with `auto` the length
    95 % of the task's sampled training units fit in (a multiple of 32, at most --max-len),
    else --max-len."""
    auto, explicit = parse_task_max_len(cfg.task_max_len)
    out = {}
    for task in cfg.tasks:
        if task in explicit:
            out[task] = explicit[task]
        elif auto:
            lengths = unit_lengths(task, data[task].train, tokenizer)
            out[task] = min(cfg.max_len, fitting_max_len(lengths, coverage=0.95))
        else:
            out[task] = cfg.max_len
    return out
