"""Load on `mlx-rsg serve`: 1, 4 and 16 concurrent clients over loopback, each sending one TERRa
val record per request and waiting for the answer before the next (closed loop), against one
server per run.

    python benchmarks/bench_serve.py --runs quickstart/runs/fp32 quickstart/runs/q4 \
        --data ../shared/rsg

Bounded: each level sends `--requests-per-client` requests per client or stops after
`--seconds`, whichever comes first. Reports p50 / p99 latency (client side, connect to last
byte), requests/s, errors (any non-200 answer or failed connection), the batches the server
formed, and its peak RSS; the gain of micro-batching is requests/s at 16 clients over the
single-client rate, measured in the same run. Writes benchmarks/results/serve.json and prints a
table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from results_io import save  # benchmarks/results_io.py, beside this script

HERE = Path(__file__).parent


def records(data: Path, n: int) -> list[dict]:
    from mlx_rsg.data.files import read_objects

    _, values = read_objects(data, "TERRa", "val")
    return [{k: v for k, v in obj.items() if k != "label"} for _, obj in values[:n]]


def client(url: str, bodies: list[bytes], start: int, count: int, stop_at: float, out: list):
    """Send bodies[start], bodies[start + 1], ... one at a time on one keep-alive connection."""
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
    for i in range(count):
        if time.perf_counter() > stop_at:
            break
        body = bodies[(start + i) % len(bodies)]
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        out.append((time.perf_counter() - t0, ok))
    conn.close()


def health(url: str) -> dict:
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    conn.request("GET", "/health")
    answer = json.loads(conn.getresponse().read())
    conn.close()
    return answer


def level(url: str, bodies: list[bytes], clients: int, per_client: int, seconds: float) -> dict:
    before = health(url)
    results: list[tuple[float, bool]] = []
    stop_at = time.perf_counter() + seconds
    threads = [threading.Thread(target=client, args=(url, bodies, c * 37, per_client, stop_at,
                                                     results)) for c in range(clients)]  # fmt: skip
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = health(url)
    ms = np.array([s for s, _ in results]) * 1e3
    batches = after["batches"] - before["batches"]
    return {
        "clients": clients,
        "requests": len(results),
        "errors": sum(not ok for _, ok in results),
        "seconds": wall,
        "requests_per_s": len(results) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "batches": batches,
        "mean_batch": (after["requests"] - before["requests"]) / max(1, batches),
    }


def bench_run(run: Path, bodies: list[bytes], args) -> dict:
    from mlx_rsg.serve.process import ServerProcess

    with ServerProcess([run, *args.serve_args]) as server:
        for body in bodies[:4]:  # warm-up, untimed
            level(server.url, [body], 1, 1, 60)
        levels = [level(server.url, bodies, c, args.requests_per_client, args.seconds)
                  for c in args.clients]  # fmt: skip
        rss = health(server.url)["rss_peak_bytes"]
        code, _, err = server.stop()
    if code != 0:
        sys.exit(f"{run}: the server exited with {code} on SIGTERM: {err[-2000:]}")
    one = next(x for x in levels if x["clients"] == 1)["requests_per_s"]
    many = max(levels, key=lambda x: x["clients"])
    return {"run": run.name, "path": str(run), "levels": levels, "rss_peak_bytes": rss,
            "gain": many["requests_per_s"] / one, "gain_clients": many["clients"]}  # fmt: skip


def table(result: dict) -> str:
    lines = ["| run | clients | requests | errors | req/s | p50 ms | p99 ms | mean batch | "
             "peak RSS |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["runs"]:
        for x in r["levels"]:
            lines.append(
                f"| {r['run']} | {x['clients']} | {x['requests']} | {x['errors']} | "
                f"{x['requests_per_s']:.1f} | {x['p50_ms']:.0f} | {x['p99_ms']:.0f} | "
                f"{x['mean_batch']:.1f} | {r['rss_peak_bytes'] / 2**30:.2f} GiB |"
            )
    lines.append("")
    for r in result["runs"]:
        lines.append(f"{r['run']}: {r['gain']:.2f}x the single-client requests/s at "
                     f"{r['gain_clients']} clients")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    ap.add_argument("--requests-per-client", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=120, help="per level, at most")
    ap.add_argument("--records", type=int, default=256, help="distinct TERRa val records sent")
    ap.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[],
                    help="passed to mlx-rsg serve (last)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve.json")
    args = ap.parse_args()
    if 1 not in args.clients:
        sys.exit("--clients: include 1 (the reference the gain is measured against)")
    import mlx_rsg  # noqa: F401, I001  (first: the BLAS the server loads, before mlx)
    import mlx.core as mx

    from mlx_rsg.accel import blas
    from mlx_rsg.version import __version__

    bodies = [json.dumps({"task": "TERRa", "records": [r]}, ensure_ascii=False).encode()
              for r in records(args.data, args.records)]  # fmt: skip
    result = {
        "command": " ".join(sys.argv),
        "env": {"mlx_rsg": __version__, "mlx": mx.__version__, "blas": blas.describe(),
                "device": str(mx.default_device())},  # fmt: skip
        "config": {"task": "TERRa", "records": len(bodies), "clients": args.clients,
                   "requests_per_client": args.requests_per_client, "seconds": args.seconds,
                   "serve_args": args.serve_args},  # fmt: skip
        "runs": [bench_run(run, bodies, args) for run in args.runs],
    }
    save(args.out, result, table(result))


if __name__ == "__main__":
    main()
