"""Summarise what benchmarks/gpu_check.sh measured: examples/s and model FLOP utilisation (MFU)
of inference and training, the quickstart's wall time and scores. Reads DIR/inference.json,
DIR/train.json, DIR/quickstart.txt, DIR/quickstart-bench.json (whichever exist); writes
DIR/summary.json and prints a table.

    python benchmarks/gpu_summary.py benchmarks/results/gpu --peak-tflops 67

MFU = model FLOP/s / peak. Model FLOPs: inference.json's forward count (2 x Linear weights x
tokens, attention included); a training example costs its forward plus twice the forward of the
layers it trains (weight and input gradients), the frozen forward counted once (`mlx-nocache`;
`mlx` skips it after epoch 1 and is reported against the same count).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from results_io import save  # benchmarks/results_io.py, beside this script


def summarise(out: Path, peak_tflops: float | None) -> dict:
    result: dict = {"peak_tflops": peak_tflops}
    peak = peak_tflops * 1e3 if peak_tflops else None  # GFLOP/s
    inf_path, train_path = out / "inference.json", out / "train.json"
    per_example = None
    if inf_path.exists():
        inf = json.loads(inf_path.read_text())
        per_example = inf["model_gflop_per_batch"] / inf["batch"]  # GFLOP, seq tokens
        result["inference"] = {
            r: {"examples_per_s": v["examples_per_s"], "gflops_per_s": v["gflops_per_s"],
                "mfu": v["gflops_per_s"] / peak if peak else None}
            for r, v in inf["runs"].items()
        }  # fmt: skip
        result["inference_shape"] = {"batch": inf["batch"], "seq": inf["seq"]}
    if train_path.exists():
        tr = json.loads(train_path.read_text())
        layers = _layers(tr["weights"])
        flops = None
        if per_example is not None and layers and tr["seq"] == result["inference_shape"]["seq"]:
            trained = (layers - tr["frozen_layers"]) / layers
            flops = per_example * (1 + 2 * trained)
        result["train"] = {
            r: {"examples_per_s": v["examples_per_s"],
                "gflops_per_s": flops * v["examples_per_s"] if flops else None,
                "mfu": flops * v["examples_per_s"] / peak if flops and peak else None}
            for r, v in tr["runs"].items()
        }  # fmt: skip
        result["train_shape"] = {k: tr[k] for k in ("batch", "seq", "frozen_layers")}
    qs = out / "quickstart.txt"
    if qs.exists():
        text = qs.read_text(errors="replace")
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", text)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        result["quickstart"] = {
            "wall": wall.group(1) if wall else None,
            "peak_rss_gb": round(int(rss.group(1)) / 2**20, 2) if rss else None,
        }
        bench = out / "quickstart-bench.json"
        if bench.exists():
            b = json.loads(bench.read_text())
            result["quickstart"]["totals"] = {v["name"]: v["total"] for v in b["variants"]}
            result["quickstart"]["device"] = b["env"]["device"]
    return result


def _layers(model_dir: str) -> int | None:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return config.get("text_config", config).get("num_hidden_layers")


def table(result: dict) -> str:
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    lines = ["| what | runtime | examples/s | GFLOP/s | MFU |", "|---|---|---|---|---|"]
    for kind in ("inference", "train"):
        for r, v in result.get(kind, {}).items():
            lines.append(f"| {kind} | {r} | {v['examples_per_s']:.1f} | "
                         f"{f(v['gflops_per_s'], '.0f')} | {f(v['mfu'], '.1%')} |")  # fmt: skip
    if "quickstart" in result:
        q = result["quickstart"]
        lines.append(f"\nquickstart: wall {q['wall']}, peak RSS {q['peak_rss_gb']} GB, "
                     f"totals {q.get('totals')}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--peak-tflops", type=float, help="the GPU's fp32 peak (MFU's denominator)")
    args = ap.parse_args()
    result = summarise(args.dir, args.peak_tflops)
    save(args.dir / "summary.json", result, table(result))


if __name__ == "__main__":
    main()
