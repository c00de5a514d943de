"""MLX's float32 GEMM under each BLAS mlx-rsg can load, each in a process of its own (a BLAS is
loaded before MLX, once per process; `mlx_rsg/accel/blas.py`).

    python benchmarks/bench_blas.py [--mkl /path/to/libmkl_rt.so.3]

Rows: MLX's own reference BLAS (`MLX_RSG_BLAS=none`), what an install loads by default
(`scipy-openblas32` through the shim), and MKL when --mkl names its library (e.g. after
`pip install --target DIR mkl`: DIR/lib/libmkl_rt.so.3). GFLOP/s of `mx.matmul` at 2048³ and at
1024×640×2048 (a Gemma-3-270M projection at a batch of 1,024 tokens), best of 5 after a warm-up.
The installed size and licence come from the package's metadata. Writes
benchmarks/results/blas.json and prints a table (docs/cli.md renders it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).parent
SHAPES = {"2048³": (2048, 2048, 2048), "1024×640×2048": (1024, 640, 2048)}
CHILD = """
import json, sys, time
import mlx_rsg  # loads the BLAS before MLX
from mlx_rsg.accel import blas
import mlx.core as mx

def gflops(m, k, n):
    a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
    mx.eval(a, b)
    mx.eval(a @ b)
    best = min(_timed(a, b) for _ in range(5))
    return 2 * m * k * n / best / 1e9

def _timed(a, b):
    t0 = time.perf_counter()
    mx.eval(a @ b)
    return time.perf_counter() - t0

shapes = json.loads(sys.argv[1])
print(json.dumps({"blas": blas.describe(),
                  "gflops": {k: round(gflops(*v), 1) for k, v in shapes.items()}}))
"""


def measure(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLX_RSG_BLAS"}
    if env_value is not None:
        env["MLX_RSG_BLAS"] = env_value
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SHAPES)], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def package(name: str, path: Path | None = None) -> dict | None:
    """Installed megabytes and licence of a distribution (found beside `path` if given)."""
    try:
        found = metadata.distributions(name=name, **({"path": [str(path)]} if path else {}))
        dist = next(iter(found))
    except StopIteration:
        return None
    files = [f.locate() for f in dist.files or []]
    size = sum(Path(f).stat().st_size for f in files if Path(f).is_file())
    licence = dist.metadata.get("License-Expression") or dist.metadata.get("License") or ""
    return {"name": name, "version": dist.version, "mb": round(size / 2**20),
            "licence": licence.splitlines()[0][:40] if licence else ""}  # fmt: skip


def table(result: dict) -> str:
    head = ["BLAS", *(f"{s} GFLOP/s" for s in result["shapes"]), "installed"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in result["rows"]:
        pkg = r.get("package")
        installed = f"{pkg['mb']} MB, {pkg['licence']}" if pkg else "–"
        lines.append(f"| {r['name']} | " + " | ".join(f"{r['gflops'][s]:.1f}"
                                                     for s in result["shapes"])
                     + f" | {installed} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mkl", type=Path, help="MKL's libmkl_rt.so (a row of its own)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "blas.json")
    args = ap.parse_args()
    rows = [{"name": "reference BLAS of `mlx[cpu]`", **measure("none")},
            {"name": "`scipy-openblas32` + shim (the default)", **measure(None),
             "package": package("scipy-openblas32")}]  # fmt: skip
    if args.mkl:
        site = args.mkl.resolve().parent.parent  # pip --target DIR: DIR/lib/libmkl_rt.so.3
        rows.append({"name": f"PyPI `mkl` (`{args.mkl.name}`)", **measure(str(args.mkl)),
                     "package": package("mkl", site)})  # fmt: skip
    sys.path.insert(0, str(HERE.parent))
    from mlx_rsg.accel.fastpaths import cpu_cores, cpu_model

    result = {"benchmark": "blas", "shapes": list(SHAPES), "rows": rows,
              "cpu": cpu_model(), "cores": cpu_cores(), "command": " ".join(sys.argv)}  # fmt: skip
    from results_io import save  # benchmarks/results_io.py, beside this script

    save(args.out, result, table(result))


if __name__ == "__main__":
    main()
