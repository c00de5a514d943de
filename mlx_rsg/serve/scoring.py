"""A batch of requests scored together: their records renumbered into one list, one pass through
`Predictor.predictions` (the path `mlx-rsg predict` takes), each request answered with its own
records in its own order and idx."""

from __future__ import annotations

import dataclasses
from typing import Any

from mlx_rsg import tasks
from mlx_rsg.predict import Predictor, per_record, unit_probabilities
from mlx_rsg.serve.batcher import Job


def score_batch(predictor: Predictor, jobs: list[Job]) -> None:
    """Answer every job (all of one task). If the batch fails, each job is scored alone, so one
    request's records cannot fail another's; so is every job of a task whose records are decided
    together (RWSD by substitution: one request's twins must not meet another's)."""
    if len(jobs) > 1 and predictor.decides_together(jobs[0].task):
        for job in jobs:
            score_batch(predictor, [job])
        return
    try:
        answers = _score(predictor, jobs[0].task, jobs)
    except Exception as e:  # answered as the job's error; the server goes on
        if len(jobs) == 1:
            jobs[0].done(e)
            return
        for job in jobs:
            score_batch(predictor, [job])
        return
    for job, rows in zip(jobs, answers, strict=True):
        job.done(rows)


def _score(predictor: Predictor, task: str, jobs: list[Job]) -> list[list[dict[str, Any]]]:
    merged, owners = [], []
    alone = len(jobs) == 1  # one request keeps its idx values: an error names the client's record
    for j, job in enumerate(jobs):
        for record in job.records:  # requests may share idx values: number the batch 0..n-1
            owners.append((j, record.idx))
            merged.append(record if alone else dataclasses.replace(record, idx=len(merged)))
    preds, units, logits = predictor.predictions(task, merged)
    probs = unit_probabilities(predictor.info["tasks"][task], units, logits)
    spec = tasks.get(task)
    out: list[list[dict[str, Any]]] = [[] for _ in jobs]
    for record, pred, (j, idx) in zip(merged, per_record(merged, preds), owners, strict=True):
        out[j].append(answer(spec, record, pred, probs.get(record.idx), idx))
    return out


def answer(spec, record, prediction, probs, idx) -> dict[str, Any]:
    """One record's answer: its idx, the label as the official submission spells it (MuSeRC: the
    submission line's "passage"), the probabilities (keys spelled alike; choice tasks: one per
    candidate, and the candidates as "choices")."""
    row = spec.submission_row(record, prediction)
    label = row["label"] if "label" in row else {k: v for k, v in row.items() if k != "idx"}
    if spec.spelling and isinstance(probs, dict):
        spelled = zip(spec.labels, spec.spelling, strict=True)
        probs = {said: probs[str(lab)] for lab, said in spelled}
    out = {"idx": idx, "label": label, "probs": probs}
    choices = spec.candidates(record)
    if choices is not None:
        out["choices"] = choices
    return out
