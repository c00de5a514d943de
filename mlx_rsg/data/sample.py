"""Which records a command reads: the tasks with a train split, LiDiRus's diagnostic set, and
seeded draws of whole records up to a number of classification examples."""

from __future__ import annotations

import random
from pathlib import Path

from mlx_rsg.data.files import available_splits, load_split
from mlx_rsg.tasks import REGISTRY


def tasks_with_train(data_dir: Path, tasks: tuple[str, ...]) -> tuple[str, ...]:
    """The subset of `tasks` that have a train split in `data_dir` (for `--tasks all`)."""
    return tuple(t for t in tasks if "train" in available_splits(data_dir, t))


def diagnostic_records(data_dir: Path) -> list:
    """LiDiRus's labelled diagnostic set (its only split), if the data has it."""
    for split in available_splits(data_dir, "LiDiRus"):
        records = load_split(data_dir, "LiDiRus", split)
        if records and records[0].label is not None:
            return records
    return []


def examples_in(task: str, record, max_negatives: int | None = None) -> int:
    """How many classification examples (units) a record gives; RuCoS trains on the gold
    entity plus at most `max_negatives` sampled ones."""
    return REGISTRY[task].examples(record, max_negatives)


def sample_records(items: list, limit: int | None, seed: int, salt: str, size=None) -> list:
    """Records drawn once from (seed, salt) until their examples reach `limit`, kept in their
    original order. `size(record)` counts a record's examples (default 1), so that a cap means
    the same thing for every task: one MuSeRC passage holds ~24 answer examples. A seeded draw,
    not the first records: the first records of a split are not a label-balanced sample."""
    size = size or (lambda _: 1)
    if limit is None or sum(size(r) for r in items) <= limit:
        return list(items)
    order = list(range(len(items)))
    random.Random(f"{seed}:{salt}").shuffle(order)
    keep, total = [], 0
    for i in order:
        if total >= limit:
            break
        keep.append(i)
        total += size(items[i])
    return [items[i] for i in sorted(keep)]


def fold_of(items: list, k: int, n: int, seed: int, salt: str, size=None) -> list:
    """The k-th (1..n) of n folds of `items`, kept in their original order: items shuffled once
    from (seed, salt), each to the fold with the fewest examples so far (`size` as
    `sample_records` counts them), so that the n folds of one seed partition the items and hold
    about as many examples each."""
    size = size or (lambda _: 1)
    order = list(range(len(items)))
    random.Random(f"{seed}:{salt}").shuffle(order)
    totals, fold = [0] * n, [0] * len(items)
    for i in order:
        fold[i] = min(range(n), key=lambda f: totals[f])
        totals[fold[i]] += size(items[i])
    return [item for item, f in zip(items, fold, strict=True) if f == k - 1]


def sample_examples(task: str, records: list, limit: int | None, seed: int, split: str) -> list:
    """~`limit` examples of a split as whole records: the records `train --max-eval-per-task
    LIMIT --seed SEED` evaluates on for split val, and `bench`/`predict --max-per-task` score."""
    return sample_records(records, limit, seed, f"{task}:{split}", lambda r: examples_in(task, r))
