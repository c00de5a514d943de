"""Scoring a trained run: `mlx-rsg predict`'s path against a PyTorch + transformers reference.

    python benchmarks/bench_scoring.py --run RUN_DIR --data ../shared/rsg [--every 8]

Every val record of the run's tasks and LiDiRus (with --every K: every K-th record of each
task, MuSeRC by paragraph) is scored twice, each runtime in its own process on the same
threads: by `mlx_rsg.load(RUN_DIR).predictions` (what `predict`, `bench`, `serve` and training's
evaluation run: shared prefixes once, the top block at the pooled positions only, the CPU fast
paths) and by the same classifier in PyTorch: transformers' model of the run's backbone with
the run's trained blocks, final norm and heads loaded, its calibration added to the head biases,
the same units and token ids (our encoder), batches of --batch-size sorted by length and padded
to their longest, every position of every unit computed, pooled as the run pools. Timed per task
from records to decisions (tokenisation included, model loading not). Reported: seconds per
task and in all, the ratio, the largest logit difference, and whether every decision agrees.

The plain forward is machine-dependent (docs/benchmarks.md: 0.81x to 1.13x torch), so what this
measures is the work `predict` does not do. Writes benchmarks/results/scoring.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def val_subset(data: Path, task: str, every: int) -> list:
    from mlx_rsg.data import load_split
    from mlx_rsg.data.sample import diagnostic_records

    records = diagnostic_records(data) if task == "LiDiRus" else load_split(data, task, "val")
    return records[::every]


def scored_tasks(info: dict) -> list[str]:
    tasks = list(info["train"]["tasks"])
    return tasks + ["LiDiRus"] if "TERRa" in tasks else tasks


def mlx_worker(args, tasks: list[str]) -> dict:
    import mlx_rsg

    clf = mlx_rsg.load(args.run)
    clf.batch_size = args.batch_size
    out = {}
    for task in tasks:
        records = val_subset(args.data, task, args.every)
        t0 = time.perf_counter()
        preds, units, logits = clf.predictions(task, records)
        out[task] = (time.perf_counter() - t0, [u.key for u in units], logits, preds)
    return out


def torch_worker(args, tasks: list[str]) -> dict:
    import mlx_rsg  # noqa: F401, I001  (the encoder and decoders; numpy-side only)
    import torch

    from mlx_rsg.model.backbone import load_tokenizer
    from mlx_rsg.model.batching import encode_units
    from mlx_rsg.model.config import ClassifierConfig
    from mlx_rsg.run import dataclass_from_dict, read_run_json, resolve_backbone
    from mlx_rsg.tasks import REGISTRY, decode, make_units

    torch.set_num_threads(args.threads)
    info = read_run_json(args.run)
    cfg = dataclass_from_dict(ClassifierConfig, info["classifier"])
    if cfg.pooling != "last":
        raise SystemExit(f"{args.run}: the reference pools the last token and spans, not "
                         f"{cfg.pooling}")  # fmt: skip
    model_dir = resolve_backbone(args.run, info)
    reference = reference_classifier(model_dir, args.run, info)
    tok = load_tokenizer(model_dir)
    out = {}
    with torch.no_grad():
        for task in tasks:
            records = val_subset(args.data, task, args.every)
            head = task if task in reference.heads else REGISTRY[task].head
            t0 = time.perf_counter()
            units = make_units(task, records, prompt=cfg.prompt)
            encoded = encode_units(units, tok, cfg.max_len_for(task))
            logits = np.zeros((len(units), reference.heads[head].out_features), np.float32)
            order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
            for lo in range(0, len(order), args.batch_size):
                rows = order[lo : lo + args.batch_size]
                logits[rows] = reference(padded([encoded[i] for i in rows], head)).numpy()
            keys = [u.key for u in units]
            preds = decode(task, records, keys, logits)
            out[task] = (time.perf_counter() - t0, keys, logits, preds)
    return out


def reference_classifier(model_dir: Path, run: Path, info: dict):
    """parity_train's PyTorch classifier (pooling, RMS normalisation, a head per task) with the
    run's weights: transformers' backbone with its trained blocks and final norm, the heads with
    the run's calibration in their biases (LiDiRus a copy of TERRa's with its own offsets)."""
    import torch
    from parity_train import Reference  # beside this script
    from safetensors.numpy import load_file
    from transformers import AutoModel

    from mlx_rsg.model.offsets import entry_offsets
    from mlx_rsg.tasks import REGISTRY

    backbone = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    trained = load_file(str(run / "trainable.safetensors"))
    state = {k.removeprefix("lm.model."): torch.from_numpy(v) for k, v in trained.items()
             if k.startswith("lm.model.")}  # fmt: skip
    missing = set(state) - set(backbone.state_dict())
    if missing:
        raise SystemExit(f"{run}: trained weights transformers' model lacks: {sorted(missing)[0]}")
    backbone.load_state_dict(state, strict=False)
    calibration = info.get("calibration", {})
    sources = {name: name for name in info["heads"]}
    sources.update({task: REGISTRY[task].head for task in calibration if task not in sources})
    heads = torch.nn.ModuleDict()
    for name, source in sources.items():
        w, b = trained[f"heads.{source}.weight"], trained[f"heads.{source}.bias"]
        if name in calibration:
            b = b + np.array(entry_offsets(calibration[name]), np.float32)
        heads[name] = torch.nn.Linear(w.shape[1], w.shape[0])
        heads[name].weight.data, heads[name].bias.data = torch.from_numpy(w), torch.from_numpy(b)
    return Reference(backbone, heads)


def padded(rows: list, head: str) -> dict:
    """Encoded units as parity_train's batch: right-padded to the longest (causal attention:
    padding after a row never counts), spans for span-pooled tasks."""
    tokens = np.zeros((len(rows), max(len(e.ids) for e in rows)), np.int64)
    for j, e in enumerate(rows):
        tokens[j, : len(e.ids)] = e.ids
    spans = np.array([e.spans for e in rows], np.int64) if rows[0].spans else None
    return {"tokens": tokens, "lengths": np.array([len(e.ids) for e in rows]), "spans": spans,
            "head": head}  # fmt: skip


def worker(args) -> None:
    info = json.loads((args.run / "run.json").read_text())
    tasks = scored_tasks(info)
    out = (mlx_worker if args.worker == "mlx" else torch_worker)(args, tasks)
    arrays = {f"{t}/logits": v[2] for t, v in out.items()}
    meta = {t: {"seconds": v[0], "keys": [list(k) for k in v[1]],
                "predictions": _plain(v[3])} for t, v in out.items()}  # fmt: skip
    np.savez(args.out.with_suffix(".npz"), **arrays)
    args.out.with_suffix(".json").write_text(json.dumps(meta))


def _plain(preds):
    if isinstance(preds, dict):
        return {str(k): _plain(v) for k, v in preds.items()}
    if isinstance(preds, list):
        return [_plain(p) for p in preds]
    return preds.item() if hasattr(preds, "item") else preds


def run_worker(kind: str, args, work: Path) -> tuple[dict, dict]:
    out = work / kind
    cmd = [sys.executable, __file__, "--worker", kind, "--run", str(args.run), "--data",
           str(args.data), "--every", str(args.every), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--out", str(out)]  # fmt: skip
    print(f"== {kind}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    meta = json.loads(out.with_suffix(".json").read_text())
    arrays = np.load(out.with_suffix(".npz"))
    return meta, {t: arrays[f"{t}/logits"] for t in meta}


def compare(mlx: tuple, ref: tuple) -> dict:
    (m_meta, m_logits), (t_meta, t_logits) = mlx, ref
    tasks = {}
    for task in m_meta:
        assert m_meta[task]["keys"] == t_meta[task]["keys"], f"{task}: different units"
        diff = np.abs(m_logits[task] - t_logits[task])
        ms, ts = m_meta[task]["seconds"], t_meta[task]["seconds"]
        tasks[task] = {
            "units": len(m_meta[task]["keys"]),
            "seconds": {"mlx": round(ms, 2), "torch": round(ts, 2)},
            "speedup": round(ts / ms, 2),
            "max_abs_logit_diff": float(diff.max()) if diff.size else 0.0,
            "decisions_agree": m_meta[task]["predictions"] == t_meta[task]["predictions"],
        }
    total_m = sum(t["seconds"]["mlx"] for t in tasks.values())
    total_t = sum(t["seconds"]["torch"] for t in tasks.values())
    return {"tasks": tasks, "seconds": {"mlx": round(total_m, 1), "torch": round(total_t, 1)},
            "speedup": round(total_t / total_m, 2),
            "decisions_agree": all(t["decisions_agree"] for t in tasks.values())}  # fmt: skip


def table(result: dict) -> str:
    lines = ["| task | units | mlx s | torch s | mlx vs torch | max logit diff | decisions |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task, t in result["tasks"].items():
        same = "same" if t["decisions_agree"] else "DIFFER"
        lines.append(f"| {task} | {t['units']:,} | {t['seconds']['mlx']:.1f} | "
                     f"{t['seconds']['torch']:.1f} | {t['speedup']:.2f}x | "
                     f"{t['max_abs_logit_diff']:.1e} | {same} |")  # fmt: skip
    same = "same" if result["decisions_agree"] else "DIFFER"
    lines.append(f"| all | {sum(t['units'] for t in result['tasks'].values()):,} | "
                 f"{result['seconds']['mlx']:.1f} | {result['seconds']['torch']:.1f} | "
                 f"**{result['speedup']:.2f}x** | | {same} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained run directory")
    ap.add_argument("--data", type=Path, required=True, help="RSG data directory")
    ap.add_argument("--every", type=int, default=1, help="score every K-th val record")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--worker", choices=["mlx", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scoring.json")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = compare(run_worker("mlx", args, Path(tmp)), run_worker("torch", args, Path(tmp)))
    import mlx_rsg  # noqa: F401, I001
    import torch
    import transformers

    from mlx_rsg.accel import blas
    from mlx_rsg.accel.fastpaths import cpu_model
    from mlx_rsg.version import __version__

    result = {
        "benchmark": "scoring", "run": str(args.run), "data": str(args.data),
        "every": args.every, "batch_size": args.batch_size, "threads": args.threads,
        **result,
        "cpu": cpu_model(), "blas": blas.describe(),
        "versions": {"mlx_rsg": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }  # fmt: skip
    from results_io import save

    save(args.out, result, table(result))


if __name__ == "__main__":
    main()
