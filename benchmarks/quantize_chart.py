"""Size against flips: every quantized variant of a bench result, bits per weight against the
share of the float model's decisions it changed, with the Δ of the total beside each point.

    pip install -e ".[charts]"        # matplotlib
    python benchmarks/quantize_chart.py [--bench results/quality/quantize/bench.json ...] \
        [--composed results/quality/quantize-e3/q8-gptq-long-e3-rows-bc-lm4.json ...]

Several --bench files of the same baseline on the same units (one bench per lever) make one
series; a bench of another baseline (another float run) starts a series of its own, in its own
colour, named by its baseline: each point's flips and Δ are against its own float run. A
--composed copy (`compose_copy.py`) joins the series of the bench its variant is in (of its
baseline, where two benches hold that variant), at that variant's bits per weight. Writes
flips.png beside the first bench. Nothing here runs a model:
it reads what `mlx-rsg bench` measured (bits per weight from each variant's manifest: the
backbone's, flips, Δ and its standard error).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# what this script reads of `mlx-rsg bench`'s bench.json, its variants, and compose_copy.py's file
BENCH_FIELDS = ("baseline", "tasks", "variants")
VARIANT_FIELDS = ("name", "quantization", "flip_rate", "delta")
COMPOSED_FIELDS = ("name", "composed", "flip_rate", "delta")


def read(path: Path, fields: tuple[str, ...], variant_fields: tuple[str, ...] = ()) -> dict:
    """A results file, or one line naming the file and the first field it lacks."""
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path}: not a readable JSON file ({e})") from None
    _require(path, out, fields, "")
    if variant_fields:
        if not isinstance(out["variants"], list):
            raise SystemExit(f"error: {path}: field variants is not a list")
        for i, v in enumerate(out["variants"]):
            _require(path, v, variant_fields, f"variants[{i}].")
    return out


def _require(path: Path, obj, fields: tuple[str, ...], prefix: str) -> None:
    missing = next((f for f in fields if not isinstance(obj, dict) or f not in obj), None)
    if missing is not None:
        raise SystemExit(f"error: {path}: no field {prefix}{missing}")


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
        _check_units(first, b, baseline=True)
    return {**first, "variants": first["variants"] + [v for b in benches[1:]
                                                      for v in b["variants"][1:]]}  # fmt: skip


def _check_units(first: dict, b: dict, baseline: bool = False) -> None:
    """Bench `b` measured the units `first` did (and, with `baseline`, of the same float run)."""
    if b["tasks"] != first["tasks"] or (baseline and b["baseline"] != first["baseline"]):
        raise SystemExit(f"error: bench of {b['baseline']} on other units than the first's")


def series(benches: list[dict], composed: list[dict] = ()) -> list[dict]:
    """Benches grouped by baseline: per series, the baseline's name and its points (the
    variants of every bench of that baseline, then each composed copy of one of them)."""
    out: list[dict] = []
    for b in benches:
        same = next((g for g in out if g["baseline"] == b["baseline"]), None)
        if same is None:
            out.append({"baseline": b["baseline"], "tasks": b["tasks"], "points": points(b)})
        else:
            _check_units(same, b)
            same["points"] += points({"variants": b["variants"][1:]})
    for c in composed:
        variant = c["composed"]["variant"]
        home = next((g for g in out for p in g["points"] if p["recipe"] == variant
                     and g["baseline"] == c.get("baseline", g["baseline"])), None)  # fmt: skip
        if home is None:
            raise SystemExit(f"error: {c['name']}: its variant {variant} is in no --bench given")
        bits = next(p["bits_per_weight"] for p in home["points"] if p["recipe"] == variant)
        home["points"].append({"recipe": c["name"], "bits_per_weight": bits,
                               "flips": c["flip_rate"], "delta": c["delta"],
                               "delta_se": (c.get("delta_se") or {}).get("total")})  # fmt: skip
    return out


def _spread(ys: list[float], gap: float) -> list[float]:
    """Label heights for ascending `ys`, each at least `gap` above the one below (labels of
    points at nearly the same height would print over each other)."""
    out: list[float] = []
    for y in ys:
        out.append(y if not out else max(y, out[-1] + gap))
    return out


def chart(groups: list[dict], out: Path) -> None:
    if not any(g["points"] for g in groups):
        raise SystemExit("error: no quantized variant in the benches given: nothing to draw")
    try:
        import matplotlib
    except ImportError:
        raise SystemExit('error: the chart needs matplotlib: pip install -e ".[charts]"') from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(((p, i) for i, g in enumerate(groups) for p in g["points"]),
                 key=lambda pi: pi[0]["flips"])  # fmt: skip
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 1.6 + 0.22 * len(pts))), dpi=120)
    top = 100 * max(p["flips"] for p, _ in pts)
    label_y = _spread([100 * p["flips"] for p, _ in pts], gap=top / (1.6 * len(pts)))
    for (p, i), y in zip(pts, label_y, strict=True):
        ax.scatter(p["bits_per_weight"], 100 * p["flips"], color=colours[i % len(colours)])
        delta = f"{100 * p['delta']:+.1f}" + (f" ± {100 * p['delta_se']:.1f}" if p["delta_se"]
                                              is not None else "")  # fmt: skip
        ax.annotate(f"{p['recipe']} ({delta})", (p["bits_per_weight"], 100 * p["flips"]),
                    xytext=(p["bits_per_weight"] + 0.4, y), fontsize=7, va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.6"})  # fmt: skip
    for i, g in enumerate(groups):
        ax.scatter([], [], color=colours[i % len(colours)], label=f"against {g['baseline']}")
    ax.set_xlabel("bits per weight of the backbone (scales and biases included)")
    ax.set_ylabel("decisions changed, %")
    of = "" if len(groups) > 1 else f": variants of {groups[0]['baseline']}"  # else the legend
    ax.set_title(f"Size against flips{of} (Δ total in points ± SE)", fontsize=10)
    ax.set_xlim(left=4.5, right=max(p["bits_per_weight"] for p, _ in pts) + 2.5)
    ax.grid(alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, nargs="+",
                    default=[RESULTS / "quality/quantize/bench.json"])  # fmt: skip
    ap.add_argument("--composed", type=Path, nargs="*", default=[])
    args = ap.parse_args(argv)
    benches = [read(p, BENCH_FIELDS, VARIANT_FIELDS) for p in args.bench]
    composed = [read(p, COMPOSED_FIELDS) for p in args.composed]
    chart(series(benches, composed), args.bench[0].with_name("flips.png"))


if __name__ == "__main__":
    main()
