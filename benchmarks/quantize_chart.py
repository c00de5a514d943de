"""Size against flips: every quantized variant of a bench result, bits per weight against the
share of the float model's decisions it changed, with the Δ of the total beside each point.

    pip install -e ".[charts]"        # matplotlib
    python benchmarks/quantize_chart.py [--bench results/quality/quantize/bench.json ...]

Several --bench files of the same baseline on the same units (one bench per lever) make one
chart. Writes flips.png beside the first. Nothing here runs a model: it reads what `mlx-rsg bench`
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


def merged(benches: list[dict]) -> dict:
    """Benches of one baseline on the same units as one: the first's baseline, every variant."""
    first = benches[0]
    for b in benches[1:]:
        if b["baseline"] != first["baseline"] or b["tasks"] != first["tasks"]:
            raise SystemExit(f"error: bench of {b['baseline']} on other units than the first's")
    return {**first, "variants": first["variants"] + [v for b in benches[1:]
                                                      for v in b["variants"][1:]]}  # fmt: skip


def _spread(ys: list[float], gap: float) -> list[float]:
    """Label heights for ascending `ys`, each at least `gap` above the one below (labels of
    points at nearly the same height would print over each other)."""
    out: list[float] = []
    for y in ys:
        out.append(y if not out else max(y, out[-1] + gap))
    return out


def chart(bench: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(points(bench), key=lambda p: p["flips"])
    fig, ax = plt.subplots(figsize=(7, max(3.0, 1.6 + 0.22 * len(pts))), dpi=120)
    top = 100 * max(p["flips"] for p in pts)
    label_y = _spread([100 * p["flips"] for p in pts], gap=top / (1.6 * len(pts)))
    for p, y in zip(pts, label_y, strict=True):
        ax.scatter(p["bits_per_weight"], 100 * p["flips"], color="tab:blue")
        delta = f"{100 * p['delta']:+.1f}" + (f" ± {100 * p['delta_se']:.1f}" if p["delta_se"]
                                              is not None else "")  # fmt: skip
        ax.annotate(f"{p['recipe']} ({delta})", (p["bits_per_weight"], 100 * p["flips"]),
                    xytext=(p["bits_per_weight"] + 0.4, y), fontsize=7, va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.6"})  # fmt: skip
    ax.set_xlabel("bits per weight (scales and biases included)")
    ax.set_ylabel("decisions changed, %")
    ax.set_title(f"Size against flips: variants of {bench['baseline']} "
                 "(Δ total in points ± SE)", fontsize=10)  # fmt: skip
    ax.set_xlim(left=4.5, right=max(p["bits_per_weight"] for p in pts) + 2.5)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, nargs="+",
                    default=[RESULTS / "quality/quantize/bench.json"])  # fmt: skip
    args = ap.parse_args()
    benches = [json.loads(p.read_text()) for p in args.bench]
    chart(merged(benches), args.bench[0].with_name("flips.png"))


if __name__ == "__main__":
    main()
