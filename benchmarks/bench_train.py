"""Training speed: our MLX loop (frozen-prefix cache) vs a PyTorch + transformers loop that
recomputes the frozen layers every step, as the PyTorch implementation mlx-rsg replaces did.

    python benchmarks/bench_train.py --model MODEL_DIR   # from `mlx-rsg convert gemma-3-270m`

Same weights (fp32), same batches (--batch x --seq token ids, TERRa-style 2-class labels), the
same frozen-layer setup (bottom --freeze of the layers frozen, the rest + a linear head trained
with AdamW, dropout 0.1), the same number of epochs over the same examples, same thread count.
Runtimes:
  mlx          RSGClassifier + features.PrefixCache: layer-K inputs computed in epoch 1 only
  mlx-nocache  the same loop recomputing the frozen layers each step (what the cache saves)
  torch        Gemma3TextModel, frozen layers under requires_grad=False, recomputed each step
Target (issue 4): mlx examples/s over the whole run >= 1.5x torch. Each runtime runs in its own
process, alternating rounds; the best round counts. Writes benchmarks/results/train.json and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from results_io import save  # benchmarks/results_io.py, beside this script

HERE = Path(__file__).parent
RUNTIMES = ("mlx", "mlx-nocache", "torch")


def make_batches_np(n_batches: int, batch: int, seq: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 32000, size=(n_batches, batch, seq), dtype=np.int32)
    tokens[:, :, 0] = 2  # BOS
    labels = rng.integers(0, 2, size=(n_batches, batch), dtype=np.int32)
    return tokens, labels


def mlx_worker(args, tokens, labels) -> dict:
    import mlx.core as mx  # mlx_rsg (OpenBLAS) is imported first, in main
    import mlx.nn as nn
    import mlx.optimizers as optim

    from mlx_rsg.accel.memory import keep_freed_buffers
    from mlx_rsg.model.backbone import load_backbone
    from mlx_rsg.model.batching import Batch, loss_fn
    from mlx_rsg.model.classifier import RSGClassifier
    from mlx_rsg.model.config import ClassifierConfig
    from mlx_rsg.model.features import PrefixCache
    from mlx_rsg.train.optim import compiled_update

    mx.random.seed(0)
    keep_freed_buffers()  # as `mlx-rsg train` does
    bb = load_backbone(args.model)
    cfg = ClassifierConfig(method="freeze", freeze_layers=args.freeze, dropout=0.1)
    model = RSGClassifier(bb, cfg, {"TERRa": 2})
    mx.eval(model.parameters())
    opt = optim.AdamW(learning_rate=1e-5)
    cache = PrefixCache(model) if args.worker == "mlx" else None
    value_and_grad = nn.value_and_grad(model, loss_fn)
    update = compiled_update(model, opt)  # as mlx_rsg/train/loop.py
    n, L = tokens.shape[1], tokens.shape[2]
    batches = [
        Batch(
            tokens=mx.array(tokens[i]),
            lengths=mx.full((n,), L, dtype=mx.int32),
            head="TERRa",
            task="TERRa",
            labels=mx.array(labels[i]),
            keys=[(i, j) for j in range(n)],
            ids=[("TERRa", (i, j)) for j in range(n)],
        )
        for i in range(len(tokens))
    ]
    model.train()
    losses, epoch_s = [], []
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        te = time.perf_counter()
        for batch in batches:
            h0 = cache.prefix(batch) if cache is not None else None
            (loss, _), grads = value_and_grad(model, batch, h0)
            update(grads, 1)
            mx.eval(loss, model.parameters(), opt.state)
            losses.append(loss.item())
        epoch_s.append(time.perf_counter() - te)
    return {"seconds": time.perf_counter() - t0, "epoch_seconds": epoch_s, "losses": losses,
            "version": mx.__version__}  # fmt: skip


def torch_worker(args, tokens, labels) -> dict:
    import torch
    from transformers import Gemma3TextModel

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    backbone = Gemma3TextModel.from_pretrained(args.model, dtype=torch.float32)
    backbone.embed_tokens.requires_grad_(False)
    for layer in backbone.layers[: args.freeze]:
        layer.requires_grad_(False)
    head = torch.nn.Linear(backbone.config.hidden_size, 2, bias=False)
    drop = torch.nn.Dropout(0.1)
    params = [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5)
    backbone.train()
    losses, epoch_s = [], []
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        te = time.perf_counter()
        for x, y in zip(tokens, labels, strict=True):
            ids = torch.from_numpy(x.astype(np.int64))
            hidden = backbone(input_ids=ids).last_hidden_state
            loss = torch.nn.functional.cross_entropy(
                head(drop(hidden[:, -1])), torch.from_numpy(y.astype(np.int64))
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        epoch_s.append(time.perf_counter() - te)
    return {"seconds": time.perf_counter() - t0, "epoch_seconds": epoch_s, "losses": losses,
            "version": torch.__version__}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="converted Gemma-3-270M directory")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batches", type=int, default=6, help="batches per epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--freeze", type=int, default=9, help="bottom layers frozen (9 of 18)")
    ap.add_argument("--rounds", type=int, default=1, help="processes per runtime, alternating")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train.json")
    ap.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        tokens, labels = make_batches_np(args.batches, args.batch, args.seq)
        if args.worker == "torch":
            fn = torch_worker
        else:
            import mlx_rsg  # noqa: F401  (loads OpenBLAS before mlx)

            fn = mlx_worker
        print(json.dumps(fn(args, tokens, labels)))
        return

    runtimes = [r for r in args.runtimes.split(",") if r]
    best: dict[str, dict] = {}
    # Each runtime in its own process (PyTorch's OpenMP threads and OpenBLAS's would otherwise
    # fight over the cores), alternating so contention hits all alike.
    for _ in range(args.rounds):
        for r in runtimes:
            cmd = [sys.executable, __file__, "--worker", r, "--model", str(args.model),
                   "--batch", str(args.batch), "--seq", str(args.seq),
                   "--batches", str(args.batches), "--epochs", str(args.epochs),
                   "--freeze", str(args.freeze), "--threads", str(args.threads)]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"{r} worker failed:\n{done.stderr[-3000:]}")
            res = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{r}: {res['seconds']:.1f} s", file=sys.stderr)
            if r not in best or res["seconds"] < best[r]["seconds"]:
                best[r] = res
    examples = args.epochs * args.batches * args.batch
    rows = {
        r: {
            "seconds": res["seconds"],
            "examples_per_s": examples / res["seconds"],
            "epoch_seconds": res["epoch_seconds"],
            "first_losses": res["losses"][: args.batches],
            "version": res["version"],
        }
        for r, res in best.items()
    }
    if "torch" in rows:
        for r in rows:
            rows[r]["vs_torch"] = rows[r]["examples_per_s"] / rows["torch"]["examples_per_s"]
    result = {
        "benchmark": "train",
        "weights": str(args.model),
        "batch": args.batch,
        "seq": args.seq,
        "batches_per_epoch": args.batches,
        "epochs": args.epochs,
        "frozen_layers": args.freeze,
        "threads": args.threads,
        "rounds": args.rounds,
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cpus",
        "runs": rows,
    }
    save(args.out, result, table(result))


def table(result: dict) -> str:
    lines = [
        f"Training, {result['epochs']} epochs x {result['batches_per_epoch']} batches of "
        f"{result['batch']}x{result['seq']}, bottom {result['frozen_layers']} layers frozen, fp32, "
        f"{result['threads']} threads",
        "",
        "| loop | ex/s | total s | s per epoch | vs torch |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["runs"].items():
        ratio = f"{r['vs_torch']:.2f}x" if "vs_torch" in r else "–"
        epochs = " / ".join(f"{s:.1f}" for s in r["epoch_seconds"])
        lines.append(
            f"| {name} | {r['examples_per_s']:.2f} | {r['seconds']:.1f} | {epochs} | {ratio} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
