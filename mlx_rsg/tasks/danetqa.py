"""DaNetQA: yes/no questions about a passage (accuracy)."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_rsg.tasks.base import Answer, Task
from mlx_rsg.tasks.fields import BOOLS, Where, get_int, get_label, get_str
from mlx_rsg.tasks.units import Unit


@dataclass(frozen=True)
class DaNetQARecord:
    idx: int
    question: str
    passage: str
    label: bool | None


@dataclass(frozen=True)
class DaNetQA(Task):
    def parse(self, obj: dict, where: Where) -> list[DaNetQARecord]:
        return [
            DaNetQARecord(
                get_int(obj, "idx", where),
                get_str(obj, "question", where),
                get_str(obj, "passage", where),
                get_label(obj, where, BOOLS),
            )
        ]

    def texts(self, record: DaNetQARecord) -> list[str]:
        return [record.question, record.passage]

    def group_keys(self, record: DaNetQARecord) -> tuple:
        # 246 questions repeat across 607 train records, mostly with the same label
        return (("question", record.question), ("passage", record.passage))

    def units(self, record: DaNetQARecord, train=False, rng=None, max_negatives=None) -> list[Unit]:
        pieces = (
            ("Текст:", False),
            (" " + record.passage, False),
            ("\nВопрос:", False),
            (" " + record.question, False),
        )
        label = self.label_index(record.label)
        return [Unit(self.name, (record.idx,), None, pieces, label, trim=(1,))]


# Train is 60.7 % True, val 50.2 %: the scored splits are taken as balanced.
TASK = DaNetQA(
    "DaNetQA",
    (False, True),
    spelling=("false", "true"),
    scored_prior=0.5,
    answer=Answer("\nОтвет:", (" нет", " да")),
)
