"""What each fix of "Choices that predict val" did, measured without val labels.

    python benchmarks/dev_fixes.py --model MODEL_DIR --data ../shared/rsg [--runs DIR]

1. Data, no model: how many dev records have a near-copy (a record sharing a group key) in train,
   drawing single records (the old dev split) vs whole groups (`train/plan.split_dev`); how many
   val and test units the lengths cut, fitted on train alone (the old `auto`) vs on every split
   scored; RCB val premises cut, and how many of those keep their last sentence (the one the
   hypothesis restates), cut at the end (old) vs at the start; RUSSE test spans that mark part
   of a word, as the official offsets say vs snapped.
2. Decisions, on one trained model's dev logits (all seven trained tasks, freeze top 4): each
   task's dev score as trained, with the old rule (the best of ~200 thresholds, binary tasks
   only; LiDiRus shared TERRa's accuracy threshold), with Platt's threshold (accuracy tasks: the
   rule the real run used, since replaced) and with the new one (`train/calibrate.py`: the
   offsets nearest 0 within one bootstrap SE of the best, for every metric).
   A rule chosen on the same records it is scored on looks better than it is, so both are
   cross-fitted: chosen on one half of dev (whole groups), scored on the other, both ways, over
   5 random halvings. Also MuSeRC decoded answer by answer vs per question, and DaNetQA with
   and without its prior shift (dev has train's prior, so the shift can only cost on dev).
3. Span context: RWSD and RUSSE trained alone (same data, seed and epochs) with the old units
   (the two marked words only) and the new ones (plus the last token of a question after the
   text); dev accuracy as trained and Platt-calibrated (cross-fitted).

Writes benchmarks/results/dev_fixes.json and prints the tables. `--decisions-only` scores part 2
again on the base run already trained (RUNS/base) and keeps the rest of the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import mlx_rsg  # noqa: F401  (the BLAS before mlx)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from results_io import save  # noqa: E402

from mlx_rsg import train as T  # noqa: E402
from mlx_rsg.data import available_splits, load_split  # noqa: E402
from mlx_rsg.data.info import fitting_max_len, unit_lengths  # noqa: E402
from mlx_rsg.data.sample import diagnostic_records, examples_in, sample_records  # noqa: E402
from mlx_rsg.model.backbone import load_tokenizer  # noqa: E402
from mlx_rsg.predict import load, score_units  # noqa: E402
from mlx_rsg.tasks import REGISTRY, make_units, task_score  # noqa: E402
from mlx_rsg.tasks import rwsd as rwsd_module  # noqa: E402
from mlx_rsg.tasks.russe import RUSSE  # noqa: E402
from mlx_rsg.tasks.units import Unit, split_marked  # noqa: E402
from mlx_rsg.train.calibrate import (  # noqa: E402
    candidates,
    choose_offsets,
    class1_share,
    official_score,
    prior_shift,
)
from mlx_rsg.train.plan import record_groups, split_dev  # noqa: E402

TASKS = ("RCB", "PARus", "MuSeRC", "TERRa", "RUSSE", "RWSD", "DaNetQA")
HALVINGS = 5


# ------------------------------------------------------------------------------------ data


def leakage(data: Path, dev_per_task: int, seed: int) -> dict:
    """Per task: dev records with a near-copy in train, single-record draw vs grouped."""
    cfg = T.TrainConfig(dev_per_task=dev_per_task, seed=seed)
    out = {}
    for task in TASKS:
        records = load_split(data, task, "train")
        group_of = {}
        for g, members in enumerate(record_groups(task, records)):
            for r in members:
                group_of[id(r)] = g
        old = sample_records(records, dev_per_task, seed, f"{task}:dev",
                             lambda r, t=task: examples_in(t, r))  # fmt: skip
        new = split_dev(task, records, cfg)[1]
        row = {"train_records": len(records), "groups": len(set(group_of.values()))}
        for name, dev in (("records", old), ("groups", new)):
            taken = {id(r) for r in dev}
            in_train = {group_of[id(r)] for r in records if id(r) not in taken}
            row[f"leaked_{name}"] = sum(group_of[id(r)] in in_train for r in dev)
            row[f"dev_{name}"] = len(dev)
        out[task] = row
    return out


def truncation(data: Path, tokenizer, max_len: int, train_per_task: int, seed: int) -> dict:
    """Per task: the length fitted on train's sample alone vs every split, and the share of val
    and test units each cuts."""
    out = {}
    for task in TASKS:
        train = sample_records(load_split(data, task, "train"), train_per_task, seed,
                               f"{task}:train", lambda r, t=task: examples_in(t, r))  # fmt: skip
        splits = {s: load_split(data, task, s) for s in ("val", "test")
                  if s in available_splits(data, task)}  # fmt: skip
        if task == "TERRa":
            splits["LiDiRus"] = diagnostic_records(data)
        lengths = {s: unit_lengths("LiDiRus" if s == "LiDiRus" else task, recs, tokenizer)
                   for s, recs in splits.items()}  # fmt: skip
        train_fit = min(max_len, fitting_max_len(unit_lengths(task, train, tokenizer)))
        all_fit = min(max_len, max([train_fit, *(fitting_max_len(v) for v in lengths.values())]))
        row = {"train_fit": train_fit, "all_splits_fit": all_fit}
        for s, v in lengths.items():
            row[f"{s}_cut_train_fit"] = sum(n > train_fit for n in v) / len(v)
            row[f"{s}_cut_all_fit"] = sum(n > all_fit for n in v) / len(v)
        out[task] = row
    return out


def rcb_premises(data: Path, tokenizer, max_len: int) -> dict:
    """RCB val units longer than `max_len`: how many keep the premise's last sentence when the
    premise loses its end (the old cut) vs its start."""
    from mlx_rsg.model.batching import encode_units

    records = load_split(data, "RCB", "val")
    units = make_units("RCB", records)
    cut = [u for u, n in zip(units, unit_lengths("RCB", records, tokenizer), strict=True)
           if n > max_len]  # fmt: skip
    kept = {"end_cut": 0, "start_cut": 0}
    for u in cut:
        last = u.pieces[1][0].strip().rsplit(". ", 1)[-1][-40:]
        for name, unit in (("end_cut", dataclasses.replace(u, keep_end=())), ("start_cut", u)):
            (e,) = encode_units([unit], tokenizer, max_len)
            kept[name] += last in tokenizer.decode(e.ids)
    return {"max_len": max_len, "val_units": len(units), "cut": len(cut), **kept}


def russe_partial_words(data: Path) -> dict:
    """RUSSE test spans that end inside a word: the official offsets vs snapped."""
    from mlx_rsg.tasks.russe import word_span

    official = snapped = total = 0
    for r in load_split(data, "RUSSE", "test"):
        for text, start, end in ((r.sentence1, r.start1, r.end1), (r.sentence2, r.start2, r.end2)):
            pieces = split_marked(text, [(start, end)])  # the old units' span: pieces concatenate
            e = len(pieces[0][0]) + len(pieces[1][0])  # to the text, the marked one second
            official += e < len(text) and text[e].isalnum()
            s2, e2 = word_span(text, start, end)
            snapped += e2 < len(text) and text[e2].isalnum()
            total += 1
    return {"spans": total, "partial_official": official, "partial_snapped": snapped}


# ------------------------------------------------------------------------------- decisions


def old_rule(task: str, records, keys, logits, metric=None) -> tuple[float, ...]:
    """The old calibration: the best of ~200 thresholds on dev, ties nearest 0 (binary only)."""
    if logits.shape[1] != 2:
        return (0.0,) * logits.shape[1]
    cands = candidates(task, logits)
    scores = [official_score(task, records, keys, logits + c, metric) for c in cands]
    return tuple(float(x) for x in cands[int(np.argmax(scores))])


def new_rule(task: str, records, keys, logits, metric=None) -> tuple[float, ...]:
    return choose_offsets(task, records, keys, logits, metric).offsets


def platt_rule(task: str, records, keys, logits, metric=None) -> tuple[float, ...]:
    """Platt scaling (accuracy tasks): the margin where a logistic regression of the labels on
    the margin logit 1 - logit 0 says 1/2 (the rule the real run used; replaced by `new_rule`
    after this benchmark measured both)."""
    labels = np.array([REGISTRY[task].label_index(REGISTRY[task].gold(r)) for r in records], float)
    return (0.0, -platt_threshold(logits[:, 1] - logits[:, 0], labels))


def platt_threshold(margins: np.ndarray, labels: np.ndarray, l2: float = 1e-2) -> float:
    """Logistic regression (slope, intercept, small L2, Newton) of `labels` on `margins`; where
    it says 1/2, clipped to one past the margins' range (slope <= 0: the dev majority)."""
    X = np.stack([margins, np.ones_like(margins)], axis=1)
    w = np.zeros(2)
    for _ in range(100):
        p = 0.5 * (1 + np.tanh(0.5 * (X @ w)))
        step = np.linalg.solve((X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(2),
                               X.T @ (p - labels) + l2 * w)  # fmt: skip
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    low, high = float(margins.min()) - 1, float(margins.max()) + 1
    if w[0] <= 1e-9:
        return low if labels.mean() > 0.5 else high
    return float(np.clip(-w[1] / w[0], low, high))


def _subset(task, records, keys, logits, chosen):
    ids = {r.idx for r in chosen}
    rows = [i for i, k in enumerate(keys) if k[0] in ids]
    return chosen, [keys[i] for i in rows], logits[rows]


def cross_fitted(task, records, keys, logits, rule, metric=None, seed=0, fit_on="metric") -> float:
    """Mean over HALVINGS random halvings (whole groups) of: offsets chosen on one half (for
    `fit_on`, by default the metric scored), scored by `metric` on the other, both ways."""
    fit_metric = metric if fit_on == "metric" else fit_on
    groups = record_groups(task, records)
    scores = []
    for h in range(HALVINGS):
        order = np.random.default_rng(seed * 100 + h).permutation(len(groups))
        halves = [[r for i in order[k::2] for r in groups[i]] for k in (0, 1)]
        if not all(halves):  # one group: nothing to fit on
            continue
        for fit, held in (halves, halves[::-1]):
            offsets = rule(task, *_subset(task, records, keys, logits, fit), fit_metric)
            rec, k, lg = _subset(task, records, keys, logits, held)
            scores.append(official_score(task, rec, k, lg + np.array(offsets), metric))
    return float(np.mean(scores)) if scores else float("nan")


def decisions(run: Path, data: Path, cfg) -> dict:
    """Dev scores of the run's model as trained and under each decision rule."""
    predictor = load(run, calibrated=False)
    out = {}
    for task in TASKS:
        train, dev = split_dev(task, load_split(data, task, "train"), cfg)
        units, logits = score_units(predictor.model, predictor.tokenizer, task, dev, 16)
        keys = [u.key for u in units]
        metrics = [task] + (["LiDiRus"] if task == "TERRa" else [])
        for metric in metrics:
            name = "LiDiRus (MCC on TERRa dev)" if metric == "LiDiRus" else task
            row = {"dev_records": len(dev),
                   "as_trained": official_score(task, dev, keys, logits, metric)}  # fmt: skip
            if REGISTRY[task].choice:
                out[name] = row
                continue
            # the old run shared TERRa's accuracy threshold with LiDiRus
            fit_on = task if metric == "LiDiRus" else "metric"
            row["old_rule"] = cross_fitted(task, dev, keys, logits, old_rule, metric,
                                           fit_on=fit_on)  # fmt: skip
            if REGISTRY[metric].metrics == ("accuracy",) and logits.shape[1] == 2:
                row["platt"] = cross_fitted(task, dev, keys, logits, platt_rule, metric)
            row["new_rule"] = cross_fitted(task, dev, keys, logits, new_rule, metric)
            if task == "MuSeRC":
                row["as_trained_answer_by_answer"] = _answer_by_answer(dev, keys, logits)
            if task == "DaNetQA":
                shift = prior_shift(task, class1_share(task, train))
                offsets = np.array(new_rule(task, dev, keys, logits))
                row["prior_shift"] = shift
                row["new_rule_in_sample"] = official_score(task, dev, keys, logits + offsets)
                offsets[1] += shift
                row["new_rule_in_sample_with_prior_shift"] = official_score(
                    task, dev, keys, logits + offsets)
            out[name] = row
    return out


def _answer_by_answer(records, keys, logits) -> float:
    """MuSeRC's official score deciding every answer alone (the old decode)."""
    preds = [{a.idx: int(logits[keys.index((r.idx, q.idx, a.idx))].argmax())
              for q in r.questions for a in q.answers} for r in records]  # fmt: skip
    return task_score("MuSeRC", REGISTRY["MuSeRC"].score(records, preds))


# ------------------------------------------------------------------------------ span context


@dataclasses.dataclass(frozen=True)
class RWSDWordsOnly(rwsd_module.RWSD):
    """The old RWSD units: the two marked spans only."""

    def units(self, record, train=False, rng=None, max_negatives=None):
        (unit,) = super().units(record, train, rng, max_negatives)
        return [dataclasses.replace(unit, pieces=unit.pieces[:-2], span_order=unit.span_order[:2])]


@dataclasses.dataclass(frozen=True)
class RUSSEWordsOnly(RUSSE):
    """The old RUSSE units: the word in each sentence only."""

    def units(self, record, train=False, rng=None, max_negatives=None):
        (unit,) = super().units(record, train, rng, max_negatives)
        return [Unit(unit.task, unit.key, None, unit.pieces[:-2], unit.label)]


@contextlib.contextmanager
def words_only():
    """REGISTRY's RWSD and RUSSE with the old units, for this process while inside."""
    saved = {t: REGISTRY[t] for t in ("RWSD", "RUSSE")}
    REGISTRY["RWSD"] = RWSDWordsOnly("RWSD", (False, True), pooling="span", spans=2,
                                     spelling=("False", "True"))  # fmt: skip
    REGISTRY["RUSSE"] = RUSSEWordsOnly("RUSSE", (False, True), pooling="span", spans=2,
                                       spelling=("false", "true"))  # fmt: skip
    try:
        yield
    finally:
        REGISTRY.update(saved)


def span_context(args) -> dict:
    out = {}
    cfg = T.TrainConfig(tasks=("RUSSE", "RWSD"), method="freeze", freeze_layers=args.freeze_layers,
                        max_train_per_task=args.span_train_per_task,
                        dev_per_task=args.dev_per_task, epochs=args.epochs, lr=5e-5,
                        head_lr=1e-3, warmup=20, max_len=args.max_len,
                        task_max_len=("auto",), seed=args.seed, calibrate=False,
                        max_eval_per_task=1)  # fmt: skip  (val is not what this measures)
    for name, ctx in (("words only (old)", words_only), ("+ question's last token", None)):
        run = args.runs / ("span-words-only" if ctx else "span-context")
        t0 = time.perf_counter()
        with ctx() if ctx else contextlib.nullcontext():
            metrics = T.train(args.model, args.data, run, cfg, force=True, log=_quiet)
            predictor = load(run, calibrated=False)
            row = {"epoch": metrics["best"]["epoch"], "minutes": (time.perf_counter() - t0) / 60}
            for task in ("RWSD", "RUSSE"):
                dev = split_dev(task, load_split(args.data, task, "train"), cfg)[1]
                units, logits = score_units(predictor.model, predictor.tokenizer, task, dev, 16)
                keys = [u.key for u in units]
                row[task] = {"dev_records": len(dev),
                             "as_trained": official_score(task, dev, keys, logits),
                             "platt_cross_fitted": cross_fitted(task, dev, keys, logits,
                                                                platt_rule)}  # fmt: skip
        out[name] = row
    return out


def _quiet(msg: str) -> None:
    if msg.startswith(("epoch", "RWSD", "RUSSE")):
        print("   " + msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- report


def leakage_table(result: dict) -> str:
    """Dev records with a near-copy in train, drawn record by record (old) and by group."""
    lines = ["| task | train records | groups of near-copies | dev records with a near-copy in "
             "train: single-record draw (old) | grouped draw |", "|---|---|---|---|---|"]
    for t, r in result["leakage"].items():
        lines.append(f"| {t} | {r['train_records']:,} | {r['groups']:,} | "
                     f"{r['leaked_records']} of {r['dev_records']} | "
                     f"{r['leaked_groups']} of {r['dev_groups']} |")  # fmt: skip
    return "\n".join(lines)


def lengths_table(result: dict) -> str:
    """The share of scored units cut at lengths fitted on train vs on every split scored."""
    lines = ["| task | length fitted on train | val cut | test cut | fitted on every split scored "
             "| val cut | test cut |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for t, r in result["truncation"].items():
        cut = [f"{100 * r[k]:.1f} %" if k in r else "-"
               for k in ("val_cut_train_fit", "test_cut_train_fit", "val_cut_all_fit",
                         "test_cut_all_fit")]  # fmt: skip
        lines.append(f"| {t} | {r['train_fit']} | {cut[0]} | {cut[1]} | {r['all_splits_fit']} | "
                     f"{cut[2]} | {cut[3]} |")  # fmt: skip
    p, russe = result["rcb_premises"], result["russe"]
    lines += ["", f"RCB val units over {p['max_len']} tokens: {p['cut']} of {p['val_units']}; the "
              f"premise's last sentence kept in {p['end_cut']} of them when the premise is cut at "
              f"its end (old), in {p['start_cut']} when cut at its start. RUSSE's test file: "
              f"{russe['partial_official']:,} of its {russe['spans']:,} spans end inside a word "
              f"as the official offsets say, {russe['partial_snapped']} once snapped to the "
              "word."]  # fmt: skip
    return "\n".join(lines)


RULES = {"as_trained": "as trained (offsets 0)",
         "old_rule": "old: the best of ~200 thresholds (LiDiRus: TERRa's)",
         "platt": "Platt's threshold (accuracy tasks)",
         "new_rule": "new: nearest 0 within one SE of the best"}  # fmt: skip


def decisions_table(result: dict) -> str:
    """Each decision rule per task, cross-fitted on dev (a row per rule)."""
    tasks = list(result["decisions"])
    lines = ["| decision rule, cross-fitted on dev | " + " | ".join(tasks) + " |",
             "|---" * (len(tasks) + 1) + "|"]  # fmt: skip
    for key, name in RULES.items():
        cells = [result["decisions"][t].get(key) for t in tasks]
        lines.append(f"| {name} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells)
                     + " |")  # fmt: skip
    m, d = result["decisions"]["MuSeRC"], result["decisions"]["DaNetQA"]
    lines += ["", f"MuSeRC as trained, decoded per question (at least one true answer each) "
              f"{m['as_trained']:.3f}, answer by answer {m['as_trained_answer_by_answer']:.3f}. "
              f"DaNetQA's dev (train's prior) with the new rule {d['new_rule_in_sample']:.3f}, "
              f"with the prior shift ({d['prior_shift']:+.3f}) "
              f"{d['new_rule_in_sample_with_prior_shift']:.3f}."]  # fmt: skip
    return "\n".join(lines)


def span_table(result: dict) -> str:
    """RWSD and RUSSE trained alone, with and without the question's last token."""
    lines = ["| units | epoch | minutes | RWSD as trained | RWSD Platt | RUSSE as trained | "
             "RUSSE Platt |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in result["span_context"].items():
        cells = [f"{r[t][k]:.3f}" for t in ("RWSD", "RUSSE")
                 for k in ("as_trained", "platt_cross_fitted")]  # fmt: skip
        lines.append(f"| {name} | {r['epoch']} | {r['minutes']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(result: dict) -> str:
    return "\n\n".join([
        "## Dev split: dev records with a near-copy in train", leakage_table(result),
        "## Lengths: share of scored units cut", lengths_table(result),
        "## Decisions on dev (cross-fitted: chosen on one half, scored on the other)",
        decisions_table(result),
        "## Span context (RWSD + RUSSE trained alone)", span_table(result),
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--runs", type=Path, default=Path("runs/dev-fixes"))
    ap.add_argument("--train-per-task", type=int, default=400)
    ap.add_argument("--span-train-per-task", type=int, default=600)
    ap.add_argument("--dev-per-task", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--freeze-layers", type=int, default=14)
    ap.add_argument("--max-len", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "dev_fixes.json")
    ap.add_argument("--decisions-only", action="store_true",
                    help="score part 2 again on RUNS/base; keep the rest of --out")  # fmt: skip
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.decisions_only:
        result = json.loads(args.out.read_text())
        cfg = T.TrainConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in result["base_run"]["flags"].items()})  # fmt: skip
        result["decisions"] = decisions(args.runs / "base", args.data, cfg)
        result["decisions_command"] = " ".join(sys.argv)
        save(args.out, _jsonable(result), table(result))
        return
    tokenizer = load_tokenizer(args.model)
    result = {"command": " ".join(sys.argv), "tasks": list(TASKS)}
    result["leakage"] = leakage(args.data, args.dev_per_task, args.seed)
    result["truncation"] = truncation(args.data, tokenizer, args.max_len, args.train_per_task,
                                      args.seed)  # fmt: skip
    result["rcb_premises"] = rcb_premises(args.data, tokenizer, 128)
    result["russe"] = russe_partial_words(args.data)
    cfg = T.TrainConfig(tasks=TASKS, method="freeze", freeze_layers=args.freeze_layers,
                        max_train_per_task=args.train_per_task, dev_per_task=args.dev_per_task,
                        epochs=args.epochs, lr=5e-5, head_lr=1e-3, warmup=20,
                        max_len=args.max_len, task_max_len=("auto",), seed=args.seed,
                        calibrate=False, max_eval_per_task=1)  # fmt: skip  (no val: dev only)
    base = args.runs / "base"
    t1 = time.perf_counter()
    metrics = T.train(args.model, args.data, base, cfg, force=True, log=_quiet)
    result["base_run"] = {"flags": dataclasses.asdict(cfg), "epoch": metrics["best"]["epoch"],
                          "minutes": (time.perf_counter() - t1) / 60}  # fmt: skip
    result["decisions"] = decisions(base, args.data, cfg)
    result["span_context"] = span_context(args)
    result["minutes"] = (time.perf_counter() - t0) / 60
    save(args.out, _jsonable(result), table(result))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


if __name__ == "__main__":
    main()
