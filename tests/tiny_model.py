"""A tiny random Gemma 3 model directory for tests: config.json, model.safetensors and a real
SentencePiece tokenizer, loadable by backbone.load_backbone / load_tokenizer like a converted model.

Two layers with a sliding window of 8 and pattern 2, so both the sliding and the global attention
masks are exercised on short inputs. Builds in well under a second.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

_CORPUS = [
    "Мама мыла раму. Кошка сидит на окне, а собака спит во дворе.",
    "Если завтра пойдёт дождь, мы останемся дома и будем читать книги.",
    "Студент сдал экзамен, потому что много занимался. Да, нет, верно.",
    "The cat sat on the mat. Entailment, contradiction, neutral.",
    "Президент подписал закон. Компания объявила о банкротстве в понедельник.",
]


def write_sentencepiece_tokenizer(out: str | Path, corpus: list[str], vocab: int = 400) -> Path:
    """Train a SentencePiece BPE tokenizer on `corpus` (Gemma's settings: byte fallback, no dummy
    prefix, identity normaliser; pad 0, eos 1, bos 2, unk 3) and write tokenizer.model and a
    GemmaTokenizer tokenizer_config.json into `out`."""
    import sentencepiece as spm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus) * 20),
        model_writer=buf,
        vocab_size=vocab,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GemmaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
            }
        )
    )
    return out


def build_tiny_model(
    out: str | Path,
    *,
    layers: int = 2,
    hidden: int = 32,
    seed: int = 0,
    vocab: int = 400,
    head_dim: int = 16,
) -> Path:
    """Write a tiny random gemma3_text model directory to `out` and return its path."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import gemma3_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    write_sentencepiece_tokenizer(out, _CORPUS, vocab)

    config = {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": hidden * 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": head_dim,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab + 16,  # room for pieces the tokenizer adds
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "query_pre_attn_scalar": head_dim,
        "sliding_window": 8,
        "sliding_window_pattern": 2,
        "max_position_embeddings": 512,
        "torch_dtype": "float32",
    }
    mx.random.seed(seed)
    model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(config))
    # Random init of norms is all-zero (Gemma norms are 1+w); perturb so layers are not no-ops.
    weights = {k: v for k, v in tree_flatten(model.parameters()) if not k.startswith("lm_head")}
    weights = {
        k: (v + 0.1 * mx.random.normal(v.shape) if "norm" in k else v) for k, v in weights.items()
    }
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


_WORDS = (
    "мама мыла раму кошка сидит на окне собака спит во дворе студент сдал экзамен дождь "
    "книга закон компания президент завтра дома читать"
).split()
_CUES = {
    "entailment": "верно",
    "not_entailment": "ложно",
    "contradiction": "нет",
    "neutral": "может",
}


def write_tiny_rsg(root: str | Path, n_train: int = 48, n_val: int = 24, seed: int = 0) -> Path:
    """A learnable RSG-format dataset: TERRa, RCB, PARus (train/val/test) and LiDiRus. The label
    is given away by a cue word at the end of the hypothesis / choice, so a tiny model can learn
    it in a few dozen steps. Our own synthetic text, nothing copied from RSG."""
    import random

    rng = random.Random(seed)
    root = Path(root)

    def sent(k=6):
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, k))).capitalize()

    def nli(labels, n, with_label=True, lidirus=False):
        rows = []
        for i in range(n):
            lab = rng.choice(labels)
            a, b = sent(), sent(4) + " " + _CUES[lab]
            row = {"sentence1": a, "sentence2": b} if lidirus else {"premise": a, "hypothesis": b}
            row["idx"] = i
            if with_label:
                row["label"] = lab
            rows.append(row)
        return rows

    def parus(n, with_label=True):
        rows = []
        for i in range(n):
            lab = rng.randint(0, 1)
            choices = [sent(4) + " ложно", sent(4) + " ложно"]
            choices[lab] = choices[lab][: -len("ложно")] + "верно"
            row = {
                "premise": sent(),
                "choice1": choices[0],
                "choice2": choices[1],
                "question": rng.choice(["cause", "effect"]),
                "idx": i,
            }
            if with_label:
                row["label"] = lab
            rows.append(row)
        return rows

    def write(path, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    two, three = ["entailment", "not_entailment"], ["entailment", "contradiction", "neutral"]
    for task, make in (
        ("TERRa", lambda n, w: nli(two, n, w)),
        ("RCB", lambda n, w: nli(three, n, w)),
        ("PARus", parus),
    ):
        write(root / task / "train.jsonl", make(n_train, True))
        write(root / task / "val.jsonl", make(n_val, True))
        write(root / task / "test.jsonl", make(n_val, False))
    write(root / "LiDiRus" / "LiDiRus.jsonl", nli(two, n_val, True, lidirus=True))
    return root


# Fixtures for the train/predict tests (import them into a test module to use them).

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_rsg_dir(tmp_path_factory) -> Path:
    return write_tiny_rsg(tmp_path_factory.mktemp("tiny-rsg"))


def tiny_train_config(**overrides):
    """A seconds-long configuration for the tiny model: high learning rates, no warmup."""
    from mlx_rsg.train import TrainConfig

    base = dict(
        tasks=("TERRa", "RCB", "PARus"),
        freeze_layers=1,
        epochs=3,
        lr=1e-3,
        head_lr=1e-2,
        warmup=2,
        batch_size=8,
        grad_accum=1,
        max_len=64,
        checkpoint_every=3,
    )
    base.update(overrides)
    return TrainConfig(**base)
