"""MuSeRC: multi-sentence reading comprehension. Each answer of each question about a passage is
one binary unit; scored by F1 over all answers (f1a) and per-question exact match (em)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlx_rsg import metrics
from mlx_rsg.errors import UserError, located
from mlx_rsg.tasks.base import Answer, Task
from mlx_rsg.tasks.fields import (
    BINARY,
    Where,
    as_object,
    get,
    get_int,
    get_label,
    get_list,
    get_str,
)
from mlx_rsg.tasks.units import Unit


@dataclass(frozen=True)
class MuSeRCAnswer:
    idx: int
    text: str
    label: int | None  # 1 correct, 0 wrong


@dataclass(frozen=True)
class MuSeRCQuestion:
    idx: int
    question: str
    answers: tuple[MuSeRCAnswer, ...]


@dataclass(frozen=True)
class MuSeRCRecord:
    idx: int
    text: str
    questions: tuple[MuSeRCQuestion, ...]


def _answers(record: MuSeRCRecord):
    return [a for q in record.questions for a in q.answers]


@dataclass(frozen=True)
class MuSeRC(Task):
    def parse(self, obj: dict, where: Where) -> list[MuSeRCRecord]:
        passage = as_object(get(obj, "passage", where), "passage", where)
        questions = []
        for qi, q in enumerate(get_list(passage, "questions", where, "passage.")):
            qp = f"passage.questions[{qi}]"
            q = as_object(q, qp, where)
            answers = []
            for ai, a in enumerate(get_list(q, "answers", where, qp + ".")):
                ap = f"{qp}.answers[{ai}]"
                a = as_object(a, ap, where)
                label = get_label(a, where, BINARY, ap + ".")
                idx, text = get_int(a, "idx", where, ap + "."), get_str(a, "text", where, ap + ".")
                answers.append(MuSeRCAnswer(idx, text, label))
            idx, question = (
                get_int(q, "idx", where, qp + "."),
                get_str(q, "question", where, qp + "."),
            )
            questions.append(MuSeRCQuestion(idx, question, tuple(answers)))
        idx, text = get_int(obj, "idx", where), get_str(passage, "text", where, "passage.")
        return [MuSeRCRecord(idx, text, tuple(questions))]

    def unlabelled_field(self, record: MuSeRCRecord) -> str | None:
        for qi, q in enumerate(record.questions):
            for ai, a in enumerate(q.answers):
                if a.label is None:
                    return f"passage.questions[{qi}].answers[{ai}].label"
        return None

    def texts(self, record: MuSeRCRecord) -> list[str]:
        return [record.text] + [
            s for q in record.questions for s in [q.question, *(a.text for a in q.answers)]
        ]

    def group_keys(self, record: MuSeRCRecord) -> tuple:
        return (("passage", record.text),)

    def label_values(self, record: MuSeRCRecord) -> list:
        return [a.label for a in _answers(record)]

    def describe_labels(self, counts: Counter) -> str:
        return "answers: " + super().describe_labels(counts)

    def units(self, record: MuSeRCRecord, train=False, rng=None, max_negatives=None) -> list[Unit]:
        out = []
        for q in record.questions:
            for a in q.answers:
                pieces = (
                    ("Текст:", False),
                    (" " + record.text, False),
                    ("\nВопрос:", False),
                    (" " + q.question, False),
                    ("\nОтвет:", False),
                    (" " + a.text, False),
                )
                key = (record.idx, q.idx, a.idx)
                out.append(Unit(self.name, key, None, pieces, a.label, trim=(1,)))
        return out

    def decode(self, record: MuSeRCRecord, by_key: dict[tuple, np.ndarray]) -> dict[int, int]:
        """Each answer by its own logits, then per question: every question of the data has at
        least one correct answer (all 2,897 in train, all 529 in val), so a question with none
        predicted gets its most likely one (the largest margin logit 1 - logit 0)."""
        out = {}
        for q in record.questions:
            rows = [by_key[(record.idx, q.idx, a.idx)] for a in q.answers]
            picked = [self.labels[int(np.argmax(row))] for row in rows]
            if rows and not any(picked):
                picked[int(np.argmax([row[1] - row[0] for row in rows]))] = self.labels[1]
            out.update({a.idx: p for a, p in zip(q.answers, picked, strict=True)})
        return out

    def gold(self, record: MuSeRCRecord) -> dict[int, int]:
        return {a.idx: a.label for a in _answers(record)}

    def score(self, records: Sequence, predictions: list) -> dict[str, float]:
        """f1a over every answer; em: share of questions with all answers right."""
        gold_a, pred_a, em = [], [], []
        for r, p in zip(records, predictions, strict=True):
            for q in r.questions:
                try:
                    qp = [int(p[a.idx]) for a in q.answers]
                except KeyError as e:
                    raise ValueError(f"MuSeRC idx {r.idx}: no prediction for answer {e}") from None
                qg = [int(a.label) for a in q.answers]
                gold_a += qg
                pred_a += qp
                em.append(float(qg == qp))
        return {"f1a": metrics.muserc_f1a(gold_a, pred_a), "em": float(np.mean(em)) if em else 0.0}

    def decisions(self, record: MuSeRCRecord, prediction: dict) -> list[tuple]:
        return [(a.label, prediction[a.idx]) for a in _answers(record)]

    def submission_row(self, record: MuSeRCRecord, prediction: dict) -> dict[str, Any]:
        questions = [
            {
                "idx": q.idx,
                "answers": [{"idx": a.idx, "label": int(prediction[a.idx])} for a in q.answers],
            }
            for q in record.questions
        ]
        return {"idx": record.idx, "passage": {"questions": questions}}

    def read_submission_row(self, obj: dict, where: str, line: int) -> tuple[Any, Any]:
        try:
            answers = {}
            for q in obj["passage"]["questions"]:
                for a in q["answers"]:
                    if a["label"] not in (0, 1) or isinstance(a["label"], bool):
                        msg = f"{a['label']!r} is not 0 or 1"
                        raise UserError(located(where, line, "label", msg))
                    answers[a["idx"]] = int(a["label"])
        except (KeyError, TypeError) as e:
            raise UserError(located(where, line, "passage", f"malformed ({e!r})")) from None
        return obj["idx"], answers


TASK = MuSeRC(
    "MuSeRC", (0, 1), metrics=("f1a", "em"),
    answer=Answer("\nВопрос: этот ответ верен? Ответ:", (" нет", " да")),
)  # fmt: skip
