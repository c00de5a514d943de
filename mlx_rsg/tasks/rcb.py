"""RCB, the Russian CommitmentBank: three-way entailment (macro F1 and accuracy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlx_rsg import metrics
from mlx_rsg.tasks.base import Answer
from mlx_rsg.tasks.nli import ENTAILS, NLITask


@dataclass(frozen=True)
class RCB(NLITask):
    def score(self, records: Sequence, predictions: list) -> dict[str, float]:
        """F1: the mean of the three one-vs-rest binary F1s (jiant's CommitmentBank metric)."""
        gold = [r.label for r in records]
        return {
            "f1": metrics.macro_f1(gold, predictions, self.labels),
            "accuracy": metrics.accuracy(gold, predictions),
        }


TASK = RCB(
    "RCB",
    ("entailment", "contradiction", "neutral"),
    metrics=("f1", "accuracy"),
    answer=Answer(ENTAILS.question, (" да", " нет", " возможно")),
)
