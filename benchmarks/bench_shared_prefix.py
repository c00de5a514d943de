"""Shared prefixes vs every unit run whole: val prediction of one task on the real model.

    python benchmarks/bench_shared_prefix.py --model MODEL_DIR --data ../shared/rsg
    python benchmarks/bench_shared_prefix.py --model MODEL_DIR --data ../shared/rsg \
        --task RUSSE --records 400 --max-len 160

A MuSeRC passage is asked ~24 answers about, a RUSSE word-in-sentence is paired with several
second sentences; `predict` runs such a shared prefix once and each unit's own tokens against its
keys and values (`mlx_rsg.model.shared_prefix`). This scores the first --records val records of
--task both ways with the same classifier (random heads on the whole backbone: the forward is
what is timed), at --max-len tokens, alternately, best of --repeats, and reports units/s, the
ratio, the largest logit difference and whether every decision agrees.

Writes benchmarks/results/shared_prefix.json (MuSeRC) or shared_prefix_TASK.json and prints a
table.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a converted model directory")
    ap.add_argument("--data", type=Path, required=True, help="RSG data directory")
    ap.add_argument("--task", default="MuSeRC")
    ap.add_argument("--records", type=int, default=8, help="val records (MuSeRC: paragraphs)")
    ap.add_argument("--max-len", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--min-shared", type=int, default=None,
                    help="shared tokens a group needs (default: MIN_SHARED, 64)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    suffix = "" if args.task == "MuSeRC" else f"_{args.task.lower()}"
    args.out = args.out or HERE / "results" / f"shared_prefix{suffix}.json"

    import mlx_rsg  # noqa: F401, I001  (first: loads the fast BLAS before mlx)
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_map

    from mlx_rsg.accel import blas
    from mlx_rsg.data import load_split
    from mlx_rsg.data.info import token_cost
    from mlx_rsg.model import shared_prefix
    from mlx_rsg.model.backbone import load_backbone, load_tokenizer
    from mlx_rsg.model.classifier import RSGClassifier
    from mlx_rsg.model.config import ClassifierConfig
    from mlx_rsg.predict import score_units
    from mlx_rsg.version import __version__

    from mlx_rsg.tasks import REGISTRY

    spec = REGISTRY[args.task]
    records = load_split(args.data, args.task, "val")[: args.records]
    tok = load_tokenizer(args.model)
    mx.random.seed(0)
    cfg = ClassifierConfig(method="heads", max_len=args.max_len, dropout=0.0)
    heads = {spec.head: 1 if spec.choice else len(spec.labels)}
    model = RSGClassifier(load_backbone(args.model), cfg, heads)
    model.update(tree_map(lambda v: mx.random.normal(v.shape), model.trainable_parameters()))
    model.eval()

    def run(min_shared: int):
        t0 = time.perf_counter()
        units, logits = score_units(model, tok, args.task, records, args.batch_size,
                                    min_shared=min_shared)  # fmt: skip
        return time.perf_counter() - t0, units, logits

    modes = {"shared": args.min_shared or shared_prefix.MIN_SHARED, "whole": 10**9}
    best: dict[str, float] = {}
    out: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, min_shared in modes.items():
            seconds, units, logits = run(min_shared)
            best[name] = min(best.get(name, seconds), seconds)
            out[name] = logits
    n = len(units)
    cost = token_cost(args.task, records, tok, model.cfg.max_len_for(args.task), modes["shared"])
    diff = float(np.abs(out["shared"] - out["whole"]).max())
    agree = bool((out["shared"].argmax(1) == out["whole"].argmax(1)).all())
    result = {
        "benchmark": "shared_prefix",
        "model": str(args.model),
        "task": f"{args.task} val",
        "records": len(records),
        "units": n,
        "tokens": cost["tokens"],
        "tokens_shared_once": cost["once"],
        "max_len": args.max_len,
        "batch_size": args.batch_size,
        "min_shared": modes["shared"],
        "seconds": {k: round(v, 2) for k, v in best.items()},
        "units_per_s": {k: round(n / v, 2) for k, v in best.items()},
        "speedup": round(best["whole"] / best["shared"], 2),
        "max_abs_logit_diff": diff,
        "max_abs_logit": float(np.abs(out["whole"]).max()),
        "decisions_agree": agree,
        "blas": blas.describe(),
        "versions": {"mlx_rsg": __version__, "mlx": mx.__version__},
        "machine": f"{platform.machine()} {platform.system()}",
    }
    from results_io import save  # benchmarks/results_io.py, beside this script

    save(args.out, result, table(result))


def table(result: dict) -> str:
    """The two modes side by side (docs/benchmarks.md renders it)."""
    rows = [f"| {'shared passages' if k == 'shared' else 'every unit whole'} | "
            f"{result['seconds'][k]:.1f} | {result['units_per_s'][k]:.2f} |"
            for k in ("shared", "whole")]  # fmt: skip
    tokens = (f"; {result['tokens']:,} tokens, {result['tokens_shared_once']:,} with each shared "
              "prefix once") if "tokens" in result else ""  # fmt: skip
    return "\n".join(["| mode | seconds | units/s |", "|---|---|---|", *rows, "",
                      f"{result['speedup']}x{tokens}; the largest logit difference "
                      f"{result['max_abs_logit_diff']:.1e} (logits up to "
                      f"{result['max_abs_logit']:.1f}), decisions the same: "
                      f"{'yes' if result['decisions_agree'] else 'NO'}."])  # fmt: skip

if __name__ == "__main__":
    main()
