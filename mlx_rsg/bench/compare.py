"""A variant's predictions against the baseline's on the same records: which decisions flipped,
which way, how flips concentrate on the baseline's close calls, and how sure a score difference
is (paired bootstrap over records)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from mlx_rsg.predict import per_record
from mlx_rsg.tasks import REGISTRY, score_task, total_score

BOOTSTRAP_ROUNDS = 300
MARGIN_EDGES = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)  # logit units; the last bin is open


def flat_predictions(task: str, records: list, preds) -> tuple[list, list]:
    """(gold, predicted) with one entry per scored decision: a record, or a MuSeRC answer."""
    spec = REGISTRY[task]
    pairs = [d for r, p in zip(records, per_record(records, preds), strict=True)
             for d in spec.decisions(r, p)]  # fmt: skip
    return [g for g, _ in pairs], [p for _, p in pairs]


def flip_counts(task: str, records: list, preds, base_preds) -> tuple[int, int]:
    """(decisions that differ from the baseline's, decisions)."""
    _, a = flat_predictions(task, records, preds)
    _, b = flat_predictions(task, records, base_preds)
    return sum(x != y for x, y in zip(a, b, strict=True)), len(a)


def flip_directions(task: str, records: list, preds, base_preds) -> dict[str, int]:
    """How many decisions went from each baseline answer to each other answer ("False->True"),
    most first: flips that go one way are a shifted margin, not noise."""
    _, a = flat_predictions(task, records, preds)
    _, b = flat_predictions(task, records, base_preds)
    moves = Counter(f"{y}->{x}" for x, y in zip(a, b, strict=True) if x != y)
    return dict(moves.most_common())


def metrics(task: str, records: list, preds) -> dict[str, float]:
    """The task's official metrics plus `score`, their mean."""
    out = {k: float(v) for k, v in score_task(task, records, preds).items()}
    return {**out, "score": float(np.mean(list(out.values())))}


def paired_bootstrap(records: dict[str, list], preds: dict, base_preds: dict, tasks: list[str],
                     rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> dict:  # fmt: skip
    """Standard errors of (variant - baseline) per task and of the total over `tasks`: records
    drawn with replacement, the same draw for both (the records are shared, so most of each
    score's sampling noise cancels in the difference)."""
    rng = np.random.default_rng(seed)
    aligned = {t: (per_record(recs, preds[t]), per_record(recs, base_preds[t]))
               for t, recs in records.items()}  # fmt: skip
    deltas: dict[str, list[float]] = {t: [] for t in records}
    totals: list[float] = []
    for _ in range(rounds):
        per_v, per_b = {}, {}
        for task, recs in records.items():
            pick = rng.integers(0, len(recs), len(recs))
            rs = [recs[i] for i in pick]
            v = metrics(task, rs, [aligned[task][0][i] for i in pick])
            b = metrics(task, rs, [aligned[task][1][i] for i in pick])
            deltas[task].append(v["score"] - b["score"])
            per_v[task] = {k: x for k, x in v.items() if k != "score"}
            per_b[task] = {k: x for k, x in b.items() if k != "score"}
        if tasks:
            totals.append(total_score({t: per_v[t] for t in tasks})
                          - total_score({t: per_b[t] for t in tasks}))  # fmt: skip
    return {
        "rounds": rounds,
        "tasks": {t: float(np.std(d, ddof=1)) for t, d in deltas.items()},
        "total": float(np.std(totals, ddof=1)) if tasks else None,
    }


def flips_by_margin(records: dict[str, list], preds: dict, base_preds: dict,
                    base_logits: dict[str, np.ndarray]) -> dict:  # fmt: skip
    """Decisions and flips per bin of the baseline's margin (its top logit minus the next, with
    the calibration in the heads) over the label tasks, where each decision is one unit's
    (choice tasks - PARus, RuCoS - decide between units and are left out). A quantized model
    that keeps its float model's clear decisions flips only near 0."""
    edges = list(MARGIN_EDGES)
    decisions, flipped = np.zeros(len(edges), int), np.zeros(len(edges), int)
    for task, recs in records.items():
        if REGISTRY[task].choice or task not in base_logits:
            continue
        _, a = flat_predictions(task, recs, preds[task])
        _, b = flat_predictions(task, recs, base_preds[task])
        logits = np.sort(np.asarray(base_logits[task], dtype=np.float64), axis=1)
        if len(logits) != len(a):  # one unit per decision, in unit order; else not comparable
            continue
        which = np.searchsorted(edges, logits[:, -1] - logits[:, -2], side="right") - 1
        np.add.at(decisions, which, 1)
        np.add.at(flipped, which, [x != y for x, y in zip(a, b, strict=True)])
    return {
        "edges": edges,
        "decisions": decisions.tolist(),
        "flipped": flipped.tolist(),
        "tasks": [t for t in records if not REGISTRY[t].choice and t in base_logits],
    }


def against_baseline(records: dict[str, list], preds: dict, base_preds: dict | None,
                     base_logits: dict[str, np.ndarray] | None = None,
                     fixtures: frozenset[str] | set[str] = frozenset(),
                     seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """A run's decisions against the baseline's: flips per task, overall and by direction, the
    paired-bootstrap SE of each delta over the real (not fixture) tasks, and the flips by the
    baseline's margin (None without its logits). The baseline's own row (`base_preds` None)
    compares with itself: no flips, no SE, no margins."""
    against = base_preds is not None
    base = base_preds if against else preds
    flips, flip_n, flip_total = {}, 0, 0
    for task, recs in records.items():
        k, n = flip_counts(task, recs, preds[task], base[task])
        flips[task] = k / n if n else 0.0
        flip_n, flip_total = flip_n + k, flip_total + n
    real = [t for t in records if t not in fixtures]
    margins = against and base_logits is not None
    return {
        "flips": flips,
        "flip_rate": flip_n / flip_total if flip_total else 0.0,
        "flip_directions": {t: flip_directions(t, recs, preds[t], base[t])
                            for t, recs in records.items()},  # fmt: skip
        "delta_se": paired_bootstrap(records, preds, base, real, seed=seed) if against else None,
        "flips_by_margin": flips_by_margin(records, preds, base, base_logits) if margins else None,
    }
