"""Render the result tables of README.md and docs/ from benchmarks/results/*.json.

    python benchmarks/render_docs.py           # rewrite every table between its markers
    python benchmarks/render_docs.py --check   # exit 1 naming each table that differs

A table lives between `<!-- render:NAME -->` and `<!-- /render:NAME -->`; NAME is a key of
`TABLES`, a function of the results directory that returns the table's markdown. Numbers are
never typed into a rendered table: change the JSON (by re-running its benchmark), then render.
`tests/test_docs.py` fails when a committed table differs from its JSON. Nothing here runs a
model.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# the order the README lists the tasks in (bench's order)
TASKS = ["LiDiRus", "RCB", "PARus", "MuSeRC", "TERRa", "RUSSE", "RWSD", "DaNetQA"]
METRIC_NAMES = {"mcc": "MCC", "f1": "F1", "accuracy": "acc.", "f1a": "F1a", "em": "EM"}


def _load(results: Path, name: str) -> dict:
    return json.loads((results / name).read_text())


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list]) -> str:
    return "\n".join([_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)])


def quality(results: Path) -> str:
    """The real run's val scores per task beside the best constant answer (quality.json)."""
    q = _load(results, "quality.json")
    rows = []
    for task in TASKS:
        t = q["tasks"][task]
        metrics = ", ".join(f"{METRIC_NAMES[m]} {v:.3f}" for m, v in t["metrics"].items())
        rows.append([task, t["records"], metrics, f"**{t['score']:.3f}**", f"{t['majority']:.3f}"])
    rows.append(["**total**", "", "", f"**{q['total']:.3f}**", f"{q['majority_total']:.3f}"])
    run = q["run"]
    table = _table(["task", "val records", "official metrics", "score", "best constant answer"],
                   rows)  # fmt: skip
    return (
        f"{table}\n\nTraining and the val pass: {run['wall_minutes']} min wall, peak RSS "
        f"{run['peak_rss_gb']} GiB (`quality.json`: the command, the machine, the BLAS)."
    )


SCORES_HEAD = ["", "LiDiRus (MCC)", *TASKS[1:], "**total**"]
QUALITY = "quality/"  # where quality.py's comparison zips live, as their JSON names them


def _scores_row(label: str, q: dict) -> list:
    return [label, *(f"{q['tasks'][t]['score']:.3f}" for t in TASKS), f"{q['total']:.3f}"]


def _difference_row(q: dict) -> list:
    d = q["difference"]
    against = d["against"].split(QUALITY, 1)[-1].removesuffix(".zip")
    return [f"minus `{against}` (paired bootstrap SE)",
            *(f"{d['tasks'][t]['difference']:+.3f} ({d['tasks'][t]['se']:.3f})" for t in TASKS),
            f"{d['total']:+.3f} ({d['total_se']:.3f})"]  # fmt: skip


def _constant_row(q: dict) -> list:
    return ["best constant answer", *(f"{q['tasks'][t]['majority']:.3f}" for t in TASKS),
            f"{q['majority_total']:.3f}"]  # fmt: skip


def _run_table(q: dict, label: str) -> str:
    """A run's val scores, its paired difference to the run it was compared with, and the best
    constant answers."""
    return _table(SCORES_HEAD, [_scores_row(label, q), _difference_row(q), _constant_row(q)])


def real_run(results: Path) -> str:
    """docs/training.md: the real run's val table (quality.json)."""
    return _run_table(_load(results, "quality.json"), "**this run**")


def block12_run(results: Path) -> str:
    """docs/training.md: the real run before `--head-only PARus` (quality/earlier/block12.json)."""
    return _run_table(_load(results, "quality/earlier/block12.json"), "**the run before it**")


EARLIER_RUNS = [  # docs/training.md: the runs before the real one, each re-scored by a test
    ("the fixes, epoch 3 by dev loss (`earlier/fixes`)", "quality/earlier/fixes.json"),
    ("before the fixes (`earlier/1000`, epoch 3)", "quality/earlier/1000.json"),
    ("the fixes with `--refit` (`earlier/fixes-refit`)", "quality/earlier/fixes-refit.json"),
    ("before the fixes, epoch 1 (`earlier/1000-epoch1`)", "quality/earlier/1000-epoch1.json"),
    ("640 per task (`earlier/640`)", "quality/earlier/640.json"),
]


def earlier_runs(results: Path) -> str:
    """docs/training.md: the earlier runs' val scores; the first with its paired difference."""
    (label, name), *more = EARLIER_RUNS
    first = _load(results, name)
    rows = [_scores_row(label, first), _difference_row(first)]
    rows += [_scores_row(label, _load(results, name)) for label, name in more]
    return _table(SCORES_HEAD, [*rows, _constant_row(first)])


def _beside(run: str, label: str, base: str, base_label: str) -> Callable[[Path], str]:
    """A run's val scores (quality/earlier/RUN.json), its paired difference against the run it
    was compared with, and that run's scores (BASE.json)."""

    def render(results: Path) -> str:
        q = _load(results, f"quality/earlier/{run}.json")
        other = _load(results, f"quality/earlier/{base}.json")
        rows = [_scores_row(f"{label} (`earlier/{run}`)", q), _difference_row(q),
                _scores_row(f"{base_label} (`earlier/{base}`)", other)]  # fmt: skip
        return _table(SCORES_HEAD, rows)

    return render


def _chosen(q: dict) -> dict:
    """A run's history entry (dev scores as trained and calibrated) at the epoch it chose."""
    return q["run"]["history"][q["run"]["best_epoch"] - 1]


def _epochs(q: dict) -> str:
    """A run's dev scores per epoch (as trained), their mean, calibrated mean and log-loss; the
    chosen epoch in bold, then its calibrated task scores."""
    run = q["run"]
    tasks = list(run["history"][0]["tasks"])
    rows = []
    for h in run["history"]:
        chosen = h["epoch"] == run["best_epoch"]
        loss = f"{h['dev_loss']['mean']:.4f}"
        rows.append([f"**{h['epoch']} (chosen)**" if chosen else h["epoch"],
                     *(f"{h['tasks'][t]['score']:.3f}" for t in tasks), f"{h['score']:.3f}",
                     f"{h['calibrated']['score']:.3f}", f"**{loss}**" if chosen else loss])
    best = _chosen(q)["calibrated"]["tasks"]
    rows.append([f"{run['best_epoch']}, calibrated", *(f"{best[t]:.3f}" for t in tasks),
                 "", "", ""])  # fmt: skip
    return _table(["epoch", *tasks, "dev mean", "calibrated", "dev log-loss"], rows)


def real_epochs(results: Path) -> str:
    """docs/training.md: the real run's dev scores per epoch (quality.json's run)."""
    return _epochs(_load(results, "quality.json"))


def share_epochs(results: Path) -> str:
    """docs/training.md: the run on all 18 blocks before the real one, per epoch."""
    return _epochs(_load(results, "quality/earlier/share.json"))


def share_run(results: Path) -> str:
    """docs/training.md: the run on all 18 blocks before the real one, its paired difference
    to the run it was compared with, and the best constant answers."""
    q = _load(results, "quality/earlier/share.json")
    return _table(SCORES_HEAD, [_scores_row("`earlier/share`", q), _difference_row(q),
                                _constant_row(q)])  # fmt: skip


def two_epochs(results: Path) -> str:
    """docs/training.md: the two-epoch run inside 90 minutes, per epoch."""
    return _epochs(_load(results, "quality/earlier/2ep.json"))


def block12_epochs(results: Path) -> str:
    """docs/training.md: the real run before `--head-only PARus`, per epoch."""
    return _epochs(_load(results, "quality/earlier/block12.json"))


def fixes_epochs(results: Path) -> str:
    """docs/training.md: the run with the fixes, per epoch."""
    return _epochs(_load(results, "quality/earlier/fixes.json"))


def real_train_command(results: Path) -> str:
    """The real run's training command (quality.json, its note cut off), writing runs/g270m:
    the name the README's next lines use."""
    command = _load(results, "quality.json")["run"]["command"].split("  (")[0]
    return re.sub(r" -o \S+", " -o runs/g270m", command)


def real_command(results: Path) -> str:
    """The real run's training command (quality.json), wrapped at options, in a code block with
    the conversion before it and a quantized copy benchmarked after it."""
    command = real_train_command(results)
    lines, line = [], ""
    for part in re.split(r" (?=--)", command):
        if line and len(line) + len(part) > 95:
            lines.append(line + " \\")
            line = "  "
        line += ("" if line.strip() == "" else " ") + part
    lines.append(line)
    train = "\n".join(lines).replace("MODEL_DIR", "runs/model")
    return "\n".join([
        "```",
        "mlx-rsg convert gemma-3-270m -o runs/model",
        train,
        "mlx-rsg quantize runs/g270m --recipe q8 -o runs/g270m-q8",
        "mlx-rsg bench runs/g270m runs/g270m-q8 --data ../shared/rsg",
        "```",
    ])  # fmt: skip


# the real run (--head-only PARus) and the shipped recipe, full val
PARUS_HEAD_QUANTIZE = "quality/quantize-parus-head/bench.json"
# the run before it (quality/earlier/block12) and its variants, full val: benches of the same run
# on the same units (each later one added recipes measured after the first; the fourth ran on its
# weights trained again bit for bit), each variant's speed against its own bench's float pass
REAL_QUANTIZE = ("quality/quantize/bench.json", "quality/quantize-q8gptq-mixed/bench.json",
                 "quality/quantize-rows/bench.json", "quality/quantize-committed/bench.json")
# a copy of the real run trained again with its command (its weights were gone): its own float
# pass, so its variants are measured against that copy, not the committed run
REAL_E3 = "quality/quantize-e3/bench.json"
E3_COMPOSED = "quality/quantize-e3/q8-gptq-long-e3-rows-bc-lm4.json"  # compose_copy.py's


def quantization(results: Path) -> str:
    """README: the run before the real one against its 8- and 4-bit variants on full val."""
    return _quantization_table(results, REAL_QUANTIZE)


def quantization_real(results: Path) -> str:
    """README: the real run against the shipped recipe on full val."""
    return _quantization_table(results, (PARUS_HEAD_QUANTIZE,))


def _quantization_table(results: Path, benches: tuple[str, ...]) -> str:
    """A float run against its variants on full val (bench.json, several benches of one run:
    each variant's speed against its own bench's float pass), the widest first."""
    variants = []  # (variant, its own bench's float records/s)
    for i, name in enumerate(benches):
        bench = _load(results, name)
        float_speed = bench["variants"][0]["throughput"]["examples_per_s"]
        variants += [(v, float_speed) for v in bench["variants"][1 if i else 0:]]
    # the widest first (as printed: q4's 5.006 and 4.999 are both 5.00), then the fewest flips
    variants[1:] = sorted(variants[1:], key=lambda p: (
        -round(p[0]["quantization"]["bits_per_weight"], 2), p[0]["flip_rate"]))  # fmt: skip
    rows = []
    for v, float_speed in variants:
        q = v["quantization"]
        se = (v.get("delta_se") or {}).get("total")
        speed = v["throughput"]["examples_per_s"]
        rows.append([q["recipe"] if q else "fp32", f"{q['bits_per_weight']:.2f}" if q else "32",
                     f"{v['total']:.3f}", f"{100 * v['delta']:+.2f} ± {100 * se:.2f}" if q else "",
                     f"{100 * v['flip_rate']:.2f} %", round(v["size_bytes"]["total"] / 2**20),
                     f"{speed:.2f} ({speed / float_speed:.2f}x)"])  # fmt: skip
    return _table(["weights", "bits / weight", "val total", "Δ fp32 (points) ± SE",
                   "decisions changed", "size MB",
                   "records/s, batch 16 (vs fp32 in the same bench)"], rows)  # fmt: skip


def speed(results: Path) -> str:
    """MLX against PyTorch on the same machine, each a ratio measured in one run."""
    inference = _load(results, "inference.json")["runs"]
    train = _load(results, "train.json")["runs"]
    scoring = _load(results, "scoring.json")
    rows = [
        ["classification forward, batch 8 x 128 (`bench_inference.py`)",
         f"{inference['mlx-predict']['vs_torch']:.2f}x", "torch 2 threads"],
        ["training, freeze 9 of 18 blocks, 3 epochs (`bench_train.py`)",
         f"{train['mlx']['vs_torch']:.2f}x", "torch 2 threads"],
        [f"scoring {_share(scoring['every'])} end to end (`bench_scoring.py`)",
         f"{scoring['speedup']:.2f}x", "transformers, same prompts and weights; "
         + ("every decision the same" if scoring["decisions_agree"] else "decisions differ")],
    ]  # fmt: skip
    return _table(["measured", "MLX vs reference", "reference"], rows)


def _share(every: int) -> str:
    return "all of val" if every == 1 else f"1 in {every} val records"


def bench_inference(results: Path) -> str:
    """docs/benchmarks.md: bench_inference.py's forwards and fast paths."""
    d = _load(results, "inference.json")
    rows = [[name, f"{r['examples_per_s']:.2f}", f"{r['seconds_per_batch']:.3f}",
             f"{r['gflops_per_s']:.1f}", f"{100 * r['mfu']:.0f}%", f"{r.get('vs_torch', 1.0):.2f}x"]
            for name, r in d["runs"].items()]  # fmt: skip
    paths = [[name, f"{p['stock_ms']:.1f}", f"{p['fast_ms']:.1f}", f"{p['speedup']:.2f}x",
              "yes" if p["used"] else "no"] for name, p in d["fast_paths"].items()]  # fmt: skip
    return (_table(["forward", "ex/s", "s/batch", "GFLOP/s", "MFU", "vs torch"], rows) + "\n\n"
            + _table(["fast path (vs stock MLX, this run)", "stock ms", "fast ms",
                      "fast vs stock", "used"], paths))  # fmt: skip


def bench_train(results: Path) -> str:
    """docs/benchmarks.md: bench_train.py's loops."""
    d = _load(results, "train.json")
    rows = [[name, f"{r['examples_per_s']:.2f}", f"{r['seconds']:.1f}",
             " / ".join(f"{s:.1f}" for s in r["epoch_seconds"]), f"{r['vs_torch']:.2f}x"]
            for name, r in d["runs"].items()]  # fmt: skip
    return _table(["loop", "ex/s", "total s", "s per epoch", "vs torch"], rows)



def _script_table(script: str, name: str, function: str = "table") -> Callable[[Path], str]:
    """The table `function` of benchmarks/SCRIPT.py makes of its result file `name` (scripts
    import results_io beside them)."""

    def table(results: Path) -> str:
        return getattr(_script(script), function)(_load(results, name))

    return table


def _script(script: str):
    """benchmarks/SCRIPT.py as a module."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(script)
    finally:
        sys.path.pop(0)


QUANTIZE_LEVERS = "quality/quantize-1ep/bench.json"
QUANTIZE_DWQ = "quality/quantize-1ep-dwq/bench.json"
QUANTIZE_GPTQ_DWQ = ("quality/quantize-1ep-gptq-dwq/bench.json",
                     "quality/quantize-1ep-gptq-dwq-lr3e-8/bench.json")
QUANTIZE_HEADS = ("quality/quantize-1ep-sens/bench.json", "quality/quantize-1ep-sens64/bench.json",
                  "quality/quantize-1ep-t025/bench.json")
SENSITIVITY = "quality/quantize-1ep/distill/sens16-lr1e-7.json"


def one_way_share(directions: dict[str, dict[str, int]]) -> float:
    """The share of a variant's flips that is net movement one way: per task and answer pair,
    |a->b - b->a|, summed, over all flips (0: as many each way; 1: all one way)."""
    net = total = 0
    for moves in directions.values():
        total += sum(moves.values())
        pairs: dict[tuple, int] = {}
        for key, n in moves.items():
            a, b = key.split("->")
            pair = (a, b) if a < b else (b, a)
            pairs[pair] = pairs.get(pair, 0) + (n if pair == (a, b) else -n)
        net += sum(abs(v) for v in pairs.values())
    return net / total if total else 0.0


def quantize_levers(results: Path) -> str:
    """docs/quantization.md: the cheap 4-bit levers on one run, side by side (bench.json)."""
    return _levers_table(_load(results, QUANTIZE_LEVERS))


def quantize_dwq(results: Path) -> str:
    """docs/quantization.md: q4-dwq on the same run and units as the levers."""
    return _levers_table(_load(results, QUANTIZE_DWQ))


def quantize_gptq_dwq(results: Path) -> str:
    """docs/quantization.md: distillation from GPTQ at two step sizes, on the same run and units
    as the levers."""
    return _levers_table(_merged(results, QUANTIZE_GPTQ_DWQ))


def quantize_heads(results: Path) -> str:
    """docs/quantization.md: sensitivity-chosen 8-bit modules and distillation at a low
    temperature, on the same run and units as the levers."""
    return _levers_table(_merged(results, QUANTIZE_HEADS))


def _merged(results: Path, names: tuple[str, ...]) -> dict:
    """Benches of the same baseline on the same units (one per recipe or two) as one."""
    return _script("quantize_chart").merged([_load(results, name) for name in names])


def sensitivity_choice(results: Path) -> str:
    """docs/quantization.md: which modules `[sensitivity]` kept at 8 bits on the one-epoch run,
    by kind (from the quantization's manifest)."""
    sens = json.loads((results / SENSITIVITY).read_text())["sensitivity"]
    kinds: dict[str, dict] = {}
    for path, value in sens["sensitivity"].items():
        kind = kinds.setdefault(path.rsplit(".", 1)[-1], {"raised": 0, "values": [],
                                                          "params": 0})  # fmt: skip
        kind["raised"] += path in sens["raised"]
        kind["values"].append(value)
        kind["params"] += sens["parameters"][path] if path in sens["raised"] else 0
    rows = [[k, f"{v['raised']} of {len(v['values'])}", f"{max(v['values']):.3f}",
             f"{sorted(v['values'])[len(v['values']) // 2]:.3f}", f"{v['params'] / 1e6:.1f}"]
            for k, v in sorted(kinds.items(), key=lambda kv: -max(kv[1]["values"]))]  # fmt: skip
    return (_table(["module", "kept at 8 bits", "largest sensitivity", "median",
                    "8-bit parameters (M)"], rows)  # fmt: skip
            + f"\n\n{sens['units_per_task']} train units per task, budget {sens['budget']} bits "
            f"per weight, {sens['seconds'] / 60:.1f} min; sensitivity: KL increase per million "
            "parameters, first order.")


def _levers_table(bench: dict) -> str:
    tasks = [t for t in TASKS if t in bench["tasks"]]
    rows = []
    for v in bench["variants"][1:]:
        q = v["quantization"]
        se = v["delta_se"]["total"]
        rows.append([q["recipe"], f"{q['bits_per_weight']:.2f}",
                     f"{100 * v['delta']:+.2f} ± {100 * se:.2f}",
                     f"{100 * v['flip_rate']:.1f} %",
                     f"{100 * one_way_share(v['flip_directions']):.0f} %",
                     *(f"{100 * v['flips'][t]:.1f}" for t in tasks),
                     f"{v['throughput']['examples_per_s']:.2f}"])  # fmt: skip
    units = sum(t["units"] for t in bench["tasks"].values())
    table = _table(["recipe", "bits / weight", "Δ total (points) ± SE", "decisions changed",
                    "one way", *(f"{t} %" for t in tasks), "records/s"], rows)  # fmt: skip
    return (f"{table}\n\n{len(tasks)} tasks, {units} val units drawn whole with seed "
            f"{bench['config']['seed']} (`--max-per-task {bench['config']['max_per_task']}`); "
            f"baseline `{bench['baseline']}` scores {bench['variants'][0]['total']:.3f} on them "
            f"at {bench['variants'][0]['throughput']['examples_per_s']:.2f} records/s (batch "
            f"{bench['config']['batch_size']}).")


QLORA_BENCH = "quality/qlora-240/bench.json"
QLORA_LORA_BENCH = "quality/qlora-240/lora/bench.json"  # the float LoRA run and its q4 alone


def qlora_bench(results: Path) -> str:
    """docs/quantization.md: 4-bit by training on the 4-bit base against rounding a float run
    after training, all against the float freeze run on the same val records."""
    bench = _load(results, QLORA_BENCH)
    rows = []
    for v in bench["variants"]:
        q = v.get("quantization")
        se = v.get("delta_se") or {}
        bits = "32" if not q else (f"{q['bits_per_weight']:.2f}" if q.get("bits_per_weight")
                                   else f"{q['bits']}-bit")  # fmt: skip
        rows.append([f"`{Path(v['name']).name}`", bits,
                     f"{v['total']:.3f}",
                     f"{100 * v['delta']:+.2f} ± {100 * se['total']:.2f}" if se else "",
                     f"{100 * v['flip_rate']:.1f} %" if se else "",
                     f"{v['size_bytes']['total'] / 1e6:.0f}",
                     f"{v['throughput']['examples_per_s']:.2f}"])  # fmt: skip
    units = sum(t["units"] for t in bench["tasks"].values())
    table = _table(["run", "bits / weight", "val total", "Δ (points) ± SE",
                    "decisions unlike the baseline's", "size MB", "records/s"], rows)  # fmt: skip
    own = _load(results, QLORA_LORA_BENCH)["variants"][1]  # against its own float run
    return (f"{table}\n\n{len(bench['tasks'])} tasks, {units} val units (`--max-per-task "
            f"{bench['config']['max_per_task']}`, seed {bench['config']['seed']}), batch "
            f"{bench['config']['batch_size']}; baseline the first row. `{own['name']}` against "
            f"its own float run (`{QLORA_LORA_BENCH.rsplit('/', 1)[0]}/`): "
            f"{100 * own['delta']:+.2f} ± {100 * own['delta_se']['total']:.2f} points, "
            f"{100 * own['flip_rate']:.1f} % of its decisions changed.")


DISTILL_RUNS = "quality/quantize-1ep/distill"



def distill_runs(results: Path) -> str:
    """docs/quantization.md: `[distill]` on the one-epoch run, from each quantization's manifest
    (the `distill` entry of its mlx_rsg.json, kept under results/)."""
    rows = []
    for path in sorted((results / DISTILL_RUNS).glob("*.json")):
        manifest = json.loads(path.read_text())
        d = manifest["distill"]
        held = [e["all"] for e in d["kl"]["holdout"]["by_epoch"]]
        train = d["kl"]["train"]
        start = "GPTQ" if manifest.get("method") == "gptq" else "round-to-nearest"
        if manifest.get("sensitivity"):
            start += f", {len(manifest['sensitivity']['raised'])} modules at 8 bits"
        rows.append([start, f"{d['lr']:.0e}", f"{d['temperature']:g}", d["units_per_task"],
                     d["epochs"], d["steps"],
                     f"{held[0]:.5f}", ", ".join(f"{k:.5f}" for k in held[1:]),
                     d["kept_epoch"] or "none (as rounded)",
                     f"{train['before']['all']:.5f} → {train['after']['all']:.5f}",
                     f"{d['seconds'] / 60:.1f}"])  # fmt: skip
    return _table(["from", "lr", "T", "units per task", "epochs", "steps", "held-out KL, rounded",
                   "held-out KL after each epoch", "epoch kept", "train KL", "minutes"],
                  rows)  # fmt: skip


def rwsd_substitution(results: Path) -> str:
    """docs/training.md: RWSD decided by the base model's likelihood after each candidate."""
    rows = []
    for split, r in _load(results, "rwsd_substitution.json")["splits"].items():
        partial, full = r["partial"], r["full"]
        rows.append([split, r["records"], f"{r['constant_false']:.3f}",
                     f"{partial['pairs_right']} of {partial['pairs']} "
                     f"({partial['pair_accuracy']:.3f} ± {partial['pair_se']:.3f})",
                     f"{partial['accuracy_group_decoded']:.3f}",
                     f"{full['accuracy_group_decoded']:.3f}"])  # fmt: skip
    return _table(["split", "records", "constant False", "pairs ranked right (partial)",
                   "records right, decided per group (partial)", "the same, full sentence"],
                  rows)  # fmt: skip


# issue 26's levers measured by ablation.py: (lever, result file, with it, without it, kept)
ABLATION_LEVERS = [
    ("label words, heads (`--prompt answer --head-init label-words`)", "label_words.json",
     "heads-words", "heads", "no"),
    ("label words, top 4 blocks trained", "label_words.json", "freeze-top4-words", "freeze-top4",
     "no"),
    ("the first 12 blocks (`--feature-layer 12`)", "ablation_blocks.json", "freeze-top4-block12",
     "freeze-top4", "yes"),
    ("PARus mirrored (`--augment PARus`), 3 seeds", "parus_mirror.json", "parus-block12-mirror",
     "parus-block12", "no"),
    ("the quickstart: `freeze` 1 epoch against its `heads`", "ablation_quickstart.json",
     "qs-freeze-block10-1ep", "qs-heads", "yes (quickstart)"),
]  # fmt: skip


def levers(results: Path) -> str:
    """docs/training.md: issue 26's levers in one table, each against the same run without it,
    from the result files that measured them."""
    rows = _exact_levers(results)
    for lever, name, on, off, kept in ABLATION_LEVERS:
        m = _script("ablation").config_means(_load(results, name))
        a, b = m[on], m[off]
        rows.append([lever, f"`{name}`", f"{a['minutes']:.1f} vs {b['minutes']:.1f} min",
                     f"{a['dev_calibrated']:.3f} vs {b['dev_calibrated']:.3f}",
                     f"{a['val']:.3f} vs {b['val']:.3f}", kept])  # fmt: skip
    rows += (_cv_levers(results) + _block8_lever(results) + _real_run_levers(results)
             + _zero_shot_levers(results))  # fmt: skip
    return _table(["lever", "measured in", "cost (with vs without)", "dev (with vs without)",
                   "val once (with vs without)", "in the recipe"], rows)  # fmt: skip


# PARus's levers cross-validated (parus_cv.json), each against the real run's shape
CV_LEVERS = [
    ("PARus: a head alone on block 12's features, 5-fold CV", "parus-block12-heads"),
    ("PARus: trained blocks at lr 1e-5, 5-fold CV", "parus-block12-lr1e-5"),
    ("PARus: the top 4 of all 18 blocks, 5-fold CV", "parus-block18"),
]


def _held_out(cv: dict) -> float:
    """A cross-validated configuration's pooled held-out score at the epoch it chose."""
    return _script("ablation").chosen_epoch(cv)["score"]


def _cv_levers(results: Path) -> list[list]:
    """Levers measured by cross-validation: the pooled held-out score at the epoch the pooled
    log-loss chose, and the folds' mean val."""
    cv = _load(results, "parus_cv.json")["cross_validation"]
    base = cv["parus-block12"]
    return [[lever, "`parus_cv.json`", f"{cv[on]['minutes']:.1f} vs {base['minutes']:.1f} min",
             f"{_held_out(cv[on]):.3f} vs {_held_out(base):.3f} (train's 400, held out)",
             f"{cv[on]['val']:.3f} vs {base['val']:.3f} (fold mean)", "no"]
            for lever, on in CV_LEVERS]  # fmt: skip


def _block8_lever(results: Path) -> list[list]:
    """PARus's head on the base model's block 8 against one on the real run's blocks, both
    cross-validated at three seeds: means over the seeds."""
    cvs = [_load(results, name)["cross_validation"] for name in PARUS_CV_BLOCK8.values()]

    def mean(name: str, f) -> float:
        return sum(f(cv[name]) for cv in cvs) / len(cvs)

    on, off = "parus-block8-heads", "parus-trained12-heads"
    return [["PARus: a head on the base model's block 8 (the frozen prefix), 5-fold CV x 3 seeds",
             "`parus_cv_block8_seed*.json`",
             f"{mean(on, lambda c: c['minutes']):.1f} vs {mean(off, lambda c: c['minutes']):.1f} "
             "min", f"{mean(on, _held_out):.3f} vs {mean(off, _held_out):.3f} (train's 400, held "
             "out; against a head on the real run's blocks)",
             f"{mean(on, lambda c: c['val']):.3f} vs {mean(off, lambda c: c['val']):.3f} "
             "(fold mean)", "no"]]  # fmt: skip


PARUS_CV_SEEDS = {0: "parus_cv.json", 1: "parus_cv_seed1.json", 2: "parus_cv_seed2.json"}
PARUS_CV_BLOCK8 = {s: f"parus_cv_block8_seed{s}.json" for s in (0, 1, 2)}


def _cv_seeds(results: Path, files: dict[int, str], configs: dict[str, tuple[str, str]],
              with_val: bool = False) -> str:  # fmt: skip
    """Configurations cross-validated at several seeds (each its own partition into folds): each
    one's pooled held-out accuracy per seed (and its folds' mean val), each but the first minus
    the first (paired), and those differences' means with their standard errors over the
    seeds. configs: name -> (column label, short label), the first the one the others are
    paired against."""
    names, labels = list(configs), [label for label, _ in configs.values()]
    rows, diffs = [], {n: [] for n in names[1:]}
    for seed, name in files.items():
        r = _load(results, name)
        cv, row = r["cross_validation"], [seed]
        for n in names:
            val = f" (val {cv[n]['val']:.3f})" if with_val else ""
            row.append(f"{_held_out(cv[n]):.3f}{val}")
        for n in names[1:]:
            p = r["paired"][n]["mean"]
            diffs[n].append(p["difference"])
            row.append(f"{p['difference']:+.3f} ± {p['se']:.3f}")
        rows.append(row)
    last = ["mean", *[""] * len(names)]
    for d in diffs.values():
        mean = sum(d) / len(d)
        se = (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5
        last.append(f"{mean:+.3f} ± {se:.3f} (over the seeds)")
    short = [s for _, s in configs.values()]
    return _table(["seed", *labels, *(f"{x} − {short[0]} (paired)" for x in short[1:])],
                  [*rows, last])  # fmt: skip


def parus_cv_seeds(results: Path) -> str:
    """docs/training.md: the real run's shape and the head alone cross-validated at three
    seeds."""
    return _cv_seeds(results, PARUS_CV_SEEDS,
                     {"parus-block12": ("the real run's shape", "shape"),
                      "parus-block12-heads": ("a head alone", "head alone")})  # fmt: skip


def parus_cv_block8(results: Path) -> str:
    """docs/training.md: PARus's head on the real run's trained blocks against heads on the base
    model's block 8 and block 12, cross-validated at three seeds."""
    return _cv_seeds(results, PARUS_CV_BLOCK8,
                     {"parus-trained12-heads": ("on the real run's blocks", "real run's"),
                      "parus-block8-heads": ("on base block 8", "block 8"),
                      "parus-block12-heads": ("on base block 12", "block 12")},
                     with_val=True)  # fmt: skip


def _exact_levers(results: Path) -> list[list]:
    """Levers that change no decision: shared prefixes in training and in scoring."""
    modes = _load(results, "shared_train.json")["modes"]
    whole, shared = modes["records together, whole"], modes["records together, shared"]
    scoring = _load(results, "scoring.json")
    same = "the same decisions" if scoring["decisions_agree"] else "decisions differ"
    return [
        ["shared prefixes in training (exact)", "`shared_train.json`",
         f"{shared['seconds']:.0f} vs {whole['seconds']:.0f} s per MuSeRC epoch "
         f"({whole['seconds'] / shared['seconds']:.2f}x)",
         f"mean loss {shared['mean_loss']:.4f} vs {whole['mean_loss']:.4f}", "", "yes"],
        ["prefix sharing in scoring, against transformers", "`scoring.json`",
         f"{scoring['seconds']['mlx']:.0f} vs {scoring['seconds']['torch']:.0f} s "
         f"({scoring['speedup']:.2f}x)", same, same, "yes"],
    ]  # fmt: skip


def _real_run_levers(results: Path) -> list[list]:
    """Levers measured as a real run against the run before it: the same command without the
    lever (training minutes are each run's own machine's)."""
    run, before = _load(results, "quality.json"), _load(results, "quality/earlier/block12.json")
    a, b = _chosen(run), _chosen(before)
    return [["PARus's head alone in the real run (`--head-only PARus`)", "`quality.json`",
             f"{run['run']['train_seconds'] / 60:.1f} vs "
             f"{before['run']['train_seconds'] / 60:.1f} min training (Zen 4 vs Zen 3)",
             f"{a['calibrated']['score']:.3f} vs {b['calibrated']['score']:.3f} "
             f"(PARus {a['tasks']['PARus']['score']:.3f} vs {b['tasks']['PARus']['score']:.3f})",
             f"{run['total']:.3f} vs {before['total']:.3f} (PARus "
             f"{run['tasks']['PARus']['score']:.3f} vs {before['tasks']['PARus']['score']:.3f})",
             "yes"]]  # fmt: skip


def _zero_shot_levers(results: Path) -> list[list]:
    """Levers scored without training, where train is the dev split: nothing learned from it."""
    parus = _load(results, "parus_likelihood.json")["splits"]["train"]
    rwsd = _load(results, "rwsd_substitution.json")["splits"]
    best = max(parus["sum"], parus["mean"], parus["pmi"])
    return [
        ["PARus by each choice's likelihood", "`parus_likelihood.json`",
         f"{parus['seconds'] / 60:.1f} min on train", f"train {best:.3f} (best of three) vs "
         f"{parus['constant']:.3f} constant", "not scored", "no"],
        ["RWSD by substitution", "`rwsd_substitution.json`",
         f"{rwsd['val']['seconds'] / 60:.1f} min on val",
         f"train {rwsd['train']['partial']['accuracy_group_decoded']:.3f} vs "
         f"{rwsd['train']['constant_false']:.3f} constant",
         f"{rwsd['val']['partial']['accuracy_group_decoded']:.3f} vs "
         f"{rwsd['val']['constant_false']:.3f} constant", "yes (`--rwsd-decision dev`)"],
    ]  # fmt: skip


def _bench_table(results: Path, name: str) -> str:
    """bench's own first table (bench.md's), from its bench.json."""
    from mlx_rsg.bench.report import write_markdown

    return write_markdown(_load(results, name)).split("\n\n")[0]


def quantize_real(results: Path) -> str:
    """docs/quantization.md: bench's own table for the real run and its variants."""
    return _bench_table(results, REAL_QUANTIZE[0])


def embedding_rows(results: Path) -> str:
    """docs/quantization.md: the 4-bit run's embedding rows swapped (benchmarks/embedding_rows.py),
    below the run as bench measured it (its flip rates times the same decisions)."""
    probe = _load(results, "embedding_rows.json")
    bench = _load(results, REAL_QUANTIZE[0])
    run = next(v for v in bench["variants"] if v["name"] == Path(probe["run"]).name)
    sizes = {t: n for t, (_, n) in next(iter(probe["modes"].values()))["flips"].items()}
    flips = {t: [round(run["flips"][t] * n), n] for t, n in sizes.items()}
    benched = {"raised": 0, "extra_mb": 0.0, "flips": flips,
               "total": [sum(k for k, _ in flips.values()), sum(sizes.values())]}  # fmt: skip
    return _script("embedding_rows").table({**probe, "modes": {"as benched": benched,
                                                               **probe["modes"]}})  # fmt: skip


def quantize_real_more(results: Path) -> str:
    """docs/quantization.md: the second bench of the real run, its float pass included."""
    return _bench_table(results, REAL_QUANTIZE[1])


def quantize_real_rows(results: Path) -> str:
    """docs/quantization.md: the third bench of the real run, the embedding rows stored."""
    return _bench_table(results, REAL_QUANTIZE[2])


def quantize_e3_brief(results: Path) -> str:
    """README: a copy of the real run trained again and its copies, every Linear at 8 bits
    against the rows recipe in one bench, and the shipped recipe's copy (its RWSD language
    model's blocks at 4 bits) composed from that bench and a bench of RWSD alone
    (benchmarks/compose_copy.py), whose backbone is the benched copy's."""
    bench = _load(results, REAL_E3)
    composed = _load(results, E3_COMPOSED)
    kept = next(v for v in bench["variants"] if v["name"] == composed["composed"]["variant"])
    rows = []
    for v in [*bench["variants"], {**composed, "quantization": kept["quantization"]}]:
        q, se = v["quantization"], v.get("delta_se")
        n = round(v["flips"]["RWSD"] * bench["tasks"]["RWSD"]["records"]) if q else 0
        rows.append([f"`{v['name']}`", f"{q['bits_per_weight']:.2f}" if q else "32",
                     f"{v['scores']['RWSD']['score']:.3f}" + (f" ({n} changed)" if q else ""),
                     f"{v['total']:.3f}",
                     f"{100 * v['delta']:+.2f} ± {100 * se['total']:.2f}" if q else "",
                     f"{100 * v['flip_rate']:.2f} %",
                     round(v["size_bytes"]["total"] / 2**20)])  # fmt: skip
    return _table(["copy", "bits / weight (backbone)", "RWSD", "val total",
                   "Δ fp32 (points) ± SE", "decisions changed", "size MB"], rows)  # fmt: skip


def quantize_real_e3(results: Path) -> str:
    """docs/quantization.md: bench's own table for the retrained copy, then each copy in brief."""
    return _bench_table(results, REAL_E3) + "\n\n" + quantize_e3_brief(results)


def quantize_e3_direct(results: Path) -> str:
    """docs/quantization.md: bench's own table for the shipped copy, benched whole."""
    return _bench_table(results, "quality/quantize-e3/direct/bench.json")


def quantize_committed(results: Path) -> str:
    """docs/quantization.md: bench's own table for the shipped recipe on the committed run,
    trained again with its machine's kernels."""
    return _bench_table(results, REAL_QUANTIZE[3])


def quantize_parus_head(results: Path) -> str:
    """docs/quantization.md: bench's own table for the shipped recipe on the real run."""
    return _bench_table(results, PARUS_HEAD_QUANTIZE)


def quantize_1000(results: Path) -> str:
    """docs/quantization.md: bench's own table for the run before the fixes and its variants."""
    return _bench_table(results, "quality/earlier/quantize-1000/bench.json")




QUICKSTART = ROOT / "mlx_rsg" / "quickstart_measured.json"  # the quickstart's own timing file


def quickstart_steps(results: Path) -> str:
    """docs/cli.md: the committed quickstart's minutes per step, where it ran."""
    q = json.loads(QUICKSTART.read_text())
    rows = [[step, f"{m:.1f}", f"{100 * m / q['minutes']:.0f} %"] for step, m in q["steps"].items()]
    m = q["machine"]
    return (f"{_table(['step', 'minutes', 'share'], rows)}\n\n{q['minutes']:.1f} min in all on "
            f"{m['cpu']}, {m['cores']} cores, {m['blas'].split(':')[0]}, MLX {m['mlx']}.")


def quickstart_minutes(results: Path) -> str:
    """README: the committed quickstart's wall time, in one line."""
    q = json.loads(QUICKSTART.read_text())
    return (f"{q['minutes']:.1f} min on a {q['machine']['cores']}-core Linux box "
            f"({q['machine']['cpu']}).")


def quickstart_output(results: Path) -> str:
    """docs/cli.md: the main table that committed quickstart printed (bench's, before its notes)."""
    return json.loads(QUICKSTART.read_text())["table"].split("\n\n")[0]


TABLES: dict[str, Callable[[Path], str]] = {
    "quality": quality,
    "real-command": real_command,
    "quantization": quantization,
    "speed": speed,
    "bench-inference": bench_inference,
    "bench-train": bench_train,
    "scaling": _script_table("scaling_table", "scaling.json"),
    "curve": _script_table("curve", "curve.json"),
    "quantize-levers": quantize_levers,
    "quantize-dwq": quantize_dwq,
    "quantize-gptq-dwq": quantize_gptq_dwq,
    "quantize-heads": quantize_heads,
    "sensitivity-choice": sensitivity_choice,
    "distill-lr": _script_table("distill_lr", "distill_lr.json"),
    "distill-runs": distill_runs,
    "precision": _script_table("bench_precision", "precision.json"),
    "precision-real": _script_table("bench_precision", "precision_real.json"),
    "real-run": real_run,
    "real-epochs": real_epochs,
    "block12-run": block12_run,
    "block12-epochs": block12_epochs,
    "earlier-runs": earlier_runs,
    "fixes-epochs": fixes_epochs,
    "2ep-epochs": two_epochs,
    "share-epochs": share_epochs,
    "share-run": share_run,
    "quantize-real": quantize_real,
    "quantize-real-more": quantize_real_more,
    "embedding-rows": embedding_rows,
    "quantize-real-rows": quantize_real_rows,
    "quantize-real-e3": quantize_real_e3,
    "quantize-e3-brief": quantize_e3_brief,
    "quantize-e3-direct": quantize_e3_direct,
    "quantize-committed": quantize_committed,
    "quantize-parus-head": quantize_parus_head,
    "quantization-real": quantization_real,
    "rwsd-substitution": rwsd_substitution,
    "levers": levers,
    "quantize-1000": quantize_1000,
    "quickstart-steps": quickstart_steps,
    "quickstart-output": quickstart_output,
    "quickstart-minutes": quickstart_minutes,
    "blas": _script_table("bench_blas", "blas.json"),
    "shared-prefix": _script_table("bench_shared_prefix", "shared_prefix.json"),
    "shared-train": _script_table("bench_shared_train", "shared_train.json"),
    "scoring": _script_table("bench_scoring", "scoring.json"),
    "serve": _script_table("bench_serve", "serve.json"),
    "rwsd-scoring": _script_table("bench_rwsd_scoring", "rwsd_scoring.json"),
    "distributed": _script_table("bench_distributed", "distributed.json"),
    "fast-quant": _script_table("bench_quantize", "quantize.json", "summary"),
    "ablation": _script_table("ablation", "ablation.json"),
    "ablation-sweep": _script_table("ablation", "ablation_sweep.json"),
    "label-words": _script_table("ablation", "label_words.json"),
    "qlora": _script_table("ablation", "qlora.json"),
    "ablation-blocks": _script_table("ablation", "ablation_blocks.json"),
    "ablation-quickstart": _script_table("ablation", "ablation_quickstart.json"),
    "parus-mirror": _script_table("ablation", "parus_mirror.json"),
    "parus-cv": _script_table("ablation", "parus_cv.json", "fold_table"),
    "parus-cv-seeds": parus_cv_seeds,
    "parus-cv-block8": parus_cv_block8,
    "qlora-bench": qlora_bench,
    "q4lora-half": _beside("q4lora-half", "QLoRA on q4", "half", "float `freeze`"),
    "block12-half": _beside("block12-half", "the first 12 blocks", "half", "all 18 blocks"),
    "block12-quarter": _beside("block12-quarter", "half the units", "block12-half",
                               "`block12-half`'s units"),
    "row-chunks": _script_table("bench_row_chunks", "row_chunks.json"),
    "dev-fixes-leakage": _script_table("dev_fixes", "dev_fixes.json", "leakage_table"),
    "dev-fixes-lengths": _script_table("dev_fixes", "dev_fixes.json", "lengths_table"),
    "dev-fixes-decisions": _script_table("dev_fixes", "dev_fixes.json", "decisions_table"),
    "dev-fixes-span": _script_table("dev_fixes", "dev_fixes.json", "span_table"),
}
MARKED = re.compile(r"(<!-- render:([\w-]+) -->\n)(.*?)(<!-- /render:\2 -->)", re.S)


def render(text: str, results: Path = RESULTS) -> str:
    """`text` with every marked table replaced by its rendering."""

    def fill(m: re.Match) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise KeyError(f"no table named {name!r} (known: {', '.join(TABLES)})")
        return f"{m.group(1)}{TABLES[name](results)}\n{m.group(4)}"

    return MARKED.sub(fill, text)


def marked(text: str) -> list[str]:
    """The names of the tables marked in `text`."""
    return [m.group(2) for m in MARKED.finditer(text)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report tables that differ")
    args = ap.parse_args()
    stale = []
    for path in DOCS:
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(f"{path}: {'differs from' if args.check else 'rendered from'} benchmarks/results")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
