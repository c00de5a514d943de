"""PARus: choice of plausible alternatives (accuracy). Each record gives two units, premise plus
one choice, scored against each other."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mlx_rsg.tasks.base import Answer, Task
from mlx_rsg.tasks.fields import BINARY, Where, fail, get_int, get_label, get_str
from mlx_rsg.tasks.units import Unit


@dataclass(frozen=True)
class PARusRecord:
    idx: int
    premise: str
    choice1: str
    choice2: str
    question: str  # "cause" | "effect"
    label: int | None  # 0 -> choice1, 1 -> choice2


QUESTION = {"cause": "\nПричина:", "effect": "\nСледствие:"}
TURNED = {"cause": "effect", "effect": "cause"}


@dataclass(frozen=True)
class PARus(Task):
    def parse(self, obj: dict, where: Where) -> list[PARusRecord]:
        question = get_str(obj, "question", where)
        if question not in QUESTION:
            raise fail(where, "question", f'expected "cause" or "effect", got {question!r}')
        label = get_label(obj, where, BINARY)
        return [
            PARusRecord(
                get_int(obj, "idx", where),
                get_str(obj, "premise", where),
                get_str(obj, "choice1", where),
                get_str(obj, "choice2", where),
                question,
                label,
            )
        ]

    def texts(self, record: PARusRecord) -> list[str]:
        return [record.premise, record.choice1, record.choice2]

    def group_keys(self, record: PARusRecord) -> tuple:
        return (("premise", record.premise),)

    def augmented(self, record: PARusRecord) -> list[PARusRecord]:
        """The record mirrored (COPA's symmetry): the right choice becomes the premise, the
        question turns (a cause's effect is the premise it explained), and the old premise is
        the right choice in the right choice's place, against the same wrong one. Its idx is
        negative, so its keys never meet an official record's. Unlabelled records give none."""
        if record.label is None:
            return []
        right = (record.choice1, record.choice2)[record.label]
        choices = [record.choice1, record.choice2]
        choices[record.label] = record.premise
        return [replace(record, idx=-1 - record.idx, premise=right, choice1=choices[0],
                        choice2=choices[1], question=TURNED[record.question])]  # fmt: skip

    def units(self, record: PARusRecord, train=False, rng=None, max_negatives=None) -> list[Unit]:
        out = []
        for c, choice in enumerate((record.choice1, record.choice2)):
            pieces = (
                (record.premise, False),
                (QUESTION[record.question], False),
                (" " + choice, False),
            )
            label = None if record.label is None else int(record.label == c)
            out.append(Unit(self.name, (record.idx, c), (record.idx,), pieces, label, trim=(0,)))
        return out

    def candidates(self, record: PARusRecord) -> list[str]:
        return [record.choice1, record.choice2]

    def decode(self, record: PARusRecord, by_key: dict[tuple, np.ndarray]) -> int:
        return int(by_key[(record.idx, 1)][0] > by_key[(record.idx, 0)][0])


TASK = PARus(
    "PARus", (0, 1), choice=True, answer=Answer("\nВопрос: это верно? Ответ:", (" нет", " да"))
)
