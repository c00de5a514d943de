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
from mlx_rsg.data.sample import (
    diagnostic_records,
    examples_in,
    fold_of,
    sample_examples,
    sample_records,
)
from mlx_rsg.errors import UserError
from mlx_rsg.model import shared_prefix
from mlx_rsg.model.batching import encode_units, make_batches
from mlx_rsg.model.config import parse_task_max_len
from mlx_rsg.tasks import REGISTRY, make_units
from mlx_rsg.train.config import TrainConfig


@dataclass
class TaskData:
    name: str
    train: list = field(default_factory=list)  # records (capped)
    val: list = field(default_factory=list)
    dev: list = field(default_factory=list)  # records carved out of train (--dev-per-task)
    test: list = field(default_factory=list)  # unlabelled: only its lengths are used


def record_groups(task: str, records: list) -> list[list]:
    """The records in groups of near-copies: records sharing any of their `group_keys` (and,
    transitively, their partners' keys) are one group; groups in order of their first record."""
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict = {}
    for i, r in enumerate(records):
        for key in REGISTRY[task].group_keys(r):
            j = first.setdefault(key, i)
            parent[root(i)] = root(j)
    groups: dict[int, list] = {}
    for i, r in enumerate(records):
        groups.setdefault(root(i), []).append(r)
    return list(groups.values())


def split_dev(task: str, records: list, cfg: TrainConfig) -> tuple[list, list]:
    """(train, dev): whole groups of records (`record_groups`: a record and its near-copies), the
    rest train: ~--dev-per-task examples drawn from the seed, or --dev-fold's fold K of N. No
    group straddles the two; with no dev split, all of them train."""
    if not cfg.has_dev:
        return list(records), []
    groups = record_groups(task, records)

    def size(group: list) -> int:
        return sum(examples_in(task, r) for r in group)

    folds = cfg.folds()
    if folds is not None:
        k, n = folds
        if len(groups) < n:
            raise UserError(f"--dev-fold {cfg.dev_fold}: {task} has {len(groups)} groups of "
                            f"training records, fewer than its {n} folds")  # fmt: skip
        drawn = fold_of(groups, k, n, cfg.seed, f"{task}:folds", size)
    else:
        drawn = sample_records(groups, cfg.dev_per_task, cfg.seed, f"{task}:dev", size)
    if len(drawn) == len(groups):
        raise UserError(f"--dev-per-task {cfg.dev_per_task}: it would take all of {task}'s "
                        f"{len(records)} training records")  # fmt: skip
    taken = {id(r) for g in drawn for r in g}
    return [r for r in records if id(r) not in taken], [r for r in records if id(r) in taken]


def load_task_data(data_dir: Path, cfg: TrainConfig, log) -> dict[str, TaskData]:
    out: dict[str, TaskData] = {}
    for task in cfg.tasks:
        splits = available_splits(data_dir, task)
        if "train" not in splits:
            raise UserError(f"{data_dir}: task {task} has no train split")
        train, dev = split_dev(task, load_split(data_dir, task, "train"), cfg)
        val = load_split(data_dir, task, "val") if "val" in splits else []
        test = load_split(data_dir, task, "test") if "test" in splits else []
        out[task] = TaskData(
            task,
            sample_records(
                train,
                cfg.train_budget(task),
                cfg.seed,
                f"{task}:train",
                lambda r, t=task: examples_in(t, r, cfg.max_negatives),
            ),
            sample_examples(task, val, cfg.max_eval_per_task, cfg.seed, "val"),
            dev,
            test,
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


def with_dev_trained(data: dict[str, TaskData]) -> dict[str, TaskData]:
    """The data of a refit: every task's dev records trained on too, no dev split."""
    return {t: TaskData(d.name, d.train + d.dev, d.val, [], d.test) for t, d in data.items()}


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
    (seed, task, epoch) alone. A task --augment names trains its augmented records too."""
    out = {}
    for task in cfg.tasks:
        rng = seeded_generator(f"{cfg.seed}:{task}:units:{epoch}")
        records = data[task].train
        if cfg.augments(task):
            records = [*records, *(a for r in records for a in REGISTRY[task].augmented(r))]
        units = make_units(task, records, train=True, rng=rng,
                           max_negatives=cfg.max_negatives, prompt=cfg.prompt)  # fmt: skip
        out[task] = encode_units(units, tokenizer, max_lens[task])
    return out


def epoch_batches(encoded: dict[str, list], cfg: TrainConfig, epoch: int) -> list:
    """All tasks' batches of one epoch, shuffled together (examples-proportional mixing)."""
    batches = []
    min_shared = shared_prefix.MIN_SHARED if cfg.share_prefix else None
    for task, units in encoded.items():
        rng = random.Random(f"{cfg.seed}:{task}:{epoch}")
        batches += make_batches(units, cfg.batch_size, rng=rng, min_shared=min_shared)
    random.Random(f"{cfg.seed}:order:{epoch}").shuffle(batches)
    return batches


def epoch_plan(data: dict[str, TaskData], tokenizer, cfg: TrainConfig, epoch: int,
               max_lens: dict[str, int]) -> list:  # fmt: skip
    """All tasks' batches of one epoch, each task's units truncated to its `max_lens` entry."""
    return epoch_batches(epoch_units(data, tokenizer, cfg, epoch, max_lens), cfg, epoch)


def max_lens(cfg: TrainConfig, data: dict[str, TaskData], tokenizer) -> dict[str, int]:
    """Each trained task's token budget: --task-max-len's TASK=N, else with `auto` the longest
    of the lengths 95 % of each split's units fit in (a multiple of 32, at most --max-len), over
    every split the head trains on or scores: the sampled train records, dev, val, test, and
    LiDiRus for TERRa's head; else --max-len. Fitted on train alone, RWSD got 64 tokens and cut
    47 % of its val units (val texts are longer)."""
    auto, explicit = parse_task_max_len(cfg.task_max_len)
    out = {}
    for task in cfg.tasks:
        if task in explicit:
            out[task] = explicit[task]
        elif auto:
            splits = [(t, recs) for t, d in data.items() if REGISTRY[t].head == task
                      for recs in (d.train, d.dev, d.val, d.test) if recs]  # fmt: skip
            fits = [fitting_max_len(unit_lengths(t, recs, tokenizer, cfg.prompt), coverage=0.95)
                    for t, recs in splits]  # fmt: skip
            out[task] = min(cfg.max_len, max(fits, default=cfg.max_len))
        else:
            out[task] = cfg.max_len
    return out
