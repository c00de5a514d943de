"""A quantized copy's val decisions put together from two benches of the same float run, where
the copies differ only in what some tasks read.

    python benchmarks/compose_copy.py --bench results/quality/quantize-e3 \
        --variant q8-gptq-long-e3-rows-bc --from results/quality/quantize-e3/rwsd-lm4 \
        --data ../shared/rsg --name q8-gptq-long-e3-rows-bc-lm4

Why: a recipe's `[substitution]` width changes only the RWSD language model's own blocks, so two
copies that differ in it hold the same backbone, byte for byte, and decide every other task alike.
Instead of a second full bench (~40 min on 2 cores), the tasks of the `--from` bench (RWSD alone,
its float run again) replace the `--variant`'s. The float decisions of those tasks must be the
same in both benches (the same run), or nothing is written. Then the copy is measured as bench
measures a variant, with bench's own functions on the zips: scores and total, Δ and its
paired-bootstrap SE, flips per task and by direction (`against_baseline`; not by margin, which
needs logits), and the files it would store. Writes BENCH/NAME.json and
BENCH/submissions/NAME.zip; nothing here runs a model.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from quality import val_records


def compose(bench_dir: Path, variant: str, from_dir: Path, data: Path, name: str) -> dict:
    """The composed copy's measurements (bench's variant fields that need no model run)."""
    from mlx_rsg.bench.compare import against_baseline, metrics
    from mlx_rsg.submission import read_submission, write_submission
    from mlx_rsg.tasks import total_score

    bench, other = _bench(bench_dir), _bench(from_dir)
    names = [v["name"] for v in bench["variants"][1:]]
    if variant not in names:
        raise SystemExit(f"{bench_dir}/bench.json: no variant {variant!r} (it has "
                         f"{', '.join(names) or 'none'})")  # fmt: skip
    if len(other["variants"]) != 2:
        raise SystemExit(f"{from_dir}/bench.json: {len(other['variants']) - 1} variants; the "
                         "copy takes its tasks from exactly one")  # fmt: skip
    row = bench["variants"][1:][names.index(variant)]
    base = read_submission(bench_dir / bench["variants"][0]["submission"])
    preds = read_submission(bench_dir / row["submission"])
    other_base, other_copy = (read_submission(from_dir / v["submission"])
                              for v in other["variants"])  # fmt: skip
    for task in other["tasks"]:
        if other_base[task] != base[task]:
            raise SystemExit(f"{from_dir}: its float run decides {task} unlike {bench_dir}'s")
        preds[task] = other_copy[task]
    records = {t: val_records(data, t) for t in base}
    scores = {t: metrics(t, records[t], preds[t]) for t in records}
    base_total = bench["variants"][0]["total"]
    total = total_score({t: {k: v for k, v in s.items() if k != "score"}
                         for t, s in scores.items()})  # fmt: skip
    submission = Path("submissions") / f"{name}.zip"
    write_submission(bench_dir / submission, {t: (records[t], preds[t]) for t in records})
    return {
        "name": name,
        "baseline": bench["baseline"],
        "composed": {"variant": variant, "tasks_from": {t: os.path.relpath(from_dir, bench_dir)
                                                        for t in other["tasks"]}},  # fmt: skip
        "scores": scores,
        "total": total,
        "delta": total - base_total,
        **against_baseline(records, preds, base),
        # the kept variant's files, the other's language model blocks: what the copy stores
        "size_bytes": _sizes(row["size_bytes"], other["variants"][1]["size_bytes"]),
        "submission": str(submission),
    }


def _bench(bench_dir: Path) -> dict:
    """DIR/bench.json, or one line saying why not."""
    path = bench_dir / "bench.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: not a readable bench result ({e})") from None


def _sizes(kept: dict, other: dict) -> dict:
    out = {**kept, "substitution": other.get("substitution", 0)}
    out["total"] = sum(v for k, v in out.items() if k != "total")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, required=True, help="the full bench's directory")
    ap.add_argument("--variant", required=True, help="its variant whose other tasks are kept")
    ap.add_argument("--from", dest="from_dir", type=Path, required=True,
                    help="a bench of the same float run whose variant replaces those tasks")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--name", required=True, help="the composed copy's name")
    args = ap.parse_args(argv)
    out = compose(args.bench, args.variant, args.from_dir, args.data, args.name)
    (args.bench / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{args.name}: total {out['total']:.4f} (Δ {100 * out['delta']:+.2f} ± "
          f"{100 * out['delta_se']['total']:.2f} points), {100 * out['flip_rate']:.2f} % of "
          "decisions changed")
    return out


if __name__ == "__main__":
    main()
