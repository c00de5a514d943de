"""Natural language inference records and units, shared by TERRa, RCB and LiDiRus."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_rsg.tasks.base import Answer, Task
from mlx_rsg.tasks.fields import Where, get_int, get_label, get_str
from mlx_rsg.tasks.units import Unit


@dataclass(frozen=True)
class NLIRecord:
    """TERRa, RCB and LiDiRus (LiDiRus's sentence1/sentence2 become premise/hypothesis)."""

    idx: int
    premise: str
    hypothesis: str
    # TERRa/LiDiRus: entailment|not_entailment; RCB: entailment|contradiction|neutral
    label: str | None


# TERRa's and LiDiRus's: LiDiRus is scored with TERRa's head, so it asks the same question
ENTAILS = Answer("\nВопрос: следует ли гипотеза из посылки? Ответ:", (" да", " нет"))


@dataclass(frozen=True)
class NLITask(Task):
    fields: tuple[str, str] = ("premise", "hypothesis")  # the official keys of the two texts

    def parse(self, obj: dict, where: Where) -> list[NLIRecord]:
        first, second = self.fields
        labels = tuple((s, s) for s in self.labels)
        return [
            NLIRecord(
                get_int(obj, "idx", where),
                get_str(obj, first, where),
                get_str(obj, second, where),
                get_label(obj, where, labels),
            )
        ]

    def texts(self, record: NLIRecord) -> list[str]:
        return [record.premise, record.hypothesis]

    def group_keys(self, record: NLIRecord) -> tuple:
        return (("premise", record.premise),)  # TERRa: 2,616 train records, 1,617 premises

    def units(self, record: NLIRecord, train=False, rng=None, max_negatives=None) -> list[Unit]:
        pieces = (
            ("Посылка:", False),
            (" " + record.premise, False),
            ("\nГипотеза:", False),
            (" " + record.hypothesis, False),
        )
        label = self.label_index(record.label)
        # A long premise loses its start: the hypothesis restates the premise's last sentence
        # in 171 of RCB's 220 val records.
        return [Unit(self.name, (record.idx,), None, pieces, label, trim=(1, 3), keep_end=(1,))]
