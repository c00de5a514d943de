"""RWSD decided by substitution: how fast each run scores it, against the first (float) run.

    python benchmarks/bench_rwsd_scoring.py FLOAT_RUN QUANTIZED_RUN... --data ../shared/rsg \
        --label NAME [--repeats 2] [--out benchmarks/results/rwsd_scoring.json]

Every val record of RWSD is scored by each run's own language model (`model.substitution`:
what `predict`, `bench` and `serve` run for a run that decides RWSD by substitution), the runs
one after another in this process, each `--repeats` times (the fastest kept; loading not
timed). Recorded under `--label` (a label run again is replaced, others stay, so the code
before and after a change can be measured with this one script): seconds, records per second,
the ratio to the first run's, and each run's decisions (1 = True, in record order), so that two
labels' decisions can be compared record by record. With the machine and its BLAS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import probe_cli  # noqa: F401  (first: OpenBLAS before anything imports mlx)
import results_io

HERE = Path(__file__).parent


def score(run: str, records: list, repeats: int) -> dict:
    from mlx_rsg import predict

    substitution = predict.load(run, verify=False).model.substitution
    if substitution is None:
        raise SystemExit(f"error: {run}: does not decide RWSD by substitution")
    best, logits = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        logits = substitution.logits(records)
        best = min(best, time.perf_counter() - start)
    return {"run": run, "seconds": round(best, 2),
            "records_per_s": round(len(records) / best, 2),
            "decisions": "".join("1" if t > f else "0" for f, t in logits)}  # fmt: skip


def table(result: dict) -> str:
    lines = ["| label | run | seconds | records/s | vs first | decisions as the first label's |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    first = next(iter(result["labels"].values()), {})
    for label, rows in result["labels"].items():
        for row in rows:
            ref = next((r for r in first if r["run"] == row["run"]), None)
            same = "–" if ref is None else sum(
                a == b for a, b in zip(ref["decisions"], row["decisions"], strict=True))
            lines.append(f"| {label} | `{Path(row['run']).name}` | {row['seconds']:.1f} | "
                         f"{row['records_per_s']:.2f} | {row['vs_first']:.2f}x | "
                         f"{same} of {len(row['decisions'])} |")  # fmt: skip
    return "\n".join(lines)


def _results(out: Path) -> dict:
    """The results file so far (other labels stay), or one line saying why it cannot be read."""
    if not out.exists():
        return {"benchmark": "rwsd_scoring", "labels": {}}
    try:
        result = json.loads(out.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {out}: not a readable JSON file ({e})") from None
    if not isinstance(result, dict) or not isinstance(result.get("labels"), dict):
        raise SystemExit(f"error: {out}: no field labels (not this benchmark's results file)")
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "rwsd_scoring.json"))
    a = ap.parse_args(argv)
    from mlx_rsg.accel.fastpaths import machine
    from mlx_rsg.data import load_split
    from mlx_rsg.errors import UserError

    out = Path(a.out)
    result = _results(out)  # read first: a file it cannot add to fails before any scoring
    try:  # a bad data directory or run: one line, and nothing written
        records = load_split(a.data, "RWSD", "val")
        rows = [score(run, records, a.repeats) for run in a.runs]
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    for row in rows:
        row["vs_first"] = round(row["records_per_s"] / rows[0]["records_per_s"], 3)
    import mlx_rsg  # the commit of the code that scored (a worktree's, for code before a change)

    code = Path(mlx_rsg.__file__).parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=code).stdout.strip()  # fmt: skip
    result["labels"][a.label] = rows
    result.setdefault("machines", {})[a.label] = {**machine(), "commit": commit,
                                                  "records": len(records)}  # fmt: skip
    results_io.save(out, result, table(result))


if __name__ == "__main__":
    main()
