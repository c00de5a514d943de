"""Recipe levers side by side on the real model: LoRA vs MLP adapters vs top-K freeze vs heads.

    python benchmarks/ablation.py --model MODEL_DIR --data ../shared/rsg [--only NAME,...]

Every configuration is one `mlx-rsg train` run on the same data (the same tasks, records, seed,
epochs and batches) with a dev split carved out of train: the epoch (and each binary head's
threshold) is chosen on dev, and val is scored once per configuration (--max-eval-per-task
records per task). Reported per configuration: trainable parameters (what the run saves: heads
and trained layers / LoRA / adapters), minutes (training plus each epoch's dev evaluation:
metrics.json's train_seconds; the single val pass and model loading are not counted), the dev
score it was selected on and the val score. A lever that wins on dev and val at a cost worth
paying earns its place in the recipe. With `--seeds 0,1,2` every configuration runs once per
seed (each seed draws its own records, dev split and batches) and the table ends with each
configuration's means over them, for levers smaller than one run's noise. With `--folds N` every
configuration runs N times instead, on one seed, with `train --dev-fold K/N` (K = 1..N): every
training record is held out once, and the table ends with the folds pooled (cross-validation:
each epoch's held-out scores and log-losses weighted by the records they stand on, the epoch
chosen by the pooled log-loss), for tasks too small for one dev split to tell levers apart.

Writes benchmarks/results/ablation.json and prints a table. Each run's directory is kept under
--runs for inspection.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ALL_PROJECTIONS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"

# name -> the flags that differ from COMMON. Gemma-3-270M has 18 blocks.
CONFIGS = {
    "heads": ["--method", "heads"],
    "heads-block10": ["--method", "heads", "--feature-layer", "10"],
    "freeze-top4": ["--method", "freeze", "--freeze-layers", "14", "--lr", "5e-5"],
    "freeze-top9": ["--method", "freeze", "--freeze-layers", "9", "--lr", "5e-5"],
    "lora-all-r8": ["--method", "lora", "--freeze-layers", "0", "--lora-rank", "8",
                    "--lora-alpha", "16", "--lora-targets", ALL_PROJECTIONS, "--lr", "2e-4"],
    "adapter-all-64": ["--method", "mlp-adapter", "--freeze-layers", "0", "--adapter-size", "64",
                       "--lr", "1e-3"],
    # The sweep: learning rates and epochs per method, and the methods at equal wall time (a
    # flag given again here overrides the common one).
    "freeze-top4-lr1e-4": ["--method", "freeze", "--freeze-layers", "14", "--lr", "1e-4"],
    "freeze-top4-4ep": ["--method", "freeze", "--freeze-layers", "14", "--lr", "5e-5",
                        "--epochs", "4"],
    "freeze-top4-600": ["--method", "freeze", "--freeze-layers", "14", "--lr", "5e-5",
                        "--max-train-per-task", "600"],  # ~LoRA's and the adapters' minutes
    "lora-top4-r8-lr1e-3": ["--method", "lora", "--freeze-layers", "14", "--lora-rank", "8",
                            "--lora-alpha", "16", "--lora-targets", ALL_PROJECTIONS,
                            "--lr", "1e-3"],
    "lora-all-r8-lr1e-3": ["--method", "lora", "--freeze-layers", "0", "--lora-rank", "8",
                           "--lora-alpha", "16", "--lora-targets", ALL_PROJECTIONS,
                           "--lr", "1e-3"],
    "adapter-all-64-lr3e-4": ["--method", "mlp-adapter", "--freeze-layers", "0",
                              "--adapter-size", "64", "--lr", "3e-4"],
    # Label-word priors (issue 26, item 4): the question-style ending alone, then heads that
    # start at the answer words' rows of the output embedding; `heads` keeps the backbone's
    # features, so there the prior is all the head starts from (at head lr 1e-9 it is the prior
    # alone, untrained).
    "freeze-top4-answer": ["--method", "freeze", "--freeze-layers", "14", "--lr", "5e-5",
                           "--prompt", "answer"],
    "freeze-top4-words": ["--method", "freeze", "--freeze-layers", "14", "--lr", "5e-5",
                          "--prompt", "answer", "--head-init", "label-words"],
    "heads-answer": ["--method", "heads", "--prompt", "answer"],
    "heads-words": ["--method", "heads", "--prompt", "answer", "--head-init", "label-words"],
    "words-prior": ["--method", "heads", "--prompt", "answer", "--head-init", "label-words",
                    "--head-lr", "1e-9", "--epochs", "1"],
    # Trained on the 4-bit base (QLoRA, issue 28): the model validated is the model shipped, so
    # no decision changes after training; `lora-top4-r8-lr1e-3` is the same on the float base.
    "qlora-top4-r8-lr1e-3": ["--method", "lora", "--freeze-layers", "14", "--lora-rank", "8",
                             "--lora-alpha", "16", "--lora-targets", ALL_PROJECTIONS,
                             "--lr", "1e-3"],
    # The top 4 of the blocks up to 12 or 14 (the blocks above are dropped): the same trained
    # compute, 2/3 or 7/9 of the frozen prefix's and of every scoring pass's (issue 26).
    "freeze-top4-block12": ["--method", "freeze", "--feature-layer", "12", "--freeze-layers", "8",
                            "--lr", "5e-5"],
    "freeze-top4-block14": ["--method", "freeze", "--feature-layer", "14", "--freeze-layers",
                            "10", "--lr", "5e-5"],
    # The quickstart's budget (issue 26: "the quickstart takes whatever is best per minute"):
    # its own heads recipe against the real run's shape, trained blocks and all, at its length.
    "qs-heads": ["--method", "heads", "--feature-layer", "10", "--epochs", "10",
                 "--head-lr", "2e-3", "--warmup", "10", "--batch-size", "16", "--grad-accum", "1"],
    "qs-freeze-block10-1ep": ["--method", "freeze", "--feature-layer", "10", "--freeze-layers",
                              "6", "--lr", "5e-5", "--epochs", "1"],
    "qs-freeze-block10": ["--method", "freeze", "--feature-layer", "10", "--freeze-layers", "6",
                          "--lr", "5e-5"],
    "qs-freeze-block12": ["--method", "freeze", "--feature-layer", "12", "--freeze-layers", "8",
                          "--lr", "5e-5"],
    # PARus trained mirrored as well (`--augment PARus`) against as drawn, the real run's shape.
    "parus-block12": ["--method", "freeze", "--feature-layer", "12", "--freeze-layers", "8",
                      "--lr", "5e-5"],
    "parus-block12-mirror": ["--method", "freeze", "--feature-layer", "12", "--freeze-layers",
                             "8", "--lr", "5e-5", "--augment", "PARus"],
    # PARus cross-validated (--folds 5): the real run's shape against fewer trained weights (its
    # block-12 features with a head alone; a lower learning rate) and deeper features (the top 4
    # of all 18 blocks trained).
    "parus-block12-heads": ["--method", "heads", "--feature-layer", "12", "--head-lr", "3e-3"],
    "parus-block12-lr1e-5": ["--method", "freeze", "--feature-layer", "12", "--freeze-layers",
                             "8", "--lr", "1e-5"],
    "parus-block18": ["--method", "freeze", "--freeze-layers", "14", "--lr", "5e-5"],
    # PARus's head on the blocks the real run trained (`--trained-run`, its PARus head-only, so
    # PARus's records never reached them) against a head on the base model's block 8: the
    # frozen prefix's output in the real run's shape, the base model's features at no extra cost.
    "parus-trained12-heads": ["--method", "heads", "--feature-layer", "12", "--head-lr", "3e-3"],
    "parus-block8-heads": ["--method", "heads", "--feature-layer", "8", "--head-lr", "3e-3"],
}  # fmt: skip
# name -> the backbone it trains on, made from --model once under --runs (default: --model):
# ("quantize", RECIPE) by `mlx-rsg quantize --recipe RECIPE`; ("trained", None) the blocks that
# --trained-run trained in place of the base's (benchmarks/trained_backbone.py).
BASES = {"qlora-top4-r8-lr1e-3": ("quantize", "q4"), "parus-trained12-heads": ("trained", None)}


def common_flags(args, seed: int | None = None, fold: int | None = None) -> list[str]:
    dev = (["--dev-per-task", str(args.dev_per_task)] if fold is None
           else ["--dev-fold", f"{fold}/{args.folds}"])  # fmt: skip
    return [
        "--tasks", args.tasks, "--max-train-per-task", str(args.train_per_task),
        *dev, "--max-eval-per-task", str(args.val_per_task),
        "--epochs", str(args.epochs), "--max-len", str(args.max_len), "--task-max-len", "auto",
        "--head-lr", "1e-3", "--warmup", "20",
        "--seed", str(args.seeds[0] if seed is None else seed),
    ]  # fmt: skip


def trainable_parameters(run: Path) -> int:
    import mlx.core as mx

    return int(sum(v.size for v in mx.load(str(run / "trainable.safetensors")).values()))


CLI = [sys.executable, "-c", "from mlx_rsg.cli import main; main()"]  # this environment's


def base_model(name: str, args) -> tuple[Path, dict]:
    """The backbone `name` trains on, and what its result says of it: --model, or its BASES
    backbone (made once under --runs, and reused while it is the one asked for)."""
    if name not in BASES:
        return args.model, {}
    kind, recipe = BASES[name]
    if kind == "trained":
        return _trained_base(name, args), {"base": f"the blocks `{args.trained_run}` trained, "
                                                   "in --model"}  # fmt: skip
    out = args.runs / f"base-{recipe}"
    if not (out / "mlx_rsg.json").exists():
        cmd = ["quantize", str(args.model), "--recipe", recipe, "-o", str(out), "--force"]
        print(f"== base of {name}: mlx-rsg {' '.join(cmd)}", file=sys.stderr, flush=True)
        subprocess.run([*CLI, *cmd], check=True)
    return out, {"base": f"--model quantized by `--recipe {recipe}`"}


def _trained_base(name: str, args) -> Path:
    """--model with the blocks --trained-run trained (benchmarks/trained_backbone.py), made
    again when the one under --runs came from another run."""
    if args.trained_run is None:
        raise SystemExit(f"{name}: needs --trained-run (the run whose blocks it reads)")
    out = args.runs / "base-trained"
    try:
        made_from = json.loads((out / "mlx_rsg.json").read_text())["trained_blocks"]["run"]
    except (OSError, ValueError, KeyError, TypeError):
        made_from = None
    if made_from != str(args.trained_run):
        from trained_backbone import trained_backbone  # benchmarks/, beside this script

        from mlx_rsg.errors import UserError

        print(f"== base of {name}: {args.trained_run}'s blocks", file=sys.stderr, flush=True)
        try:
            trained_backbone(args.trained_run, out, force=True)
        except UserError as e:  # not a freeze run, a moved base: one line
            raise SystemExit(f"--trained-run: {e}") from None
    return out


def run_one(name: str, flags: list[str], args, seed: int, fold: int | None = None) -> dict:
    """One configuration at one seed (the seed draws the records, the dev split and the batches)
    and, with --folds, one fold as its dev split; with several --seeds or folds each run's
    directory and label carry its seed or fold."""
    label, run = name, args.runs / name
    if len(args.seeds) > 1:
        label, run = f"{label} (seed {seed})", run.with_name(f"{run.name}-seed{seed}")
    if fold is not None:
        label, run = f"{label} (fold {fold})", run.with_name(f"{run.name}-fold{fold}")
    base, base_note = base_model(name, args)
    cmd = [*CLI, "train", str(base), "--data", str(args.data), "-o", str(run),
           "--force", *common_flags(args, seed, fold), *flags]  # fmt: skip
    print(f"== {name}: mlx-rsg {' '.join(cmd[len(CLI):])}", file=sys.stderr, flush=True)
    if args.reuse and _finished(run, cmd[len(CLI):]):
        print(f"   {run}: finished with these flags; reused", file=sys.stderr)
    else:
        subprocess.run(cmd, check=True)
        (run / "ablation_command.json").write_text(json.dumps(cmd[len(CLI):]))
    metrics = json.loads((run / "metrics.json").read_text())
    best = metrics["history"][metrics["best"]["epoch"] - 1]
    final = metrics["final"]
    return {
        "name": label,
        "run": str(run),
        "config": name,
        "seed": seed,
        **({"fold": fold} if fold is not None else {}),
        "flags": flags,
        **base_note,
        "trainable_parameters": trainable_parameters(run),
        "seconds": metrics["train_seconds"],  # training + each epoch's dev evaluation
        "best_epoch": metrics["best"]["epoch"],
        "dev": {"score": best["score"], "tasks": {t: v["score"] for t, v in best["tasks"].items()}},
        # what the epoch was chosen on (runs since the calibrated selection)
        "dev_calibrated": best.get("calibrated"),
        "dev_loss": (best.get("dev_loss") or {}).get("mean"),  # what the epoch is chosen by
        "val": {"total": final["total"],
                "tasks": {t: v["score"] for t, v in final["tasks"].items()}},
        "calibration": final.get("calibration"),
        # every epoch's dev scores, log-losses and records, for the folds' pooling
        "epochs": [{"tasks": {t: v["score"] for t, v in h["tasks"].items()},
                    "dev_loss": (h.get("dev_loss") or {}).get("tasks"),
                    "records": h.get("records")} for h in metrics["history"]],
    }  # fmt: skip


def _finished(run: Path, flags: list[str]) -> bool:
    """The run exists, was made by this script with the same flags, and finished."""
    try:
        same = json.loads((run / "ablation_command.json").read_text()) == flags
        return same and "final" in json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return False


def table(result: dict) -> str:
    """One row per configuration: its flags, cost, the epoch dev chose, dev as trained and
    calibrated (blank for runs from before calibrated selection), val once."""
    tasks = list(result["runs"][0]["val"]["tasks"]) if result["runs"] else []
    head = ["config", "flags", "trainable params", "minutes", "epoch", "dev", "dev calibrated",
            "dev log-loss", *tasks, "val mean"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in result["runs"]:
        calibrated = r.get("dev_calibrated") or {}
        cells = [r["name"], f"`{' '.join(r['flags'])}`", f"{r['trainable_parameters']:,}",
                 f"{r['seconds'] / 60:.1f}", r.get("best_epoch", ""), f"{r['dev']['score']:.3f}",
                 f"{calibrated['score']:.3f}" if "score" in calibrated else "",
                 f"{r['dev_loss']:.4f}" if r.get("dev_loss") is not None else "",
                 *(f"{r['val']['tasks'][t]:.3f}" for t in tasks), f"{r['val']['total']:.3f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    means, pooled = seed_means(result), fold_table(result)
    return ("\n".join(lines) + (f"\n\nMean over the seeds:\n\n{means}" if means else "")
            + (f"\n\nThe folds pooled:\n\n{pooled}" if pooled else ""))  # fmt: skip


def by_config(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs of each configuration (one per seed or fold), configurations in order of their
    first run (results from before `config` was recorded go by `name`)."""
    out: dict[str, list[dict]] = {}
    for r in runs:
        out.setdefault(r.get("config") or r["name"], []).append(r)
    return out


def chosen_epoch(cv: dict) -> dict:
    """A cross-validated configuration's pooled entry at the epoch its pooled log-loss chose."""
    return cv["epochs"][cv["best_epoch"] - 1]


def _against(p: dict | None) -> str:
    return "" if p is None else f"{p['mean']['difference']:+.3f} ± {p['mean']['se']:.3f}"


def cross_validation(result: dict) -> dict[str, dict]:
    """Each configuration's folds pooled, per epoch: every task's held-out score and log-loss
    weighted by the records each fold held out (exact for accuracy and the mean log-loss; a
    weighted mean of the folds' F1 or MCC otherwise), their means over the tasks, and the epoch
    with the lowest pooled log-loss. Empty without --folds."""
    out = {}
    for name, rs in by_config([r for r in result["runs"] if "fold" in r]).items():
        epochs = []
        for e in range(min(len(r["epochs"]) for r in rs)):
            entries = [r["epochs"][e] for r in rs]
            n = {t: sum(x["records"][t] for x in entries) for t in entries[0]["tasks"]}

            def pooled(key: str, entries=entries, n=n) -> dict[str, float]:
                return {t: sum(x[key][t] * x["records"][t] for x in entries) / n[t] for t in n}

            score, loss = pooled("tasks"), pooled("dev_loss")
            epochs.append({"tasks": score, "score": sum(score.values()) / len(score),
                           "dev_loss": loss, "loss": sum(loss.values()) / len(loss),
                           "records": n})  # fmt: skip
        best = min(range(len(epochs)), key=lambda e: epochs[e]["loss"])
        out[name] = {"folds": len(rs), "minutes": sum(r["seconds"] for r in rs) / 60,
                     "epochs": epochs, "best_epoch": best + 1,
                     "val": sum(r["val"]["total"] for r in rs) / len(rs)}  # fmt: skip
    return out


def out_of_fold(runs: list[dict], epoch: int) -> dict[str, dict]:
    """{task: {idx: decision}}: the folds' dev decisions at `epoch` (each run's
    dev_predictions/epochN.zip), together every training record's once."""
    from mlx_rsg.submission import read_submission

    out: dict[str, dict] = {}
    for r in runs:
        for task, preds in read_submission(Path(r["run"]) / "dev_predictions" /
                                           f"epoch{epoch}.zip").items():  # fmt: skip
            out.setdefault(task, {}).update(preds)
    return out


def paired(result: dict, data: Path) -> dict[str, dict]:
    """Each configuration's out-of-fold decisions (at the epoch its pooled log-loss chose)
    against the first configuration's, on the same training records: the difference of each
    task's official score and of their mean, with paired-bootstrap standard errors."""
    from mlx_rsg.bench.compare import metrics, paired_bootstrap
    from mlx_rsg.data import load_split

    cv, by = result["cross_validation"], by_config(result["runs"])
    oof = {name: out_of_fold(by[name], c["best_epoch"]) for name, c in cv.items()}
    first = next(iter(cv))
    records = {t: [r for r in load_split(data, t, "train") if r.idx in oof[first][t]]
               for t in oof[first]}  # fmt: skip
    out = {}
    for name in list(cv)[1:]:
        se = paired_bootstrap(records, oof[name], oof[first], list(records))
        diff = {t: metrics(t, recs, oof[name][t])["score"]
                - metrics(t, recs, oof[first][t])["score"] for t, recs in records.items()}
        out[name] = {"against": first, "tasks": {t: {"difference": d, "se": se["tasks"][t]}
                                                for t, d in diff.items()},
                     "mean": {"difference": sum(diff.values()) / len(diff), "se": se["total"]}}
    return out


def fold_table(result: dict) -> str:
    """One row per configuration with --folds: the pooled held-out score at each epoch, the epoch
    the pooled log-loss chooses, its score ± a binomial standard error over the records held out
    (exact for accuracy), its log-loss, its difference from the first configuration on the same
    records ± a paired-bootstrap standard error (`paired`), and the folds' mean val (no choice is
    made on val)."""
    cv = cross_validation(result)
    if not cv:
        return ""
    n_epochs = max(len(c["epochs"]) for c in cv.values())
    head = ["config", "folds", "records held out", "minutes (all folds)",
            *(f"epoch {e + 1}" for e in range(n_epochs)), "epoch chosen", "score ± SE",
            "log-loss", "against the first (paired)", "val mean (folds)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, c in cv.items():
        best = chosen_epoch(c)
        held = min(best["records"].values())
        se = (best["score"] * (1 - best["score"]) / held) ** 0.5
        cells = [name, c["folds"], ", ".join(f"{t} {k}" for t, k in best["records"].items()),
                 f"{c['minutes']:.1f}", *(f"{e['score']:.3f}" for e in c["epochs"]),
                 *([""] * (n_epochs - len(c["epochs"]))), c["best_epoch"],
                 f"{best['score']:.3f} ± {se:.3f}", f"{best['loss']:.4f}",
                 _against(result.get("paired", {}).get(name)), f"{c['val']:.3f}"]
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return "\n".join(lines)


def config_means(result: dict) -> dict[str, dict]:
    """Each configuration's runs (one per seed) averaged: seeds, minutes, dev as trained, dev as
    decided (calibrated, where the run calibrated), dev log-loss (None where a run lacks it) and
    val."""
    by = by_config(result["runs"])

    def mean(rs: list[dict], f) -> float:
        return sum(f(r) for r in rs) / len(rs)

    return {name: {"seeds": len(rs), "minutes": mean(rs, lambda r: r["seconds"] / 60),
                   "dev": mean(rs, lambda r: r["dev"]["score"]),
                   "dev_calibrated": mean(rs, lambda r: (r.get("dev_calibrated")
                                                        or r["dev"])["score"]),
                   "dev_loss": (None if any(r.get("dev_loss") is None for r in rs)
                                else mean(rs, lambda r: r["dev_loss"])),
                   "val": mean(rs, lambda r: r["val"]["total"])}
            for name, rs in by.items()}  # fmt: skip


def seed_means(result: dict) -> str:
    """Each configuration's mean over the seeds it ran with: minutes, dev as trained and
    calibrated, dev log-loss and val (empty with one seed, and with --folds: `fold_table`)."""
    means = config_means(result)
    if any("fold" in r for r in result["runs"]) or all(m["seeds"] == 1 for m in means.values()):
        return ""
    head = ["config", "seeds", "minutes", "dev", "dev calibrated", "dev log-loss", "val mean"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, m in means.items():
        cells = [name, m["seeds"], f"{m['minutes']:.1f}", f"{m['dev']:.3f}",
                 f"{m['dev_calibrated']:.3f}",
                 f"{m['dev_loss']:.4f}" if m["dev_loss"] is not None else "", f"{m['val']:.3f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a converted model directory")
    ap.add_argument("--data", type=Path, required=True, help="RSG data directory")
    ap.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--only", help="comma-separated config names (default: all)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep runs under --runs that finished with the same flags")  # fmt: skip
    ap.add_argument("--tasks", default="TERRa,RCB,DaNetQA")
    ap.add_argument("--train-per-task", type=int, default=240)
    ap.add_argument("--dev-per-task", type=int, default=96)
    ap.add_argument("--val-per-task", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=160)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0],
                    help="comma-separated seeds: every configuration runs once per seed")
    ap.add_argument("--folds", type=int, default=0,
                    help="N >= 2: every configuration runs once per fold of train as its dev "
                    "split (`train --dev-fold K/N`, the first seed) and the folds are pooled")
    ap.add_argument("--trained-run", type=Path,
                    help="a freeze run whose trained blocks the `trained` BASES read")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ablation.json")
    args = ap.parse_args()

    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"--only: unknown config {unknown[0]!r} (one of {', '.join(CONFIGS)})")
    from mlx_rsg.accel import blas
    from mlx_rsg.version import __version__

    if args.folds == 1 or args.folds < 0 or args.folds and len(args.seeds) > 1:
        raise SystemExit("--folds: needs N >= 2 and one seed (the folds of one seed partition "
                         "train)")  # fmt: skip
    folds = range(1, args.folds + 1) if args.folds else [None]
    runs = [run_one(n, CONFIGS[n], args, seed, fold)
            for seed in args.seeds for n in names for fold in folds]  # fmt: skip
    result = {
        "benchmark": "ablation",
        "model": str(args.model),
        "data": str(args.data),
        "common_flags": common_flags(args, fold=1 if args.folds else None),
        "blas": blas.describe(),
        "versions": {"mlx_rsg": __version__},
        "runs": runs,
    }
    if args.folds:
        result["folds"], result["cross_validation"] = args.folds, cross_validation(result)
        result["paired"] = paired(result, args.data)
    from results_io import save  # benchmarks/results_io.py, beside this script

    save(args.out, result, table(result))


if __name__ == "__main__":
    main()
