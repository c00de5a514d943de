"""Score against minutes: the real runs' val totals by their wall time, one line per recipe.

    pip install -e ".[charts]"   # matplotlib, for the PNG
    python benchmarks/curve.py   # results/curve.json, results/curve.png

Each point is a committed quality JSON (a run's val predictions re-scored by quality.py) with
the wall time its run measured in one piece; runs without one (resumed after a restart) are
left out rather than estimated. Nothing here runs a model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from results_io import save  # benchmarks/results_io.py, beside this script

RESULTS = Path(__file__).parent / "results"
# (recipe, quality JSON under results/): the lines of the chart
POINTS = [
    ("records per task, 384 tokens", "quality/earlier/640.json"),
    ("records per task, 384 tokens", "quality/earlier/1000.json"),
    ("shared passages, budgets per task, 640 tokens", "quality/earlier/half.json"),
    ("shared passages, budgets per task, 640 tokens", "quality/earlier/1ep.json"),
    ("shared passages, budgets per task, 640 tokens", "quality/earlier/2ep.json"),
    ("shared passages, budgets per task, 640 tokens", "quality/earlier/share.json"),
    ("the same on the first 12 blocks", "quality/earlier/block12-quarter.json"),
    ("the same on the first 12 blocks", "quality/earlier/block12-half.json"),
    # the real run as its three budgets compare: RWSD by its head (quality.json: by substitution)
    ("the same on the first 12 blocks", "quality/earlier/block12-head.json"),
    # the real run: block12's command with --head-only PARus, RWSD by substitution, in one piece
    ("the real run (PARus's head alone, RWSD by substitution)", "quality.json"),
]


def point(recipe: str, path: str) -> dict | None:
    q = json.loads((RESULTS / path).read_text())
    run = q.get("run") or {}
    if run.get("wall_minutes") is None:
        return None
    train = run.get("train") or {}
    return {
        "recipe": recipe,
        "file": path,
        "minutes": run["wall_minutes"],
        "total": q["total"],
        "epochs": train.get("epochs"),
        "budget": train.get("task_max_train") or train.get("max_train_per_task"),
    }


def table(result: dict) -> str:
    rows = ["| recipe | run | epochs | wall minutes | val total |", "|---|---|---|---|---|"]
    for p in result["points"]:
        rows.append(f"| {p['recipe']} | `{Path(p['file']).stem}` | {p['epochs']} | "
                    f"{p['minutes']:.1f} | {p['total']:.3f} |")  # fmt: skip
    return "\n".join(rows)


def chart(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.2), dpi=120)
    for recipe in dict.fromkeys(p["recipe"] for p in result["points"]):
        pts = sorted((p["minutes"], p["total"], p["epochs"], Path(p["file"]).stem)
                     for p in result["points"] if p["recipe"] == recipe)  # fmt: skip
        ax.plot([m for m, *_ in pts], [t for _, t, *_ in pts], marker="o", label=recipe)
        for minutes, total, epochs, run in pts:
            ax.annotate(f"{run}: {epochs} ep.", (minutes, total), textcoords="offset points",
                        xytext=(6, -10), fontsize=8)  # fmt: skip
    ax.axvline(90, color="grey", linestyle=":", label="the 90-minute budget")
    ax.set_xscale("log", base=2)
    ticks = [45, 60, 75, 90, 120, 150]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("wall minutes on 2 CPU cores (training, dev and the val pass)")
    ax.set_ylabel("val total, 8 tasks")
    ax.set_title("Gemma-3-270M on RSG: score against minutes")
    ax.grid(alpha=0.3)
    # below the axes: the points fill every corner
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "curve.json")
    ap.add_argument("--no-png", action="store_true", help="only the JSON (no matplotlib)")
    args = ap.parse_args()
    points = [p for recipe, path in POINTS if (p := point(recipe, path)) is not None]
    result = {"benchmark": "curve", "points": points}
    save(args.out, result, table(result))
    if not args.no_png:
        chart(result, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
