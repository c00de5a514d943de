"""The metrics of Russian SuperGLUE, computed as the benchmark's own scorers compute them;
task-agnostic (each task's module in `tasks/` says which it uses: `Task.score`).

  accuracy, macro_f1, mcc, muserc_f1a, token_f1, exact_match   (gold, predicted) -> float
  class_report(gold, pred, labels) -> {label: {precision, recall, f1, support}}
  aligned(records, predictions)   predictions as a list aligned with records

Degenerate cases follow the reference implementations (RussianNLP/RussianSuperGLUE: the TF-IDF
baseline scorers `tfidf_baseline/{MuSeRC,RuCoS}.py`, and jiant's CommitmentBank / sklearn
conventions it reuses):
  RCB f1        mean of the three one-vs-rest binary F1s (jiant's CB metric); a class with no
                true positive scores 0, also when it is absent from gold and predictions.
  LiDiRus mcc   sklearn's matthews_corrcoef: 0 when either side has zero variance.
  MuSeRC f1a    one binary F1 over every answer: precision = 1 when nothing is predicted positive,
                recall = 1 when nothing is gold positive, F1 = 0 when both are 0.
  MuSeRC em     share of questions whose answers are all right (a question without answers counts
                as right, as the reference's `sum(|diff|) <= 0`).
  RuCoS f1/em   SQuAD/ReCoRD token F1 and exact match, max over gold answers, after lowercasing,
                removing string.punctuation (ASCII only: «» — stay) and collapsing whitespace; the
                RSG scorer drops ReCoRD's English article removal. Token F1 is 0 when no token is
                shared (an empty prediction scores 0); a record without gold answers scores 0.
Scoring zero records gives 0.0 for every metric.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_PUNCT = set(string.punctuation)


def accuracy(gold: Sequence, pred: Sequence) -> float:
    _check(gold, pred)
    return float(np.mean([g == p for g, p in zip(gold, pred, strict=True)])) if gold else 0.0


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """sklearn-style: precision/recall 0 when undefined, F1 0 when there is no true positive."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return p, r, f


def class_report(gold: Sequence, pred: Sequence, labels: Sequence) -> dict:
    """Per label: one-vs-rest precision, recall, F1 (0 when undefined) and gold support."""
    _check(gold, pred)
    out = {}
    for lab in labels:
        tp = sum(g == lab and p == lab for g, p in zip(gold, pred, strict=True))
        fp = sum(g != lab and p == lab for g, p in zip(gold, pred, strict=True))
        fn = sum(g == lab and p != lab for g, p in zip(gold, pred, strict=True))
        p, r, f = _prf(tp, fp, fn)
        out[lab] = {"precision": p, "recall": r, "f1": f, "support": tp + fn}
    return out


def macro_f1(gold: Sequence, pred: Sequence, labels: Sequence) -> float:
    rep = class_report(gold, pred, labels)
    return float(np.mean([rep[lab]["f1"] for lab in labels])) if gold else 0.0


def mcc(gold: Sequence, pred: Sequence) -> float:
    """Matthews correlation (sklearn's multiclass formula; binary gives the usual phi)."""
    _check(gold, pred)
    if not gold:
        return 0.0
    labels = sorted(set(gold) | set(pred), key=repr)
    index = {lab: i for i, lab in enumerate(labels)}
    c = np.zeros((len(labels), len(labels)))
    for g, p in zip(gold, pred, strict=True):
        c[index[g], index[p]] += 1
    t, p, n = c.sum(axis=1), c.sum(axis=0), c.sum()
    correct = np.trace(c)
    cov_yp = correct * n - t @ p
    cov_yy = n * n - t @ t
    cov_pp = n * n - p @ p
    denom = np.sqrt(cov_yy * cov_pp)
    return float(cov_yp / denom) if denom > 0 else 0.0


def muserc_f1a(gold: Sequence[int], pred: Sequence[int]) -> float:
    _check(gold, pred)
    agree = sum(int(g) * int(p) for g, p in zip(gold, pred, strict=True))
    n_pred, n_gold = sum(int(p) for p in pred), sum(int(g) for g in gold)
    prec = agree / n_pred if n_pred else 1.0
    rec = agree / n_gold if n_gold else 1.0
    return 2 * prec * rec / (prec + rec) if prec + rec else 0.0


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, collapse whitespace (the RSG RuCoS scorer)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(s.split())


def token_f1(prediction: str, gold: str) -> float:
    pred_toks, gold_toks = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred_toks), same / len(gold_toks)
    return 2 * p * r / (p + r)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _check(gold: Sequence, pred: Sequence) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")


def aligned(records: Sequence, predictions) -> list:
    """Predictions as a list aligned with records (a dict is looked up by record idx)."""
    if isinstance(predictions, dict):
        missing = [r.idx for r in records if r.idx not in predictions]
        if missing:
            raise ValueError(f"no prediction for idx {missing[:5]}")
        return [predictions[r.idx] for r in records]
    predictions = list(predictions)
    _check(records, predictions)
    return predictions
