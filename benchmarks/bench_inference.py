"""Inference speed of our MLX forward vs PyTorch + transformers, and MLX's model FLOP utilisation.

    python benchmarks/bench_inference.py --model MODEL_DIR  # from `mlx-rsg convert gemma-3-270m`
    python benchmarks/bench_inference.py --random           # random weights, same config

(a) examples/s of the classification forward (embeddings -> all layers -> final norm, no LM head),
    MLX fp32 vs PyTorch 2.13 + transformers fp32 (`Gemma3TextModel`), same weights, same batches
    (8 x 128 random token ids), same thread count. mlx, mlx-compiled and mlx-rows compute every
    position's final hidden state, as transformers does; mlx-predict computes what a last-token
    classifier reads (what `predict` runs: the top block at the last position only). mlx-stock
    is mlx-lm as shipped (no fast path: MLX_RSG_FAST_PATHS=none, one stream). mlx and
    mlx-predict use the fast paths this machine chose (mlx_rsg.accel.fastpaths); mlx-rows forces the
    row split. Timed alternately, best of --repeats each, so all see the same contention on a
    shared machine. Target: MLX / PyTorch >= 1.0.
(b) each CPU fast path against stock MLX on the model's shapes, timed afresh in this run
    (`fastpaths.measure`, not the cache), with the choice it implies.
(c) model FLOP utilisation: matmul FLOPs of one forward (projections, MLP, attention scores and
    values as executed on full L x L tiles) / time, against the fp32 GEMM peak of this machine
    measured in the same run with mx.matmul (2048^3, best of 5).

Writes benchmarks/results/inference.json and prints a table. Keep runs short: 2 cores shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_io import save  # benchmarks/results_io.py, beside this script

HERE = Path(__file__).parent
RUNTIMES = ("mlx-stock", "mlx", "mlx-compiled", "mlx-rows", "mlx-predict", "torch")
GEMMA_270M = {  # Gemma 3 270M text config (the real model's, from its GGUF metadata)
    "model_type": "gemma3_text",
    "architectures": ["Gemma3ForCausalLM"],
    "hidden_size": 640,
    "num_hidden_layers": 18,
    "intermediate_size": 2048,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "vocab_size": 262144,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "query_pre_attn_scalar": 256,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "max_position_embeddings": 32768,
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "layer_types": [
        "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)
    ],
}


def random_model_dir(path: Path) -> Path:
    """Random weights in the Gemma-3-270M config, written once (HF names, fp32)."""
    if (path / "model.safetensors").exists():
        return path
    from mlx_rsg.accel import blas  # noqa: F401  (OpenBLAS before mlx)

    path.mkdir(parents=True, exist_ok=True)
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import gemma3_text

    mx.random.seed(0)
    model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(GEMMA_270M))
    weights = {k: v for k, v in tree_flatten(model.parameters()) if not k.startswith("lm_head")}
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    (path / "config.json").write_text(json.dumps(GEMMA_270M, indent=2))
    return path


def matmul_flops(cfg: dict, batch: int, seq: int, pruned_top: bool = False) -> float:
    """FLOPs of the matmuls in one forward (2 per multiply-add). Attention is counted on the full
    L x L tiles the kernels compute (causal masking does not skip work at L=128). pruned_top:
    the last block computes keys and values for every token, the rest for the last one only."""
    h, f, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd, nq, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    kv = 2 * h * hd * nkv
    per_query = 2 * h * hd * nq + 3 * h * f + 2 * nq * hd * seq  # q, o, MLP, attention
    if not pruned_top:
        return 2.0 * batch * seq * n_layers * (kv + per_query)
    return 2.0 * batch * (seq * n_layers * kv + (seq * (n_layers - 1) + 1) * per_query)


def gemm_peak(n: int = 2048, repeats: int = 5) -> float:
    import mlx.core as mx

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a, b, a @ b)
    return 2.0 * n**3 / _best(lambda: mx.eval(a @ b), repeats)


def mlx_forward(model_dir: Path, mode: str):
    import mlx.core as mx

    from mlx_rsg.accel.memory import keep_freed_buffers
    from mlx_rsg.model.backbone import hidden_states, load_backbone

    if mode != "mlx-stock":
        keep_freed_buffers()  # as the mlx-rsg commands do
    bb = load_backbone(model_dir)
    mx.eval(bb.model.parameters())
    if mode == "mlx-predict":
        return classify_forward(bb)

    def fwd(tokens):
        return hidden_states(bb, tokens)

    if mode == "mlx-rows":  # one row chunk per core, each on its own stream
        from mlx_rsg.accel.cpu_parallel import cpu_cores, row_parallel

        return lambda tokens_np: row_parallel(fwd, mx.array(tokens_np), parts=cpu_cores())
    fn = mx.compile(fwd) if mode == "mlx-compiled" else fwd

    def run(tokens_np):
        out = fn(mx.array(tokens_np))
        mx.eval(out)
        return out

    return run


def classify_forward(bb):
    """What `mlx-rsg predict` runs for a last-token task: RSGClassifier.features (the top block
    at the pooled position only), rows split over the cores (cpu_parallel.model_rows)."""
    import mlx.core as mx

    from mlx_rsg.accel.cpu_parallel import model_rows
    from mlx_rsg.model.batching import Batch
    from mlx_rsg.model.classifier import RSGClassifier
    from mlx_rsg.model.config import ClassifierConfig

    model = RSGClassifier(bb, ClassifierConfig(method="heads"), {"TERRa": 2})
    model.eval()

    def run(tokens_np):
        n, L = tokens_np.shape
        batch = Batch(
            tokens=mx.array(tokens_np),
            lengths=mx.full((n,), L, dtype=mx.int32),
            head="TERRa",
            task="TERRa",
            labels=None,
            keys=list(range(n)),
            ids=[("TERRa", i) for i in range(n)],
        )
        return model_rows(lambda b, h0: model.features(b, h0), batch,
                          parts=model.backbone.runtime.row_parts)  # (B, 1, D)

    return run


def torch_forward(model_dir: Path, threads: int):
    import torch
    from transformers import Gemma3TextModel

    torch.set_num_threads(threads)
    model = Gemma3TextModel.from_pretrained(model_dir, dtype=torch.float32).eval()

    def run(tokens_np):
        with torch.inference_mode():  # returns after the forward is computed (eager)
            return model(input_ids=torch.from_numpy(tokens_np.astype(np.int64))).last_hidden_state

    return run, torch.__version__


def fast_path_worker(model_dir: Path) -> None:
    """Each fast path timed against stock on the model's shapes, and the BLAS, printed as JSON."""
    from mlx_rsg.accel import blas, fastpaths  # loads the BLAS before mlx

    cfg = json.loads((model_dir / "config.json").read_text())
    timings = fastpaths.measure(fastpaths.Shapes.of(cfg.get("text_config", cfg)))
    print(json.dumps({"blas": blas.describe(), "paths": {
        name: {"stock_ms": t.stock_ms, "fast_ms": t.fast_ms, "speedup": t.speedup, "used": t.use}
        for name, t in timings.items()
    }}))  # fmt: skip


def worker(args) -> None:
    """One runtime in a fresh process: warm up, time --repeats forwards, save the output."""
    if args.worker == "fastpaths":
        return fast_path_worker(args.model)
    if args.worker == "mlx-stock":
        os.environ["MLX_RSG_FAST_PATHS"] = "none"  # mlx-lm as shipped
    tokens = np.load(args.tokens)
    if args.worker == "torch":
        import torch

        run, version = torch_forward(args.model, args.threads)
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        peak = 2.0 * 2048**3 / _best(lambda: a @ b, 3)
    else:
        from mlx_rsg.accel import blas  # noqa: F401  (OpenBLAS before mlx)

        peak = gemm_peak()  # imports mlx
        import mlx.core as mx

        run, version = mlx_forward(args.model, args.worker), mx.__version__
    out = np.asarray(run(tokens), dtype=np.float32)  # warm-up (and compile)
    np.save(args.save, out)
    sec = _best(lambda: run(tokens), args.repeats)
    print(json.dumps({"seconds": sec, "gemm_peak": peak, "version": version}))


def _best(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls (fn must block until its result is computed)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="converted Gemma-3-270M directory")
    ap.add_argument("--random", action="store_true", help="random weights, same config")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed forwards per process")
    ap.add_argument("--rounds", type=int, default=2, help="processes per runtime, alternating")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--label", help="how to name the weights in the results [default: the dir]")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "inference.json")
    ap.add_argument("--worker", choices=(*RUNTIMES, "fastpaths"), help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if (args.model is None) == (not args.random):
        ap.error("give --model DIR or --random")
    model_dir = args.model or random_model_dir(Path("/tmp/mlx-rsg-bench-gemma270m-random"))
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg = {**GEMMA_270M, **cfg.get("text_config", cfg)}
    runtimes = [r for r in args.runtimes.split(",") if r]

    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 32000, size=(args.batch, args.seq), dtype=np.int32)
    tokens[:, 0] = 2  # BOS
    flops = matmul_flops(cfg, args.batch, args.seq)
    best = {r: float("inf") for r in runtimes}
    peaks: dict[str, float] = {}
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "tokens.npy", tokens)
        # Each runtime in its own process (PyTorch's MKL/OpenMP threads and OpenBLAS's would
        # otherwise fight over the cores), alternating so contention hits all alike.
        for _ in range(args.rounds):
            for r in runtimes:
                cmd = [sys.executable, __file__, "--worker", r, "--model", str(model_dir),
                       "--tokens", f"{tmp}/tokens.npy", "--save", f"{tmp}/{r}.npy",
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    sys.exit(f"{r} worker failed:\n{done.stderr[-2000:]}")
                res = json.loads(done.stdout.strip().splitlines()[-1])
                best[r] = min(best[r], res["seconds"])
                peaks[r] = max(peaks.get(r, 0.0), res["gemm_peak"])
                versions[r] = res["version"]
        outs = {r: np.load(Path(tmp) / f"{r}.npy") for r in runtimes}
    peak = max(v for r, v in peaks.items() if r != "torch")
    cmd = [sys.executable, __file__, "--worker", "fastpaths", "--model", str(model_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    fast_paths = json.loads(done.stdout.strip().splitlines()[-1])

    rows = {}
    for name, sec in best.items():
        done = matmul_flops(cfg, args.batch, args.seq, pruned_top=name == "mlx-predict")
        rows[name] = {
            "seconds_per_batch": sec,
            "examples_per_s": args.batch / sec,
            "gflops_per_s": done / sec / 1e9,
            "mfu": done / sec / peak,
        }
    result = {
        "benchmark": "inference",
        "weights": args.label
        or ("random (Gemma-3-270M config)" if args.random else str(model_dir)),
        "batch": args.batch,
        "seq": args.seq,
        "threads": args.threads,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "forward": "embed -> all layers -> final norm (no LM head), fp32",
        "model_gflop_per_batch": flops / 1e9,
        "gemm_peak_gflops": peak / 1e9,
        "torch_gemm_peak_gflops": peaks["torch"] / 1e9 if "torch" in peaks else None,
        "versions": versions,
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cpus",
        "blas": fast_paths["blas"],
        "runs": rows,
        "fast_paths": fast_paths["paths"],
    }
    if "torch" in rows:
        for name in (r for r in runtimes if r != "torch"):
            result["runs"][name]["vs_torch"] = best["torch"] / best[name]
            ref = outs["torch"][:, -outs[name].shape[1] :]  # mlx-predict: the last position
            result["runs"][name]["max_abs_diff_vs_torch"] = float(np.abs(outs[name] - ref).max())
    save(args.out, result, table(result))


def table(result: dict) -> str:
    lines = [
        f"Inference, {result['batch']}x{result['seq']} tokens, fp32, {result['threads']} threads, "
        f"weights: {result['weights']}; GEMM peak {result['gemm_peak_gflops']:.0f} GFLOP/s",
        "",
        "| forward | ex/s | s/batch | GFLOP/s | MFU | vs torch |",
        "|---|---|---|---|---|---|",
    ]
    torch_sec = result["runs"].get("torch", {}).get("seconds_per_batch")
    for name, r in result["runs"].items():
        ratio = f"{torch_sec / r['seconds_per_batch']:.2f}x" if torch_sec else "–"
        lines.append(
            f"| {name} | {r['examples_per_s']:.2f} | {r['seconds_per_batch']:.3f} | "
            f"{r['gflops_per_s']:.1f} | {r['mfu']:.0%} | {ratio} |"
        )
    lines += [
        "",
        f"Fast paths vs stock MLX on this machine ({result.get('blas', '?')}):",
        "",
        "| path | stock ms | fast ms | fast vs stock | used |",
        "|---|---|---|---|---|",
    ]
    for name, t in result.get("fast_paths", {}).items():
        lines.append(
            f"| {name} | {t['stock_ms']:.1f} | {t['fast_ms']:.1f} | {t['speedup']:.2f}x | "
            f"{'yes' if t['used'] else 'no'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
