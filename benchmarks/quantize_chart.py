"""Size against flips: every quantized variant of a bench result, bits per weight against the
share of the float model's decisions it changed, with the Δ of the total beside each point.

    pip install -e ".[charts]"        # matplotlib
    python benchmarks/quantize_chart.py [--bench results/quality/quantize-1ep/bench.json]

Writes flips.png beside the bench.json. Nothing here runs a model: it reads what `mlx-rsg bench`
measured (bits per weight from each variant's manifest, flips, Δ and its standard error).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def points(bench: dict) -> list[dict]:
    """(recipe, bits per weight, flip rate, Δ total, its SE) of every quantized variant."""
    out = []
    for v in bench["variants"]:
        q = v["quantization"]
        if not q or q.get("bits_per_weight") is None:
            continue
        se = (v.get("delta_se") or {}).get("total")
        out.append({"recipe": q.get("recipe", v["name"]), "bits_per_weight": q["bits_per_weight"],
                    "flips": v["flip_rate"], "delta": v["delta"], "delta_se": se})  # fmt: skip
    return out


def chart(bench: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for p in points(bench):
        ax.scatter(p["bits_per_weight"], 100 * p["flips"], color="tab:blue")
        delta = f"{100 * p['delta']:+.1f}" + (f" ± {100 * p['delta_se']:.1f}" if p["delta_se"]
                                              is not None else "")  # fmt: skip
        ax.annotate(f"{p['recipe']} ({delta})", (p["bits_per_weight"], 100 * p["flips"]),
                    textcoords="offset points", xytext=(6, 2), fontsize=7)  # fmt: skip
    ax.set_xlabel("bits per weight (scales and biases included)")
    ax.set_ylabel("decisions changed vs float32, %")
    ax.set_title(f"Size against flips: variants of {bench['baseline']} "
                 "(Δ total in points ± SE)", fontsize=10)  # fmt: skip
    ax.set_xlim(left=4.5, right=max(p["bits_per_weight"] for p in points(bench)) + 1.5)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, default=RESULTS / "quality/quantize-1ep/bench.json")
    args = ap.parse_args()
    chart(json.loads(args.bench.read_text()), args.bench.with_name("flips.png"))


if __name__ == "__main__":
    main()
