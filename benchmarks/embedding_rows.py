"""How many of a 4-bit run's changed decisions its 4-bit embedding makes: a probe for issue 28.

The quantized run's embedding is replaced, in memory, by
- `train8`: the rows of every token the RSG *train* units contain (encoded as the run encodes
  them) rounded at 8 bits, in the embedding's own group and scale dtype; every other row as the
  run has it;
- `float`: the float model's rows (the ceiling of anything done to the embedding).
The rows are held dequantized: the numbers a stored mixed-row table would give, not its speed.
Each variant decides the val splits of every task, compared with the float run's committed
decisions as bench counts flips. No label is read, and the row set is fixed by train alone, so
nothing is chosen on val.

    python benchmarks/embedding_rows.py --run runs/q4-gptq-long-sens-bc --model runs/model \
        --baseline benchmarks/results/quality/quantize/submissions/g270m-block12-rwsd.zip \
        --data ../shared/rsg [--mode train8] [--mode float]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from results_io import save  # benchmarks/results_io.py, beside this script

from mlx_rsg import predict  # first: OpenBLAS before anything imports mlx
from mlx_rsg.bench.compare import flip_counts
from mlx_rsg.errors import UserError
from mlx_rsg.quant.embedding_rows import train_token_ids
from mlx_rsg.submission import read_submission

MODES = ("train8", "float")
HIGH_BITS = 8


def swap_embedding(predictor, model_dir: Path, mode: str, data: Path) -> dict:
    """Replace the run's embedding (and its RWSD language model's, the same module) as `mode`
    says; returns what was done (the rows raised and the MB they would add stored)."""
    import mlx.core as mx
    import mlx.nn as nn

    bb = predictor.model.backbone
    q = bb.decoder.embed_tokens
    float_rows = mx.load(str(model_dir / "model.safetensors"))["model.embed_tokens.weight"]
    float_rows = float_rows.astype(mx.float32)
    low = mx.dequantize(q.weight, q.scales, q.biases, q.group_size, q.bits).astype(mx.float32)
    info: dict = {"rows": int(float_rows.shape[0]),
                  "embedding": {"bits": q.bits, "group_size": q.group_size}}  # fmt: skip
    if mode == "float":
        rows = float_rows
    else:
        # the rows `[embedding_rows]` raises (quant/embedding_rows.py)
        seen, tasks = train_token_ids(predictor.model, predictor.tokenizer, data)
        w, s, b = mx.quantize(float_rows, q.group_size, HIGH_BITS)
        high = mx.dequantize(w, s.astype(q.scales.dtype).astype(mx.float32),
                             b.astype(q.scales.dtype).astype(mx.float32), q.group_size,
                             HIGH_BITS)  # fmt: skip
        mask = np.zeros((float_rows.shape[0], 1), dtype=bool)
        mask[seen] = True
        rows = mx.where(mx.array(mask), high, low)
        extra = len(seen) * float_rows.shape[1] * (HIGH_BITS - q.bits)  # same groups, scales
        info.update(raised=len(seen), train_tasks=tasks, high_bits=HIGH_BITS,
                    extra_mb=extra / 8 / 2**20)  # fmt: skip
    emb = nn.Embedding(*float_rows.shape)
    emb.weight = rows
    mx.eval(emb.parameters())
    bb.decoder.embed_tokens = emb
    if predictor.model.substitution is not None:  # RWSD's language model reads the same rows
        predictor.model.substitution.lm.decoder.embed_tokens = emb
    return info


def flips(predictor, data: Path, baseline: dict) -> dict[str, list[int]]:
    """[changed, decisions] per task of `baseline` on the val records bench scores (LiDiRus:
    its one labelled file, by the TERRa head)."""
    records = predict.data_records(predictor.info, str(data), "val", "all", None)
    out = {}
    for task in baseline:
        preds, _, _ = predictor.predictions(task, records[task])
        out[task] = list(flip_counts(task, records[task], preds, baseline[task]))
    return out


def table(result: dict) -> str:
    tasks = result["tasks"]
    rows = ["| embedding | rows at 8 bits | MB added | decisions changed | " + " | ".join(tasks)
            + " |", "|---" * (4 + len(tasks)) + "|"]  # fmt: skip
    for mode, r in result["modes"].items():
        changed, total = r["total"]
        raised, mb = (r["raised"], f"{r['extra_mb']:.1f}") if "raised" in r else ("float", "")
        rows.append(f"| {mode} | {raised} | {mb} | {changed} ({100 * changed / total:.2f} %) | "
                    + " | ".join(str(r["flips"][t][0]) for t in tasks) + " |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a quantized run directory")
    ap.add_argument("--model", type=Path, required=True,
                    help="the float model it was made from (its model.safetensors)")
    ap.add_argument("--baseline", type=Path, required=True,
                    help="the float run's val predictions (bench's submission zip)")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--mode", action="append", choices=MODES)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "embedding_rows.json")
    a = ap.parse_args()
    if not (a.model / "model.safetensors").is_file():
        ap.error(f"--model: {a.model / 'model.safetensors'}: no such file")
    try:  # a bad run, zip or data directory: one line, as the CLI says it
        run(a)
    except UserError as e:
        ap.error(str(e))


def run(a: argparse.Namespace) -> None:
    baseline = read_submission(a.baseline)
    result = {"benchmark": "embedding_rows", "run": str(a.run), "model": str(a.model),
              "baseline": str(a.baseline), "tasks": list(baseline), "modes": {}}  # fmt: skip
    for mode in a.mode or list(MODES):
        start = time.perf_counter()
        predictor = predict.load(a.run)
        r = swap_embedding(predictor, a.model, mode, a.data)
        r["flips"] = flips(predictor, a.data, baseline)
        r["total"] = [sum(v[0] for v in r["flips"].values()),
                      sum(v[1] for v in r["flips"].values())]  # fmt: skip
        r["seconds"] = round(time.perf_counter() - start, 1)
        result["modes"][mode] = r
        print(f"{mode}: {r['total'][0]} of {r['total'][1]} decisions changed", flush=True)
    save(a.out, result, table(result))


if __name__ == "__main__":
    main()
