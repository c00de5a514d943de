"""Training with shared passages vs every unit whole: one epoch of the real recipe's MuSeRC units.

    python benchmarks/bench_shared_train.py --model MODEL_DIR --data ../shared/rsg

The real run (`benchmarks/results/quality.json`) trains the top 4 of Gemma-3-270M's 18 blocks
(`--method freeze --freeze-layers 14`, batch 8 x 2, MuSeRC at 384 tokens) on ~1,000 MuSeRC answer
units: about half of its training tokens, every answer re-running its passage through the trained
blocks forward and backward. `train --share-prefix` (the default now) batches a passage's answers
together and runs the passage once per batch (`model/shared_prefix.segment_features`).

This draws the recipe's MuSeRC records (--units answers, the real run's seed, dev split and
sampling), fills the frozen-prefix cache once (both modes read the same cache, so only the
trained blocks differ), then trains one epoch of the same units three ways, each from the same
initial weights, and times it:

- `units apart, whole`: the earlier batching (`--no-share-prefix`), every unit whole;
- `records together, whole`: the new batches, every unit still whole (what batching alone does);
- `records together, shared`: the new batches, each passage once per batch (the default).

Reported per mode: seconds, units/s, the positions the trained blocks ran (forward), the epoch's
mean training loss, and the ratio to the first mode. --long-max-len adds a fourth mode: the
shared recipe at a longer MuSeRC length (whole passages; other units, so a cost, not a ratio).

Writes benchmarks/results/shared_train.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a converted model directory")
    ap.add_argument("--data", type=Path, required=True, help="RSG data directory")
    ap.add_argument("--units", type=int, default=1000, help="MuSeRC answers (--max-train-per-task)")
    ap.add_argument("--max-len", type=int, default=384, help="the real run's MuSeRC length")
    ap.add_argument("--long-max-len", type=int, default=0, help="also time this length, shared")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "shared_train.json")
    args = ap.parse_args()

    import mlx_rsg  # noqa: F401, I001  (first: loads the fast BLAS before mlx)
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map

    from mlx_rsg.accel import blas
    from mlx_rsg.accel.fastpaths import cpu_model
    from mlx_rsg.model.backbone import load_backbone, load_tokenizer
    from mlx_rsg.model.batching import loss_fn
    from mlx_rsg.model.classifier import RSGClassifier
    from mlx_rsg.model.features import PrefixCache
    from mlx_rsg.train.config import TrainConfig, classifier_config, heads_for
    from mlx_rsg.train.optim import compiled_update, make_optimizer
    from mlx_rsg.train.plan import epoch_batches, epoch_units, load_task_data
    from mlx_rsg.version import __version__

    cfg = TrainConfig(tasks=("MuSeRC",), method="freeze", freeze_layers=14,
                      max_len=args.max_len, max_train_per_task=args.units, dev_per_task=160,
                      lr=5e-5, warmup=30)  # fmt: skip
    data = load_task_data(args.data, cfg, log=lambda m: None)
    bb, tok = load_backbone(args.model), load_tokenizer(args.model)
    mx.random.seed(cfg.seed)
    model = RSGClassifier(bb, classifier_config(cfg, bb.num_layers), heads_for(cfg.tasks))
    start = tree_map(lambda v: v, model.trainable_parameters())
    mx.eval(start)

    def positions(batches) -> int:
        """Token positions the trained blocks run forward (padding included)."""
        total = 0
        for b in batches:
            lengths = b.lengths.tolist()
            row = 0
            for s, e, n in b.segments:
                total += (max(lengths[row:s]) * (s - row) if s > row else 0)
                total += n + (max(lengths[s:e]) - n) * (e - s)
                row = e
            if row < len(lengths):
                total += max(lengths[row:]) * (len(lengths) - row)
        return total

    caches: dict[int, PrefixCache] = {}

    def epoch(share: bool, max_len: int, whole: bool) -> dict:
        run_cfg = replace(cfg, share_prefix=share)
        units = epoch_units(data, tok, run_cfg, 0, {"MuSeRC": max_len})
        batches = epoch_batches(units, run_cfg, 0)
        if whole:
            batches = [replace(b, segments=()) for b in batches]
        if max_len not in caches:  # the same frozen rows for every mode of a length
            caches[max_len] = PrefixCache(model)
        cache = caches[max_len]
        cache.fill([e for us in units.values() for e in us], cfg.batch_size)
        for b in batches:  # every row in the cache before the clock starts
            cache.prefix(b)
        model.update(start)
        model.train()
        optimizer = make_optimizer(run_cfg, len(batches) // cfg.grad_accum + 1)
        update = compiled_update(model, optimizer)
        step = nn.value_and_grad(model, lambda m, b, h0: loss_fn(m, b, h0))
        losses, accum = [], []
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            mx.random.seed(i)
            (loss, _), grads = step(model, batch, cache.prefix(batch))
            accum.append(grads)
            mx.eval(loss, grads)
            losses.append(loss.item())
            if len(accum) == cfg.grad_accum or i == len(batches) - 1:
                total = accum[0]
                for g in accum[1:]:
                    total = tree_map(mx.add, total, g)
                update(total, len(accum))
                mx.eval(model.parameters(), optimizer.state)
                accum = []
        seconds = time.perf_counter() - t0
        n = sum(len(b.keys) for b in batches)
        return {"units": n, "batches": len(batches), "max_len": max_len,
                "seconds": round(seconds, 1), "units_per_s": round(n / seconds, 2),
                "trained_positions": positions(batches),
                "mean_loss": round(sum(losses) / len(losses), 4)}  # fmt: skip

    modes = {
        "units apart, whole": epoch(False, args.max_len, whole=True),
        "records together, whole": epoch(True, args.max_len, whole=True),
        "records together, shared": epoch(True, args.max_len, whole=False),
    }
    if args.long_max_len:
        modes[f"records together, shared, max_len {args.long_max_len}"] = epoch(
            True, args.long_max_len, whole=False
        )
    base = modes["units apart, whole"]["seconds"]
    for m in modes.values():
        m["speedup"] = round(base / m["seconds"], 2)
    result = {
        "benchmark": "shared_train",
        "model": str(args.model),
        "recipe": "MuSeRC units of the real run: --method freeze --freeze-layers 14, batch 8 x 2, "
        f"seed 0, --dev-per-task 160, --max-train-per-task {args.units}",
        "modes": modes,
        "blas": blas.describe(),
        "versions": {"mlx_rsg": __version__, "mlx": mx.__version__},
        "machine": f"{platform.machine()} {platform.system()}, {cpu_model()}, "
        f"{os.cpu_count()} cores",
    }
    from results_io import save  # benchmarks/results_io.py, beside this script

    save(args.out, result, table(result))


def table(result: dict) -> str:
    """One row per mode (docs/benchmarks.md renders it)."""
    rows = [f"| {k} | {m['max_len']} | {m['seconds']:.1f} | {m['units_per_s']:.2f} | "
            f"{m['trained_positions']:,} | {m['mean_loss']} | {m['speedup']}x |"
            for k, m in result["modes"].items()]  # fmt: skip
    return "\n".join(["| mode | max_len | seconds | units/s | positions the trained blocks ran | "
                      "mean loss | speed-up |", "|---|---|---|---|---|---|---|", *rows])


if __name__ == "__main__":
    main()
