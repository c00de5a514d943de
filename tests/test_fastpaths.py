"""Per-machine fast paths: timed once against stock, cached per machine, applied to our models
only, overridable."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from mlx_lm.models import gemma3_text
from tiny_model import tiny_model_dir  # noqa: F401

from mlx_rsg.accel import cpu_parallel, fastpaths
from mlx_rsg.accel.fast_half import FastHalfLinear
from mlx_rsg.accel.fastpaths import Shapes, Timing
from mlx_rsg.arch.fast_attention import FastAttention
from mlx_rsg.arch.fast_gelu import FastMLP

TINY = Shapes(hidden=64, intermediate=128, heads=4, kv_heads=1, head_dim=16, batch=4, length=16)


@pytest.fixture
def auto(tmp_path, monkeypatch):
    """Decisions from timings (not the tests' MLX_RSG_FAST_PATHS=all), cached in tmp_path."""
    monkeypatch.setenv("MLX_RSG_FAST_PATHS", "auto")
    monkeypatch.setenv("MLX_RSG_CACHE", str(tmp_path))
    return tmp_path


def _fake_measure(monkeypatch, timings: dict[str, Timing]) -> list:
    calls = []

    def measure(shapes, paths, known=None, cores=None):
        calls.append(paths)
        return {p: timings[p] for p in paths if p in timings}

    monkeypatch.setattr(fastpaths, "measure", measure)
    return calls


def test_measure_times_every_path_for_real():
    got = fastpaths.measure(TINY)
    assert set(got) >= {"attention", "gelu", "quant", "half"}
    for t in got.values():
        assert t.stock_ms > 0 and t.fast_ms > 0


def test_decisions_follow_the_speedup_and_are_cached_per_machine(auto, monkeypatch):
    calls = _fake_measure(monkeypatch, {
        "attention": Timing(stock_ms=20.0, fast_ms=240.0),  # the Xeon + MKL case: much slower
        "gelu": Timing(stock_ms=56.0, fast_ms=5.0),
        "quant": Timing(stock_ms=10.0, fast_ms=9.8),  # within MIN_SPEEDUP: stock stays
        "half": Timing(stock_ms=160.0, fast_ms=4.0),
        "rows": Timing(stock_ms=100.0, fast_ms=80.0),
    })  # fmt: skip
    want = {"attention": False, "gelu": True, "quant": False, "half": True, "rows": True}
    assert fastpaths.decide(TINY) == want
    assert fastpaths.decide(TINY) == want
    assert len(calls) == 1  # the second decision came from the cache
    data = json.loads((auto / "fastpaths.json").read_text())
    (machine, entry), = data.items()
    assert json.loads(machine) == fastpaths.machine()
    assert entry[TINY.key()]["paths"]["attention"] == {"stock_ms": 20.0, "fast_ms": 240.0}
    other = Shapes(hidden=128, intermediate=256, heads=4, kv_heads=1, head_dim=32)
    fastpaths.decide(other, ("gelu",))
    assert calls[-1] == ("gelu",)  # other shapes are timed on their own


def test_another_machine_times_again(auto, monkeypatch):
    calls = _fake_measure(monkeypatch, {"gelu": Timing(10.0, 1.0)})
    fastpaths.decide(TINY, ("gelu",))
    # a rank with another share of the cores is another machine to time on
    fastpaths.decide(TINY, ("gelu",), cores=cpu_parallel.cpu_cores() + 1)
    assert len(calls) == 2
    monkeypatch.setattr(fastpaths, "machine", lambda cores=None: {"cpu": "another", "blas": "MKL"})
    fastpaths.decide(TINY, ("gelu",))
    assert len(calls) == 3


def test_a_damaged_cache_is_measured_again(auto, monkeypatch):
    (auto / "fastpaths.json").write_text("{not json")
    calls = _fake_measure(monkeypatch, {"gelu": Timing(10.0, 1.0)})
    assert fastpaths.decide(TINY, ("gelu",)) == {"gelu": True}
    assert calls and json.loads((auto / "fastpaths.json").read_text())


@pytest.mark.parametrize("value, want", [
    ("all", dict.fromkeys(fastpaths.PATHS, True)),
    ("none", dict.fromkeys(fastpaths.PATHS, False)),
    ("gelu, rows", {"attention": False, "gelu": True, "quant": False, "half": False,
                    "rows": True}),
])  # fmt: skip
def test_environment_overrides_without_timing(auto, monkeypatch, value, want):
    calls = _fake_measure(monkeypatch, {})
    monkeypatch.setenv("MLX_RSG_FAST_PATHS", value)
    assert fastpaths.decide(TINY) == want
    assert not calls


def test_nothing_on_a_gpu(auto, monkeypatch):
    monkeypatch.setattr(mx, "default_device", lambda: mx.gpu)
    assert fastpaths.decide(TINY) == dict.fromkeys(fastpaths.PATHS, False)


def test_fast_classes_go_to_our_model_only(tiny_model_dir):  # noqa: F811
    """A user's own mlx-lm model in the same process keeps mlx-lm's classes and code."""
    from mlx_lm.utils import load_model

    from mlx_rsg.model.backbone import load_backbone

    stock_call = gemma3_text.MLP.__call__, gemma3_text.Attention.__call__
    theirs, _ = load_model(tiny_model_dir)
    ours = load_backbone(tiny_model_dir)  # MLX_RSG_FAST_PATHS=all in the tests
    assert all(type(layer.mlp) is FastMLP for layer in ours.layers)
    assert all(type(layer.self_attn) is FastAttention for layer in ours.layers)
    assert all(type(layer.mlp) is gemma3_text.MLP for layer in theirs.model.layers)
    assert all(type(layer.self_attn) is gemma3_text.Attention for layer in theirs.model.layers)
    assert (gemma3_text.MLP.__call__, gemma3_text.Attention.__call__) == stock_call
    again, _ = load_model(tiny_model_dir)
    assert type(again.model.layers[0].mlp) is gemma3_text.MLP


def test_apply_can_switch_back_and_keeps_values(tiny_model_dir):  # noqa: F811
    from mlx_rsg.model.backbone import hidden_states, load_backbone

    bb = load_backbone(tiny_model_dir)
    tokens = mx.array([[2, 17, 45, 99, 3, 250, 7, 8, 9, 10]])
    fast = hidden_states(bb, tokens)
    fastpaths.apply(bb.model, bb.config, use={"attention": False, "gelu": False})
    assert type(bb.layers[0].self_attn) is gemma3_text.Attention
    stock = hidden_states(bb, tokens)
    assert mx.allclose(fast, stock, atol=1e-4).item()


TINY_CONFIG = {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128,
               "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16}  # fmt: skip


def test_report_prints_each_path(auto, monkeypatch):
    calls = _fake_measure(monkeypatch, {"attention": Timing(20.0, 240.0), "gelu": Timing(56.0, 5.0),
                                        "quant": Timing(10.0, 1.0),
                                        "half": Timing(160.0, 4.0)})  # fmt: skip
    lines = []
    fastpaths.report(TINY_CONFIG, quantized=True, log=lines.append)
    assert lines[0].split() == ["attention", "stock", "20.0", "ms", "fast", "240.0", "ms",
                                "0.08x", "->", "stock"]  # fmt: skip
    assert lines[1].endswith("11.20x  -> fast")
    assert lines[3].endswith("40.00x  -> fast")
    assert lines[4].split()[:2] == ["rows", "n/a"]
    # Another architecture: the Gemma 3 kernels are not timed and say so; so is an fp32 model.
    lines.clear()
    fastpaths.report({**TINY_CONFIG, "model_type": "llama"}, quantized=False, log=lines.append)
    assert lines[0] == "  attention n/a (Gemma 3 only; llama runs mlx-lm's own)"
    assert lines[1].startswith("  gelu      n/a (Gemma 3 only")
    assert lines[2] == "  quant     n/a (the model is not quantized)"
    assert calls[-1] == ("rows",)  # `half` is cached from the Gemma report: the same shapes


def test_a_llama_model_gets_no_gemma_kernels(tmp_path):
    """apply() gives another architecture no Gemma kernel: its MLP and attention stay mlx-lm's
    (its Linear layers get the half-precision path, as every model's do)."""
    from mlx_lm.models import llama

    args = llama.ModelArgs(model_type="llama", hidden_size=32, num_hidden_layers=1,
                           intermediate_size=64, num_attention_heads=4, rms_norm_eps=1e-5,
                           vocab_size=50)  # fmt: skip
    model = llama.Model(args)
    use = fastpaths.apply(model, {"model_type": "llama", "hidden_size": 32,
                                  "num_attention_heads": 4}, use=None)  # fmt: skip
    assert set(use) == {"half", "rows"}  # conftest: MLX_RSG_FAST_PATHS=all; no Gemma kernels
    assert type(model.model.layers[0].mlp) is llama.MLP
    assert type(model.model.layers[0].mlp.up_proj) is FastHalfLinear


def test_mlx_and_mlx_lm_unchanged_after_load_and_predict(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    """A user's own mlx-lm code in the same process runs what mlx and mlx-lm shipped: after
    mlx_rsg.load(run).predict(...) on an fp32 and a q4 run, with every fast path applied, no
    class method or module function is replaced and the allocator's cache limit is untouched."""
    import subprocess
    import sys
    import textwrap

    from tiny_model import tiny_train_config

    from mlx_rsg import train as T
    from mlx_rsg.quant.quantize import quantize

    run = tmp_path / "fp32"
    T.train(tiny_model_dir, tiny_rsg_dir, run, tiny_train_config(epochs=1), log=lambda m: None)
    quantize(run, tmp_path / "q4", bits=4, group_size=32, log=lambda m: None)
    script = textwrap.dedent(f"""
        import mlx.core as mx
        import mlx.nn as nn
        from mlx_lm.models import base, gemma3_text

        def shipped():
            return (nn.Linear.__call__, nn.QuantizedLinear.__call__, gemma3_text.MLP.__call__,
                    gemma3_text.Attention.__call__, gemma3_text.scaled_dot_product_attention,
                    base.scaled_dot_product_attention)

        before = shipped()
        limit = mx.set_cache_limit(12345)
        mx.set_cache_limit(limit)
        import mlx_rsg
        record = {{"idx": 0, "premise": "Кошка спит.", "hypothesis": "Животное спит."}}
        for run in ({str(run)!r}, {str(tmp_path / "q4")!r}):
            model = mlx_rsg.load(run)
            assert type(model.model.backbone.layers[0].mlp).__name__ == "FastMLP"
            print(model.predict("TERRa", [{{**record, "idx": i}} for i in range(5)])[0]["label"])
        assert shipped() == before, "a class or module function was replaced"
        assert mx.set_cache_limit(limit) == limit, "the allocator's cache limit changed"
    """)  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.split()) == 2


def test_the_quantized_path_is_timed_at_a_width_that_fits_the_group():
    """Issue 27, item 4: a model whose hidden width is not a multiple of the group size (the
    tiny model: hidden 32, group 64) still has quantized layers of the other width; timing at
    hidden raised from inside MLX and killed `quantize --bits 4`."""
    narrow = Shapes(hidden=32, intermediate=64, heads=2, kv_heads=1, head_dim=16, batch=2,
                    length=8)  # fmt: skip
    t = fastpaths.time_quant(narrow)
    assert t is not None and t.stock_ms > 0 and t.fast_ms > 0
    assert fastpaths.time_quant(Shapes(hidden=32, intermediate=48)) is None


def test_two_models_in_one_process_keep_their_own_runtime(tiny_model_dir, monkeypatch):  # noqa: F811
    """What one loaded model decided (fast paths, row splitting, kept dequantized weights)
    changes nothing for another loaded in the same process, before or after it."""
    import mlx.nn as nn
    from mlx_lm.utils import load_model

    from mlx_rsg.accel import fast_quant, runtime
    from mlx_rsg.model.backbone import load_backbone

    first = load_backbone(tiny_model_dir)  # MLX_RSG_FAST_PATHS=all in the tests: rows too
    model, config = load_model(tiny_model_dir)
    nn.quantize(model, group_size=64, bits=8, class_predicate=lambda _, m: isinstance(m, nn.Linear)
                and m.weight.shape[1] % 64 == 0)  # fmt: skip
    monkeypatch.setenv("MLX_RSG_DEQUANT_CACHE", "1")
    second = runtime.place(model, config, use={"attention": False, "rows": False, "quant": True})
    assert first.runtime.row_parts == cpu_parallel.cpu_cores() and second.row_parts == 1
    # a rank sharing the machine: its own row chunks, the first model's unchanged
    ranked = load_backbone(tiny_model_dir, cores=1)
    assert ranked.runtime.cores == ranked.runtime.row_parts == 1
    assert first.runtime.row_parts == first.runtime.cores == cpu_parallel.cpu_cores()
    assert first.runtime.fast_paths["attention"] and not second.fast_paths["attention"]
    assert type(first.layers[0].self_attn) is FastAttention
    assert type(model.model.layers[0].self_attn) is gemma3_text.Attention
    assert second.keep_dequantized and not first.runtime.keep_dequantized
    kept = [m.__dict__.get(fast_quant._KEEP_ATTR) for m in model.modules()
            if isinstance(m, nn.QuantizedLinear)]  # fmt: skip
    assert kept and all(kept)
    # scoring asks the model it scores how many row chunks to make
    asked = []
    monkeypatch.setattr(cpu_parallel, "_in_chunks", lambda make, rows, parts: asked.append(parts))
    cpu_parallel.model_rows(type("M", (), {"backbone": first})(), _batch())
    assert asked == [first.runtime.row_parts]


def _batch():
    from mlx_rsg.model.batching import Batch

    return Batch(tokens=mx.zeros((4, 3), dtype=mx.int32), lengths=mx.full((4,), 3), head="TERRa",
                 task="TERRa", labels=None, keys=list(range(4)),
                 ids=[("TERRa", i) for i in range(4)])  # fmt: skip
