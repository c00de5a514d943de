"""Scoring trained runs in one row chunk against one per core (the CPU `rows` fast path).

    python benchmarks/bench_row_chunks.py --runs RUN_DIR [RUN_DIR ...] --data ../shared/rsg

On the CPU, `predict` splits an inference batch into one row chunk per core, each on its own
MLX stream (`mlx_rsg.accel.cpu_parallel`), where `mlx-rsg info` measured that faster on the
machine's synthetic blocks. A trained model is not those blocks: this scores the first --records
val records of each of --tasks with every run loaded as `predict` loads it, once with one chunk
and once with one per core, alternately, best of --repeats, and reports records/s, the peak MLX
memory of each mode, the row chunks the run scores with as loaded, and whether the two modes
decide alike.

Writes benchmarks/results/row_chunks.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="trained run directories")
    ap.add_argument("--data", type=Path, required=True, help="RSG data directory")
    ap.add_argument("--tasks", default="TERRa,DaNetQA")
    ap.add_argument("--records", type=int, default=48, help="val records per task")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "row_chunks.json")
    args = ap.parse_args()

    import mlx_rsg  # noqa: F401, I001  (first: loads the fast BLAS before mlx)
    import mlx.core as mx
    import numpy as np

    from mlx_rsg import predict
    from mlx_rsg.accel import blas
    from mlx_rsg.accel.cpu_parallel import cpu_cores
    from mlx_rsg.accel.fastpaths import cpu_model
    from mlx_rsg.data import load_split
    from mlx_rsg.run import open_runs, quantization
    from mlx_rsg.version import __version__

    tasks = args.tasks.split(",")
    records = {t: load_split(args.data, t, "val")[: args.records] for t in tasks}
    cores = cpu_cores()
    rows = []
    for run in args.runs:
        predictor = predict.load(run)
        bb = predictor.model.backbone
        as_loaded = bb.runtime
        seconds: dict[int, float] = {}
        peak: dict[int, int] = {}
        logits: dict[int, list] = {}
        predictor.predictions(tasks[0], records[tasks[0]][:4])  # warm-up: first allocations
        for _ in range(args.repeats):
            for parts in (1, cores):
                bb.runtime = dataclasses.replace(as_loaded, row_parts=parts)
                mx.reset_peak_memory()
                t0 = time.perf_counter()
                out = [predictor.predictions(t, records[t])[2] for t in tasks]
                took = time.perf_counter() - t0
                seconds[parts] = min(seconds.get(parts, took), took)
                peak[parts] = max(peak.get(parts, 0), mx.get_peak_memory())
                logits[parts] = out
        bb.runtime = as_loaded
        n = sum(len(r) for r in records.values())
        one, many = logits[1], logits[cores]
        pairs = list(zip(one, many, strict=True))
        q = quantization(open_runs([str(run)])[0])
        rows.append({
            "run": str(run),
            "method": predictor.info["classifier"]["method"],
            "backbone": (q.get("recipe") or f"{q['bits']}-bit") if q else "float32",
            "row_parts_as_loaded": as_loaded.row_parts,
            "records_per_s": {str(p): round(n / s, 2) for p, s in seconds.items()},
            "peak_mib": {str(p): round(b / 2**20) for p, b in peak.items()},
            "max_abs_logit_diff": max(float(np.abs(a - b).max()) for a, b in pairs),
            "decisions_agree": all(bool((a.argmax(1) == b.argmax(1)).all()) for a, b in pairs),
        })  # fmt: skip
    result = {
        "benchmark": "row_chunks",
        "tasks": {t: len(r) for t, r in records.items()},
        "cores": cores,
        "repeats": args.repeats,
        "runs": rows,
        "cpu": cpu_model(),
        "blas": blas.describe(),
        "versions": {"mlx_rsg": __version__, "mlx": mx.__version__},
        "machine": f"{platform.machine()} {platform.system()}",
    }
    from results_io import save  # benchmarks/results_io.py, beside this script

    save(args.out, result, table(result))


def table(result: dict) -> str:
    """One row per run (docs/quantization.md renders it)."""
    c = str(result["cores"])
    head = ["run", "method", "backbone", "records/s, 1 chunk", f"records/s, {c} chunks",
            f"{c} vs 1", "peak MiB, 1 / " + c, "chunks as loaded", "decisions alike"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["runs"]:
        one, many = r["records_per_s"]["1"], r["records_per_s"][c]
        lines.append(
            f"| `{Path(r['run']).name}` | {r['method']} | {r['backbone']} | {one:.2f} | "
            f"{many:.2f} | {many / one:.2f}x | {r['peak_mib']['1']} / {r['peak_mib'][c]} | "
            f"{r['row_parts_as_loaded']} | {'yes' if r['decisions_agree'] else 'NO'} |"
        )
    tasks = ", ".join(f"{n} {t}" for t, n in result["tasks"].items())
    lines += ["", f"The first val records of each task ({tasks}), best of {result['repeats']}; "
              f"{result['cpu']}, {result['blas']}."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
