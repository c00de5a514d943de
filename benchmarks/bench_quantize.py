"""Quantized inference speed on the CPU: fp32 vs q8 vs q4, with and without
mlx_rsg.accel.fast_quant.

    python benchmarks/bench_quantize.py MODEL_DIR        # a converted fp32 model directory

MODEL_DIR is quantized with `mlx_rsg.quant.quantize` (q8, q4 and any --recipes) into a temporary
directory; then every variant is loaded in this one process and timed on the same random
batch (--batch x --seq token ids) by the classification forward (embeddings -> all layers ->
final norm, as backbone.hidden_states), alternating variants each round so contention hits all
alike; best of --reps per round, best over --rounds. Variants:

    fp32                    the float32 model
    qN fast                 fast_quant: dequantize + fp32 GEMM per call (the default)
    qN fast+cache           fast_quant with the dequantized weights kept per layer
    qN mlx-kernel           MLX's own CPU quantized_matmul (fast_quant not applied); ~30x
                            slower, so timed at --kernel-batch rows with fp32 at that shape too

"single" is one stream; "rows" is cpu_parallel.row_parallel (a row chunk per core); "latency"
is one example of --latency-seq tokens (batch 1, as bench's p50 latency). Reported:
examples/s, the ratio to fp32 in the same mode (target: q8 and q4 >= 0.9x), the weights' bytes
in memory (plus the cache), and the hidden states' relative error vs fp32. Writes
benchmarks/results/quantize.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from results_io import save  # benchmarks/results_io.py, beside this script

import mlx_rsg  # noqa: F401  (OpenBLAS before mlx)

HERE = Path(__file__).parent


def _best(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _nbytes(tree) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(tree))


def _cache_bytes(bb) -> int:
    from mlx_rsg.accel.fast_quant import _CACHE_ATTR

    return sum(
        m.__dict__[_CACHE_ATTR][1].nbytes
        for _, m in bb.model.named_modules()
        if _CACHE_ATTR in m.__dict__
    )


def _drop_cache(bb) -> None:
    from mlx_rsg.accel.fast_quant import _CACHE_ATTR

    for _, m in bb.model.named_modules():
        m.__dict__.pop(_CACHE_ATTR, None)


def forward(bb, mode: str):
    import mlx.core as mx

    from mlx_rsg.accel.cpu_parallel import cpu_cores, row_parallel
    from mlx_rsg.model.backbone import hidden_states

    def fwd(tokens):
        return hidden_states(bb, tokens)

    def run(tokens):
        out = row_parallel(fwd, tokens, parts=cpu_cores()) if mode == "rows" else fwd(tokens)
        mx.eval(out)
        return out

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="converted fp32 model directory")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3, help="timed forwards per variant and round")
    ap.add_argument("--rounds", type=int, default=2, help="passes over all variants")
    ap.add_argument("--modes", default="single,rows,latency", help="single, rows, latency")
    ap.add_argument("--latency-seq", type=int, default=64, help="tokens of the batch-1 runs")
    ap.add_argument("--recipes", default="q8,q4", help="quantize recipes to compare")
    ap.add_argument("--group-size", type=int, default=None, help="override the recipes' 64")
    ap.add_argument("--kernel-batch", type=int, default=1, help="rows for the MLX-kernel runs")
    ap.add_argument("--no-kernel", action="store_true", help="skip the slow MLX-kernel runs")
    ap.add_argument("--label", help="how to name the weights in the results [default: the dir]")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "quantize.json")
    args = ap.parse_args()

    import mlx.core as mx
    import numpy as np

    from mlx_rsg.accel import fast_quant, fastpaths
    from mlx_rsg.accel.memory import keep_freed_buffers
    from mlx_rsg.model.backbone import load_backbone
    from mlx_rsg.quant.quantize import quantize

    recipes = [r for r in args.recipes.split(",") if r]
    modes = [m for m in args.modes.split(",") if m]
    rng = np.random.default_rng(0)
    vocab = json.loads((args.model / "config.json").read_text()).get("vocab_size", 32000)
    tokens_np = rng.integers(3, min(vocab, 32000), size=(args.batch, args.seq), dtype=np.int32)
    tokens_np[:, 0] = 2  # BOS
    tokens = mx.array(tokens_np)
    small = tokens[: args.kernel_batch]
    one = tokens[:1, : args.latency_seq]

    with tempfile.TemporaryDirectory() as tmp:
        log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        keep_freed_buffers()  # as the mlx-rsg commands do
        models = {"fp32": load_backbone(args.model)}
        for r in recipes:
            out = quantize(args.model, Path(tmp) / r, recipe=r, group_size=args.group_size, log=log)
            models[r] = load_backbone(out)
        for bb in models.values():
            mx.eval(bb.model.parameters())

        # (name, model, mode, fast_quant setting, tokens)
        variants = []
        for mode in modes:
            toks = one if mode == "latency" else tokens
            variants.append(("fp32", "fp32", mode, "fast", toks))
            for r in recipes:
                variants.append((f"{r} fast", r, mode, "fast", toks))
                variants.append((f"{r} fast+cache", r, mode, "cache", toks))
        if not args.no_kernel:
            variants.append(("fp32", "fp32", "kernel-shape", "fast", small))
            for r in recipes:
                variants.append((f"{r} mlx-kernel", r, "kernel-shape", "kernel", small))

        def setup(setting: str, bb) -> None:
            fastpaths.apply(bb.model, bb.config, use={"quant": setting != "kernel"})
            fast_quant.keep_dequantized(bb.model, setting == "cache")

        fp32 = forward(models["fp32"], "single")
        ref = {id(t): fp32(t) for t in (tokens, small, one)}
        best: dict[tuple, float] = {}
        extra: dict[tuple, dict] = {}
        for rnd in range(args.rounds):
            for name, key, mode, setting, toks in variants:
                bb = models[key]
                setup(setting, bb)
                run = forward(bb, "rows" if mode == "rows" else "single")
                reps = 1 if setting == "kernel" else args.reps
                out = run(toks)  # warm-up (and, with the cache, fill it)
                sec = _best(lambda: run(toks), reps)  # noqa: B023
                k = (name, mode)
                best[k] = min(best.get(k, float("inf")), sec)
                if k not in extra:
                    r = ref[id(toks)]
                    rel = mx.linalg.norm(out - r, axis=-1) / mx.linalg.norm(r, axis=-1)
                    extra[k] = {
                        "rows": int(toks.shape[0]),
                        "weights_mb": _nbytes(bb.model.parameters()) / 2**20,
                        "cache_mb": _cache_bytes(bb) / 2**20,
                        "rel_err_vs_fp32_mean": float(rel.mean()),
                        "rel_err_vs_fp32_max": float(rel.max()),
                    }
                _drop_cache(bb)
                log(f"round {rnd + 1}: {name:>16} {mode:>12} {toks.shape[0] / sec:7.2f} ex/s")

    runs = []
    for (name, mode), sec in best.items():
        e = extra[(name, mode)]
        fp32 = best[("fp32", mode)]
        runs.append(
            {
                "variant": name,
                "mode": mode,
                **e,
                "seconds_per_batch": sec,
                "examples_per_s": e["rows"] / sec,
                "ms_per_example": 1e3 * sec / e["rows"],
                "vs_fp32": fp32 / sec,
            }
        )
    result = {
        "benchmark": "quantize",
        "weights": args.label or str(args.model),
        "batch": args.batch,
        "seq": args.seq,
        "kernel_batch": args.kernel_batch,
        "latency_seq": args.latency_seq,
        "reps": args.reps,
        "rounds": args.rounds,
        "recipes": recipes,
        "group_size": args.group_size or "recipe default (64)",
        "min_rows_fast_path": fast_quant.MIN_ROWS,
        "forward": "embed -> all layers -> final norm (no LM head)",
        "versions": {"mlx": mx.__version__},
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cpus",
        "runs": runs,
    }
    save(args.out, result, table(result))


def table(result: dict) -> str:
    lines = [
        f"Quantized inference, {result['batch']}x{result['seq']} tokens (MLX-kernel rows: "
        f"{result['kernel_batch']}x{result['seq']}; latency: 1x{result['latency_seq']}), "
        f"weights: {result['weights']}",
        "",
        "| variant | mode | ex/s | ms/ex | vs fp32 | weights MB | cache MB | rel. err vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['variant']} | {r['mode']} | {r['examples_per_s']:.2f} | "
            f"{r['ms_per_example']:.1f} | {r['vs_fp32']:.2f}x "
            f"| {r['weights_mb']:.1f} | {r['cache_mb']:.1f} | {r['rel_err_vs_fp32_mean']:.2e} |"
        )
    return "\n".join(lines)


def summary(result: dict) -> str:
    """The variants as columns, the modes as rows (docs/quantization.md renders it)."""
    runs = {(r["variant"], r["mode"]): r for r in result["runs"]}
    variants = ["fp32", "q8 fast", "q4 fast", "q8 fast+cache", "q4 fast+cache"]
    names = ["fp32", "q8", "q4", "q8 + cache", "q4 + cache", "MLX kernel (q8 / q4)"]

    def cell(variant: str, mode: str, latency: bool = False) -> str:
        r = runs[(variant, mode)]
        value = f"{r['ms_per_example']:.0f}" if latency else f"{r['examples_per_s']:.2f}"
        return value if variant == "fp32" else f"{value} ({r['vs_fp32']:.2f}x)"

    kernel = [runs[(f"q{b} mlx-kernel", "kernel-shape")] for b in (8, 4)]
    rows = [
        [f"{result['batch']}×{result['seq']} batch, rows, ex/s (vs fp32)",
         *(cell(v, "rows") for v in variants), ""],
        [f"{result['batch']}×{result['seq']} batch, one stream, ex/s",
         *(cell(v, "single") for v in variants),
         f"{kernel[0]['examples_per_s']:.2f} / {kernel[1]['examples_per_s']:.2f} at "
         f"{result['kernel_batch']}×{result['seq']} ({kernel[1]['vs_fp32']:.2f}x)"],
        [f"1×{result['latency_seq']} latency, ms", *(cell(v, "latency", True) for v in variants),
         ""],
        ["weights in memory, MB", *(f"{runs[(v, 'single')]['weights_mb']:.0f}"
                                     + (f" + {runs[(v, 'single')]['cache_mb']:.0f}"
                                        if runs[(v, "single")]["cache_mb"] else "")
                                     for v in variants), ""],
    ]  # fmt: skip
    lines = ["| Gemma-3-270M | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


if __name__ == "__main__":
    main()
