"""LiDiRus: the diagnostic set. One labelled file, no train split, predicted with the TERRa head
and scored by Matthews correlation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlx_rsg import metrics
from mlx_rsg.tasks.nli import ENTAILS, NLITask


@dataclass(frozen=True)
class LiDiRus(NLITask):
    def score(self, records: Sequence, predictions: list) -> dict[str, float]:
        return {"mcc": metrics.mcc([r.label for r in records], predictions)}


TASK = LiDiRus(
    "LiDiRus",
    ("entailment", "not_entailment"),
    metrics=("mcc",),
    head="TERRa",
    has_train=False,
    fields=("sentence1", "sentence2"),
    answer=ENTAILS,
)
