"""CPU fast paths, each used only on machines where it measured faster than stock MLX.

| path        | fast                                               | stock                        |
|-------------|----------------------------------------------------|------------------------------|
| `attention` | `fast_attention.FastAttention` (poly exp2 softmax) | mlx-lm's Gemma 3 attention   |
| `gelu`      | `fast_gelu.FastMLP` (rational tanh, fused)         | mlx-lm's Gemma 3 MLP         |
| `quant`     | `fast_quant.FastQuantizedLinear` (dequant + GEMM)  | MLX's CPU `quantized_matmul` |
| `half`      | `fast_half.FastHalfLinear` (float32 GEMM)          | MLX's CPU bf16 / fp16 GEMM   |
| `rows`      | `cpu_parallel`: a row chunk per core and stream    | one stream, threaded BLAS    |

`attention` and `gelu` are written for Gemma 3's modules; other architectures get the others
(`why_not` says so, and `mlx-rsg info MODEL` prints it). `half` is given to every model's Linear
layers, float32 ones too (they run MLX's own call): a classifier casts its backbone to its
`dtype` after loading (`model/precision.py`).

Each gives the same numbers up to rounding (tested in its module); which is faster depends on
the CPU, the BLAS and whether MLX finds `g++` to fuse compiled kernels (the fast attention ran
~10x *slower* than stock on one Xeon with MKL). So the first time a model of given shapes is
loaded on a machine, `decide` times each path against stock on those shapes (synthetic Gemma 3
blocks; ~8 s), keeps the result in `cache_dir()/fastpaths.json` keyed by the machine
(CPU model, cores, MLX, BLAS, compiler), and `mlx-rsg info` reports it. A path is used where
it is at least MIN_SPEEDUP faster. `MLX_RSG_FAST_PATHS` overrides: `auto` (default), `all`,
`none`, or a comma list of the paths to use.

`apply(model, config)` gives *our* model's modules the fast classes (an instance's class is swapped
for a subclass); mlx-lm itself and any other model in the process stay as they are. On a GPU
nothing is applied.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import gemma3_text
from mlx_lm.models.base import create_attention_mask

from mlx_rsg.accel import blas
from mlx_rsg.accel.blas import cache_dir
from mlx_rsg.accel.cpu_parallel import cpu_cores, row_parallel
from mlx_rsg.accel.fast_half import FastHalfLinear
from mlx_rsg.accel.fast_quant import FastQuantizedLinear
from mlx_rsg.accel.memory import freed_buffers_kept
from mlx_rsg.arch.fast_attention import FastAttention, attention, stock_attention
from mlx_rsg.arch.fast_gelu import FastMLP, gelu_mul, stock_gelu_mul
from mlx_rsg.io import atomic_file
from mlx_rsg.version import __version__

PATHS = ("attention", "gelu", "quant", "half", "rows")
MIN_SPEEDUP = 1.05  # below this the stock kernel stays: within noise, and it is MLX's own
_GEMMA = {"gemma3", "gemma3_text"}


@dataclass(frozen=True)
class Shapes:
    """The model dimensions the micro-benchmarks run at (a batch of 8 x 128 tokens)."""

    hidden: int = 640
    intermediate: int = 2048
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 256
    layers: int = 18
    batch: int = 8
    length: int = 128

    @classmethod
    def of(cls, config: dict[str, Any]) -> Shapes:
        heads = config.get("num_attention_heads", cls.heads)
        return cls(
            hidden=config["hidden_size"],
            intermediate=config.get("intermediate_size", 4 * config["hidden_size"]),
            heads=heads,
            kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim", config["hidden_size"] // heads),
            layers=config.get("num_hidden_layers", cls.layers),
        )

    def key(self) -> str:
        return "x".join(str(v) for v in asdict(self).values())


@dataclass
class Timing:
    stock_ms: float
    fast_ms: float

    @property
    def speedup(self) -> float:
        return self.stock_ms / self.fast_ms

    @property
    def use(self) -> bool:
        return self.speedup >= MIN_SPEEDUP


# --------------------------------------------------------------------------- measuring


def _best_ms(fns: dict[str, Any], rounds: int = 5) -> dict[str, float]:
    """Best wall time of each evaluated fn() in ms, the fns alternating round by round."""
    for fn in fns.values():
        mx.eval(fn())  # warm-up: compilation, first allocations
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            mx.eval(fn())
            best[name] = min(best[name], (time.perf_counter() - t) * 1e3)
    return best


def _block(s: Shapes):
    args = gemma3_text.ModelArgs(
        model_type="gemma3_text", hidden_size=s.hidden, intermediate_size=s.intermediate,
        num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, head_dim=s.head_dim,
        num_hidden_layers=1, vocab_size=16, query_pre_attn_scalar=s.head_dim,
    )  # fmt: skip
    block = gemma3_text.TransformerBlock(args, 0)
    mx.eval(block.parameters())
    return block


def time_attention(s: Shapes) -> Timing:
    q = mx.random.normal((s.batch, s.heads, s.length, s.head_dim))
    k, v = (mx.random.normal((s.batch, s.kv_heads, s.length, s.head_dim)) for _ in range(2))
    scale = s.head_dim**-0.5
    t = _best_ms({
        "stock": lambda: stock_attention(q, k, v, cache=None, scale=scale, mask="causal"),
        "fast": lambda: attention(q, k, v, scale=scale, mask="causal"),
    })  # fmt: skip
    return Timing(t["stock"], t["fast"])


def time_gelu(s: Shapes) -> Timing:
    gate, up = (mx.random.normal((s.batch, s.length, s.intermediate)) for _ in range(2))
    t = _best_ms({"stock": lambda: stock_gelu_mul(gate, up), "fast": lambda: gelu_mul(gate, up)})
    return Timing(t["stock"], t["fast"])


def time_quant(s: Shapes, bits: int = 4, group_size: int = 64, rows: int = 32) -> Timing | None:
    """A quantized projection of the model's widths whose input fits the group (None when no
    width does: such a model has no quantized layer of that group size to time)."""
    fitting = [(n_in, n_out) for n_in, n_out in ((s.hidden, s.intermediate),
                                                 (s.intermediate, s.hidden))
               if n_in % group_size == 0]  # fmt: skip
    if not fitting:
        return None
    n_in, n_out = fitting[0]
    layer = nn.QuantizedLinear.from_linear(nn.Linear(n_in, n_out, bias=False),
                                           group_size=group_size, bits=bits)  # fmt: skip
    return _time_layer(layer, mx.random.normal((rows, n_in)), nn.QuantizedLinear,
                       FastQuantizedLinear)  # fmt: skip


def time_half(s: Shapes, rows: int = 256) -> Timing:
    """A bfloat16 projection of the model's widths on a batch's rows."""
    layer = nn.Linear(s.hidden, s.intermediate, bias=False)
    layer.set_dtype(mx.bfloat16)
    x = mx.random.normal((rows, s.hidden)).astype(mx.bfloat16)
    return _time_layer(layer, x, nn.Linear, FastHalfLinear)


def _time_layer(layer: nn.Module, x: mx.array, stock: type, fast: type) -> Timing:
    """One layer on x with its stock class's call against its fast subclass's."""
    mx.eval(layer.parameters(), x)
    t = _best_ms({"stock": lambda: stock.__call__(layer, x),
                  "fast": lambda: fast.__call__(layer, x)}, rounds=3)  # fmt: skip
    return Timing(t["stock"], t["fast"])


def time_rows(s: Shapes, fast_attention: bool = True, fast_gelu: bool = True,
              cores: int | None = None) -> Timing | None:  # fmt: skip
    """A forward through the model's depth of Gemma 3 blocks (with the attention and GELU that
    will run): one stream vs a row chunk per core. Splitting rows has a fixed cost per call
    (streams, BLAS threads, the join) and a gain per block, so a short stack misjudges it (on
    this project's 2-core box: 0.86x at 2 blocks, 0.99x at 6, 1.05x for the 18-layer model).
    Timed at 2 and 6 synthetic blocks, extrapolated linearly to `s.layers` (a single block was
    too noisy to extrapolate from). `cores`: the process's (default: the machine's)."""
    cores = cores or cpu_cores()
    if cores < 2:
        return None
    stack = [_block(s) for _ in range(6)]
    for block in stack:
        if fast_attention:
            block.self_attn.__class__ = FastAttention
        if fast_gelu:
            block.mlp.__class__ = FastMLP
    h = mx.random.normal((s.batch, s.length, s.hidden))

    def forward(x, depth):
        mask = create_attention_mask(x, None)
        for block in stack[:depth]:
            x = block(x, mask, None)
        return x

    t = _best_ms({
        f"{kind}{depth}": (lambda d=depth: forward(h, d)) if kind == "stock"
        else (lambda d=depth: row_parallel(lambda x: forward(x, d), h, parts=cores))
        for kind in ("stock", "fast") for depth in (2, 6)
    }, rounds=3)  # fmt: skip

    def at_depth(kind: str) -> float:
        # Tiny blocks can time 6 faster than 2 (noise): never extrapolate a negative cost.
        per_block = max(t[f"{kind}6"] - t[f"{kind}2"], 0.0) / 4
        return t[f"{kind}2"] + per_block * (s.layers - 2)

    return Timing(at_depth("stock"), at_depth("fast"))


def measure(shapes: Shapes, paths: tuple[str, ...] = PATHS, known: dict[str, Timing] | None = None,
            cores: int | None = None) -> dict[str, Timing]:  # fmt: skip
    """Time each of `paths` against stock on `shapes` (rows: only with 2+ cores, on synthetic
    Gemma 3 blocks of the model's dimensions, with the attention and GELU that `known` or this
    measurement chose)."""
    out = dict(known or {})
    with freed_buffers_kept():  # the allocator setting the mlx-rsg commands run with
        for name in paths:
            if name == "rows":
                # the kernels that will run: stock where not measured (other architectures)
                chosen = {p: p in out and out[p].use for p in ("attention", "gelu")}
                timing = time_rows(shapes, chosen["attention"], chosen["gelu"], cores)
            else:
                timers = {"attention": time_attention, "gelu": time_gelu, "quant": time_quant,
                          "half": time_half}  # fmt: skip
                timing = timers[name](shapes)
            if timing is not None:
                out[name] = timing
    return {p: out[p] for p in paths if p in out}


# --------------------------------------------------------------------------- the cache


def machine(cores: int | None = None) -> dict[str, Any]:
    """What a timing depends on besides the shapes; `cores`: the process's (default: the
    machine's)."""
    return {
        "cpu": cpu_model(),
        "cores": cores or cpu_cores(),
        "mlx": mx.__version__,
        "mlx_rsg": __version__,
        "blas": blas.describe(),
        "cxx": bool(shutil.which("g++")),  # MLX's CPU compile fuses kernels only with g++
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.read().split("\n\n")[0].splitlines()
        pairs = (line.split(":", 1) for line in lines if ":" in line)
        fields = {k.strip(): v.strip() for k, v in pairs}
        keys = ("model name", "cpu family", "model", "stepping", "CPU implementer", "CPU part")
        return " / ".join(fields[k] for k in keys if k in fields) or platform.processor()
    except OSError:
        return f"{platform.machine()} {platform.processor()}".strip()


def _machine_key(m: dict[str, Any]) -> str:
    return json.dumps(m, sort_keys=True)


def cache_path():
    return cache_dir() / "fastpaths.json"


def _read_cache() -> dict[str, Any]:
    try:
        value = json.loads(cache_path().read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: measure again


def _cached(data: dict[str, Any], mkey: str, shapes: Shapes) -> dict[str, Timing]:
    entry = data.get(mkey, {}).get(shapes.key(), {})
    return {
        name: Timing(t["stock_ms"], t["fast_ms"])
        for name, t in entry.get("paths", {}).items()
        if isinstance(t, dict) and name in PATHS
    }


def timings(shapes: Shapes, paths: tuple[str, ...] = PATHS, log=None,
            cores: int | None = None) -> dict[str, Timing]:  # fmt: skip
    """Cached timings of `paths` on this machine for a process with `cores` (default: all),
    measuring (and caching) the missing ones."""
    data, mkey = _read_cache(), _machine_key(machine(cores))
    have = _cached(data, mkey, shapes)
    missing = tuple(p for p in paths if p not in have)
    if missing:
        if log:
            log(f"fast paths: timing {', '.join(missing)} against stock MLX on this machine "
                "(once; cached)")  # fmt: skip
        have.update(measure(shapes, missing, known=have, cores=cores))
        data = _read_cache()  # again: another process may have added its own timings meanwhile
        data.setdefault(mkey, {})[shapes.key()] = {
            "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "paths": {n: {"stock_ms": t.stock_ms, "fast_ms": t.fast_ms} for n, t in have.items()},
        }
        try:
            with atomic_file(cache_path()) as f:
                json.dump(data, f, indent=1)
        except OSError:
            pass  # a read-only home: decide again next time
    return {p: have[p] for p in paths if p in have}


# --------------------------------------------------------------------------- deciding


def _override() -> set[str] | None:
    """The paths MLX_RSG_FAST_PATHS forces on, or None for `auto`."""
    value = os.environ.get("MLX_RSG_FAST_PATHS", "auto").strip().lower()
    if value in ("", "auto"):
        return None
    if value == "all":
        return set(PATHS)
    if value == "none":
        return set()
    return {p.strip() for p in value.split(",") if p.strip()}


def decide(shapes: Shapes, paths: tuple[str, ...] = PATHS, log=None,
           cores: int | None = None) -> dict[str, bool]:  # fmt: skip
    """Which of `paths` to use on this machine, for a process with `cores` of its cores
    (default: all; False for every path on a GPU)."""
    if mx.default_device() != mx.cpu:
        return dict.fromkeys(paths, False)
    forced = _override()
    if forced is not None:
        return {p: p in forced for p in paths}
    measured = timings(shapes, paths, log, cores)
    return {p: p in measured and measured[p].use for p in paths}


def _swap(model: nn.Module, stock: type, fast: type, use: bool) -> None:
    """Give every `stock` (or `fast`) module of model the class `fast` (use) or `stock`."""
    for m in model.modules():
        if type(m) in (stock, fast):
            m.__class__ = fast if use else stock


def apply(model: nn.Module, config: dict[str, Any], log=None, use: dict[str, bool] | None = None,
          cores: int | None = None):  # fmt: skip
    """Decide (or take `use`) and give model's modules the fast classes that win here, for a
    process with `cores` (default: all of the machine's); returns {path: used}."""
    quantized = any(isinstance(m, nn.QuantizedLinear) for m in model.modules())
    if use is None:
        relevant = tuple(p for p in PATHS if not why_not(p, config, quantized))
        use = decide(Shapes.of(config), relevant, log, cores)
    if "attention" in use:
        _swap(model, gemma3_text.Attention, FastAttention, use["attention"])
    if "gelu" in use:
        _swap(model, gemma3_text.MLP, FastMLP, use["gelu"])
    if "quant" in use:
        _swap(model, nn.QuantizedLinear, FastQuantizedLinear, use["quant"])
    if "half" in use:
        _swap(model, nn.Linear, FastHalfLinear, use["half"])
    return use  # `rows` is for the caller: runtime.place keeps it on the model's Runtime


def why_not(path: str, config: dict[str, Any], quantized: bool) -> str | None:
    """Why `path` does not apply to a model (None: it does). The attention and GELU kernels are
    written for Gemma 3's modules; other architectures run mlx-lm's own."""
    if path in ("attention", "gelu") and config.get("model_type") not in _GEMMA:
        return f"Gemma 3 only; {config.get('model_type')} runs mlx-lm's own"
    if path == "quant" and not quantized:
        return "the model is not quantized"
    return None


def report(
    config: dict[str, Any] | None = None, quantized: bool = True, log=print
) -> dict[str, Timing]:
    """Print each path's timing on this machine (measured now if not cached) and the choice, for
    the model with `config` (default: Gemma-3-270M's shapes)."""
    shapes = Shapes.of(config) if config else Shapes()
    forced = _override()
    paths = tuple(p for p in PATHS if not (config and why_not(p, config, quantized)))
    measured = timings(shapes, paths)
    for name in PATHS:
        t = measured.get(name)
        reason = why_not(name, config, quantized) if config else None
        if t is None:
            untimed = "one core" if name == "rows" else "no width a multiple of the group"
            log(f"  {name:<9} n/a ({reason or untimed})")
            continue
        on = t.use if forced is None else name in forced
        how = "" if forced is None else " (MLX_RSG_FAST_PATHS)"
        log(f"  {name:<9} stock {t.stock_ms:7.1f} ms  fast {t.fast_ms:7.1f} ms  "
            f"{t.speedup:5.2f}x  -> {'fast' if on else 'stock'}{how}")  # fmt: skip
    return measured
