"""The Task interface: everything the toolkit knows about one Russian SuperGLUE task.

A task module defines its record dataclass and one `Task` (usually a subclass overriding what
differs from the defaults here, which fit a task with one label per record and one unit per
record, scored by accuracy). The methods, in the order data flows through them:

  parse(obj, where) -> [record]          one JSON object of the official file (fields.py checks)
  unlabelled_field(record)               the field that lacks a gold label, None if labelled
  texts(record), label_values(record)    what `mlx-rsg data info` reports
  group_keys(record)                     texts records share: they go to one side of a dev split
  augmented(record) -> [record]          more training records from one (`--augment`)
  units(record, train, rng, max_negatives) -> [Unit]    what the model classifies
  decode(record, by_key) -> prediction   unit scores back to a prediction (the "decode form")
  candidates(record)                     choice tasks: what each unit proposes
  gold(record)                           the gold prediction in decode form
  score(records, predictions) -> {metric: value}        the official metrics (`metrics`)
  decisions(record, prediction) -> [(gold, predicted)]  per scored decision (bench's flips)
  submission_row(record, prediction), read_submission_row(obj, where, line)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlx_rsg import metrics
from mlx_rsg.errors import UserError, located
from mlx_rsg.tasks.fields import Where
from mlx_rsg.tasks.units import Unit


@dataclass(frozen=True)
class Answer:
    """A question after a unit's text that one word per label answers. With `--prompt answer`
    a task's units end with `question`, so the next token the language model would write is
    the answer word, and `--head-init label-words` starts the task's head at those words' rows
    of the output embedding: the model's own prior for the answer (PET, LM-BFF). `words` are
    in the order of `Task.labels`; a choice task's are (no, yes) about its candidate."""

    question: str
    words: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    name: str
    labels: tuple  # label values in decode's form; a unit's label is an index into this
    metrics: tuple[str, ...] = ("accuracy",)  # the leaderboard's, in its order; score = mean
    head: str = ""  # the head that scores this task ("": its own; LiDiRus uses TERRa's)
    choice: bool = False  # units of a group are scored against each other (one output per unit)
    pooling: str = "last"  # "last" | "span"
    has_train: bool = True
    spans: int = 0  # marked pieces pooled and concatenated (RUSSE, RWSD: 2)
    spelling: tuple = ()  # the submission's spelling of each label ((): the label itself)
    # class 1's share in the splits scored, where it is known to differ from train's (the
    # calibration moves the decision by the log-odds difference); None: as in train
    scored_prior: float | None = None
    answer: Answer | None = None  # the question-style ending of --prompt answer (None: none)

    def __post_init__(self) -> None:
        if not self.head:
            object.__setattr__(self, "head", self.name)

    # ------------------------------------------------------------------------- records

    def parse(self, obj: dict, where: Where) -> list:
        raise NotImplementedError

    def unlabelled_field(self, record) -> str | None:
        return "label" if record.label is None else None

    def texts(self, record) -> list[str]:
        raise NotImplementedError

    def label_values(self, record) -> list:
        return [record.label]

    def group_keys(self, record) -> tuple:
        """What makes records near-copies of each other: records sharing any key are one group,
        and a dev split takes or leaves whole groups (a twin on the other side of the split
        leaks its label). Default: the record alone."""
        return (("idx", record.idx),)

    def describe_labels(self, counts: Counter) -> str:
        total = sum(counts.values())
        return ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in counts.most_common())

    # --------------------------------------------------------------------------- units

    def units(self, record, train: bool = False, rng=None, max_negatives=None) -> list[Unit]:
        raise NotImplementedError

    def augmented(self, record) -> list:
        """Further training records made from `record` alone (`--augment`), each with an idx no
        official record has; []: the task has no augmentation."""
        return []

    def examples(self, record, max_negatives: int | None = None) -> int:
        """How many classification examples (units) a record gives in training."""
        return len(self.units(record))

    def candidates(self, record) -> list[str] | None:
        """Choice tasks: what each of the record's units proposes, in unit order (None: not a
        choice task)."""
        return None

    def label_index(self, label) -> int | None:
        return None if label is None else self.labels.index(label)

    # --------------------------------------------------------------------- predictions

    def decode(self, record, by_key: dict[tuple, np.ndarray]):
        return self.labels[int(np.argmax(by_key[(record.idx,)]))]

    def gold(self, record):
        return record.label

    def score(self, records: Sequence, predictions: list) -> dict[str, float]:
        return {"accuracy": metrics.accuracy([r.label for r in records], predictions)}

    def decisions(self, record, prediction) -> list[tuple]:
        return [(record.label, prediction)]

    @property
    def class_labels(self) -> tuple | None:
        """The classes of a per-class report (None: not a classification)."""
        return self.labels

    # ---------------------------------------------------------------------- submission

    def submission_row(self, record, prediction) -> dict[str, Any]:
        i = self._position(prediction)
        if i is None:
            raise ValueError(f"{self.name} idx {record.idx}: {self._not_a_label(prediction)}")
        return {"idx": record.idx, "label": self.spelling[i] if self.spelling else prediction}

    def read_submission_row(self, obj: dict, where: str, line: int) -> tuple[Any, Any]:
        if "label" not in obj:
            raise UserError(located(where, line, "label", "missing"))
        value = obj["label"]
        i = self._position(value)
        if i is None and self.spelling:
            i = next((i for i, s in enumerate(self.spelling) if _same(s, value)), None)
        if i is None:
            allowed = list(self.spelling or self.labels)
            raise UserError(located(where, line, "label", f"{value!r} is not one of {allowed}"))
        return obj["idx"], self.labels[i]

    def _position(self, value) -> int | None:
        return next((i for i, lab in enumerate(self.labels) if _same(lab, value)), None)

    def _not_a_label(self, prediction) -> str:
        if all(isinstance(lab, bool) for lab in self.labels):
            return f"prediction {prediction!r} is not a bool"
        if all(isinstance(lab, int) for lab in self.labels):
            return f"prediction {prediction!r} is not one of {list(self.labels)}"
        return f"unknown label {prediction!r}"


def _same(a, b) -> bool:
    """Equal and of the same type: True is not the label 1, nor 1 the label True."""
    return type(a) is type(b) and a == b
