"""RuCoS: cloze-style reading comprehension (token F1 and exact match). Each candidate entity of a
passage fills the query's @placeholder; the candidates of a query are scored against each other.
One record per query."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlx_rsg import metrics
from mlx_rsg.errors import UserError, located
from mlx_rsg.tasks.base import Task
from mlx_rsg.tasks.fields import Where, as_object, fail, get, get_int, get_list, get_str
from mlx_rsg.tasks.units import Unit


@dataclass(frozen=True)
class RuCoSRecord:
    idx: int
    text: str  # passage
    entities: tuple[tuple[int, int], ...]  # character spans [start, end) of candidate entities
    query: str  # contains "@placeholder"
    answers: tuple[str, ...] | None  # gold answer texts; None on test


_TRAILING = ",.;:!?"


def rucos_candidates(r: RuCoSRecord) -> list[str]:
    """Candidate entity texts of a RuCoS record, deduplicated by their normalised form, in order
    of first appearance (surface text: the first occurrence, whitespace and trailing punctuation
    stripped)."""
    seen: set[str] = set()
    out = []
    for s, e in r.entities:
        text = r.text[s:e].strip().rstrip(_TRAILING).strip() or r.text[s:e].strip()
        norm = metrics.normalize_answer(text)
        if text and norm not in seen:
            seen.add(norm)
            out.append(text)
    return out


def _entities(passage: dict, text: str, where: Where) -> list[tuple[int, int]]:
    """Entity `end` offsets are inclusive in the official files (as in ReCoRD, and as the Hugging
    Face loader reads them); records hold half-open [start, end)."""
    entities = []
    for i, e in enumerate(get_list(passage, "entities", where, "passage.")):
        ep = f"passage.entities[{i}]"
        e = as_object(e, ep, where)
        start, end = get_int(e, "start", where, ep + "."), get_int(e, "end", where, ep + ".")
        if not 0 <= start <= end <= len(text):
            msg = f"span {start}..{end} is outside the passage ({len(text)} characters)"
            raise fail(where, ep, msg)
        entities.append((start, min(end + 1, len(text))))
    return entities


def _answers(qa: dict, qp: str, where: Where) -> tuple[str, ...] | None:
    if "answers" not in qa:
        return None
    texts = []
    for ai, a in enumerate(get_list(qa, "answers", where, qp + ".")):
        ap = f"{qp}.answers[{ai}]"
        texts.append(get_str(as_object(a, ap, where), "text", where, ap + "."))
    return tuple(dict.fromkeys(texts))


@dataclass(frozen=True)
class RuCoS(Task):
    def parse(self, obj: dict, where: Where) -> list[RuCoSRecord]:
        """One record per query."""
        passage = as_object(get(obj, "passage", where), "passage", where)
        text = get_str(passage, "text", where, "passage.")
        entities = tuple(_entities(passage, text, where))
        out = []
        for qi, qa in enumerate(get_list(obj, "qas", where)):
            qp = f"qas[{qi}]"
            qa = as_object(qa, qp, where)
            query = get_str(qa, "query", where, qp + ".")
            if "@placeholder" not in query:
                raise fail(where, qp + ".query", "has no @placeholder")
            answers = _answers(qa, qp, where)
            idx = get_int(qa, "idx", where, qp + ".") if "idx" in qa else get_int(obj, "idx", where)
            out.append(RuCoSRecord(idx, text, entities, query, answers))
        if not out:
            raise fail(where, "qas", "empty")
        return out

    def unlabelled_field(self, record: RuCoSRecord) -> str | None:
        return "qas[].answers" if record.answers is None else None

    def texts(self, record: RuCoSRecord) -> list[str]:
        return [record.text, record.query]

    def group_keys(self, record: RuCoSRecord) -> tuple:
        return (("passage", record.text),)  # the queries of one passage

    def label_values(self, record: RuCoSRecord) -> list:
        return [None if record.answers is None else len(record.answers)]

    def describe_labels(self, counts: Counter) -> str:
        n = sum(counts.values())
        return f"{sum(k * v for k, v in counts.items()) / n:.2f} gold answers per query"

    def units(self, record: RuCoSRecord, train=False, rng=None, max_negatives=None) -> list[Unit]:
        """Every candidate; in training the gold entity plus at most `max_negatives` negatives
        sampled with `rng`, and nothing when no candidate is a gold answer."""
        r = record
        cands = rucos_candidates(r)
        gold = None if r.answers is None else {metrics.normalize_answer(a) for a in r.answers}
        labels = [None if gold is None else int(metrics.normalize_answer(c) in gold) for c in cands]
        positions = list(range(len(cands)))
        if train:
            positions = _training_positions(labels, rng, max_negatives)
        passage = r.text.replace("@highlight\n", "").replace("@highlight", "")
        units = []
        for i in positions:
            query = r.query.replace("@placeholder", cands[i])
            pieces = (
                ("Текст:", False),
                (" " + passage, False),
                ("\nЗапрос:", False),
                (" " + query, False),
            )
            units.append(Unit(self.name, (r.idx, i), (r.idx,), pieces, labels[i], trim=(1,)))
        return units

    def examples(self, record: RuCoSRecord, max_negatives: int | None = None) -> int:
        n = len(self.units(record))
        return n if max_negatives is None else min(n, 1 + max_negatives)

    def candidates(self, record: RuCoSRecord) -> list[str]:
        return rucos_candidates(record)

    def decode(self, record: RuCoSRecord, by_key: dict[tuple, np.ndarray]) -> str:
        """The best-scored candidate's text ("" when the record has none)."""
        best, best_score = "", -np.inf
        for i, c in enumerate(rucos_candidates(record)):
            row = by_key.get((record.idx, i))
            if row is not None and float(row[0]) > best_score:
                best, best_score = c, float(row[0])
        return best

    def gold(self, record: RuCoSRecord) -> str:
        return record.answers[0] if record.answers else ""

    def score(self, records: Sequence, predictions: list) -> dict[str, float]:
        """Token F1 and exact match, each the max over a record's gold answers."""
        pairs = list(zip(records, predictions, strict=True))
        f1s = [_max_over(metrics.token_f1, p, r.answers or ()) for r, p in pairs]
        ems = [_max_over(metrics.exact_match, p, r.answers or ()) for r, p in pairs]
        return {
            "f1": float(np.mean(f1s)) if f1s else 0.0,
            "em": float(np.mean(ems)) if ems else 0.0,
        }

    def decisions(self, record: RuCoSRecord, prediction: str) -> list[tuple]:
        return [(record.answers, prediction)]

    @property
    def class_labels(self) -> None:
        return None

    def submission_row(self, record: RuCoSRecord, prediction) -> dict[str, Any]:
        return {"idx": record.idx, "label": str(prediction)}

    def read_submission_row(self, obj: dict, where: str, line: int) -> tuple[Any, Any]:
        if "label" not in obj:
            raise UserError(located(where, line, "label", "missing"))
        if not isinstance(obj["label"], str):
            raise UserError(located(where, line, "label", f"{obj['label']!r} is not a string"))
        return obj["idx"], obj["label"]


def _training_positions(labels: list, rng, max_negatives: int | None) -> list[int]:
    positions = range(len(labels))
    pos = [i for i in positions if labels[i] == 1]
    if not pos:  # unlabelled, or no candidate is a gold answer: nothing to learn from
        return []
    keep = pos[0] if rng is None else pos[int(rng.integers(len(pos)))]
    neg = [i for i in positions if labels[i] == 0]
    if max_negatives is not None and len(neg) > max_negatives:
        neg = (
            list(rng.choice(neg, size=max_negatives, replace=False))
            if rng is not None
            else neg[:max_negatives]
        )
    return sorted([keep, *(int(i) for i in neg)])


def _max_over(metric, prediction: str, golds: Sequence[str]) -> float:
    return max([0.0, *(metric(prediction, g) for g in golds)])


TASK = RuCoS("RuCoS", (0, 1), metrics=("f1", "em"), choice=True)
