"""STAND-INS for upstream modules that had not landed when the training loop was written.

`install()` registers minimal versions of mlx_rsg.{tasks, metrics, batching, model, features,
submission} ONLY for names that do not exist in the package, following the
contract in the training-interface notes (TERRa, RCB, PARus and LiDiRus only). Once the real
modules are committed, `install()` is a no-op for them and the tests run against the real code.
Never imported by the package itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
import zipfile
from dataclasses import dataclass, field

import mlx_rsg  # noqa: F401

INSTALLED: list[str] = []


def _missing(name: str) -> bool:
    if name in sys.modules:
        return False
    return importlib.util.find_spec(name) is None


def _module(name: str, **attrs) -> None:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__doc__ = "test stand-in (tests/standins.py)"
    sys.modules[name] = mod
    setattr(mlx_rsg, name.rsplit(".", 1)[1], mod)
    INSTALLED.append(name)


# ------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: tuple
    choice: bool
    pooling: str
    head: str
    metrics: tuple
    has_train: bool


TASK_SPECS = {
    "TERRa": TaskSpec(
        "TERRa", ("entailment", "not_entailment"), False, "last", "TERRa", ("accuracy",), True
    ),
    "LiDiRus": TaskSpec(
        "LiDiRus", ("entailment", "not_entailment"), False, "last", "TERRa", ("mcc",), False
    ),
    "RCB": TaskSpec(
        "RCB",
        ("entailment", "contradiction", "neutral"),
        False,
        "last",
        "RCB",
        ("f1", "accuracy"),
        True,
    ),
    "PARus": TaskSpec("PARus", (0, 1), True, "last", "PARus", ("accuracy",), True),
}


@dataclass
class Unit:
    task: str
    key: tuple
    group: int | None
    pieces: list
    label: int | None


def make_units(task, records, train=False, rng=None, max_negatives=None):
    spec = TASK_SPECS[task]
    units = []
    for r in records:
        if task == "PARus":
            for c, choice in enumerate((r.choice1, r.choice2)):
                lab = None if r.label is None else int(r.label == c)
                units.append(Unit(task, (r.idx, c), r.idx, [r.premise, r.question, choice], lab))
        else:
            lab = None if r.label is None else spec.labels.index(r.label)
            units.append(Unit(task, (r.idx,), None, [r.premise, r.hypothesis], lab))
    return units


def decode(task, records, unit_keys, scores):
    spec = TASK_SPECS[task]
    by_key = dict(zip(unit_keys, scores, strict=False))
    if spec.choice:
        return [int(by_key[(r.idx, 1)][0] > by_key[(r.idx, 0)][0]) for r in records]
    return [spec.labels[int(by_key[(r.idx,)].argmax())] for r in records]


# ------------------------------------------------------------------ metrics


def score_task(task, records, predictions):
    import numpy as np

    gold = [r.label for r in records]
    acc = float(np.mean([g == p for g, p in zip(gold, predictions, strict=False)]))
    if task == "LiDiRus":
        y = np.array([g == "entailment" for g in gold], float)
        x = np.array([p == "entailment" for p in predictions], float)
        mcc = 0.0 if x.std() == 0 or y.std() == 0 else float(np.corrcoef(x, y)[0, 1])
        return {"mcc": mcc}
    if task == "RCB":
        f1s = []
        for lab in TASK_SPECS["RCB"].labels:
            tp = sum(g == lab and p == lab for g, p in zip(gold, predictions, strict=False))
            fp = sum(g != lab and p == lab for g, p in zip(gold, predictions, strict=False))
            fn = sum(g == lab and p != lab for g, p in zip(gold, predictions, strict=False))
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        return {"f1": float(np.mean(f1s)), "accuracy": acc}
    return {"accuracy": acc}


def total_score(per_task):
    import numpy as np

    return float(np.mean([np.mean(list(m.values())) for m in per_task.values()]))


# ------------------------------------------------------------------ batching


@dataclass
class Batch:
    tokens: object
    lengths: object
    head: str
    task: str
    labels: object
    keys: list
    ids: list
    groups: object = None
    spans: object = None


def encode_units(units, tokenizer, max_len):
    out = []
    for u in units:
        text = " | ".join(p[0] if isinstance(p, tuple) else str(p) for p in u.pieces)
        ids = tokenizer.encode(text)[:max_len]
        out.append((u, ids))
    return out


def make_batches(encoded, batch_size, rng=None):
    import mlx.core as mx
    import numpy as np

    if not encoded:
        return []
    task = encoded[0][0].task
    spec = TASK_SPECS[task]
    per = 2 if spec.choice else 1
    groups = [encoded[i : i + per] for i in range(0, len(encoded), per)]
    groups.sort(key=lambda g: max(len(ids) for _, ids in g))
    step = max(1, batch_size // per)
    batches = []
    for i in range(0, len(groups), step):
        rows = [e for g in groups[i : i + step] for e in g]
        L = max(len(ids) for _, ids in rows)
        toks = np.zeros((len(rows), L), np.int32)
        for j, (_, ids) in enumerate(rows):
            toks[j, : len(ids)] = ids
        labels = [u.label for u, _ in rows]
        batches.append(
            Batch(
                mx.array(toks),
                mx.array([len(ids) for _, ids in rows]),
                spec.head,
                task,
                None if labels[0] is None else mx.array(labels),
                [u.key for u, _ in rows],
                [(task, u.key) for u, _ in rows],
            )
        )
    if rng is not None:
        rng.shuffle(batches)
    return batches


def loss_fn(model, batch, h0=None):
    import mlx.nn as nn

    logits = model(batch, h0)
    if TASK_SPECS[batch.task].choice:
        scores = logits[:, 0].reshape(-1, 2)
        target = batch.labels.reshape(-1, 2).argmax(axis=1)
        return nn.losses.cross_entropy(scores, target, reduction="mean"), scores.shape[0]
    return nn.losses.cross_entropy(logits, batch.labels, reduction="mean"), logits.shape[0]


# ------------------------------------------------------------------ model


@dataclass
class ClassifierConfig:
    method: str = "freeze"
    freeze_layers: int | None = None
    pooling: str = "last"
    dropout: float = 0.1
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_layers: int | None = None
    lora_targets: tuple = ("q_proj", "v_proj")
    adapter_size: int = 64
    adapter_layers: int | None = None
    adapter_dropout: float = 0.1
    max_len: int = 256
    extra: dict = field(default_factory=dict)


def _model_classes():
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_rsg.backbone import embed, final_norm, run_layers

    class RSGClassifier(nn.Module):
        def __init__(self, backbone, cfg, heads):
            super().__init__()
            self.backbone = backbone
            self.lm = backbone.model
            self.cfg = cfg
            self.heads = {
                name: nn.Linear(backbone.hidden_size, n, bias=False) for name, n in heads.items()
            }
            self.drop = nn.Dropout(cfg.dropout)
            self.k = backbone.num_layers if cfg.method == "heads" else (cfg.freeze_layers or 0)
            self.lm.freeze()
            for layer in backbone.layers[self.k :]:
                layer.unfreeze()
            if self.k < backbone.num_layers:
                backbone.decoder.norm.unfreeze()

        def trainable_start(self):
            return self.k

        def prefix(self, tokens):
            return run_layers(self.backbone, embed(self.backbone, tokens), 0, self.k)

        def __call__(self, batch, h0=None):
            h = self.prefix(batch.tokens) if h0 is None else h0
            h = final_norm(self.backbone, run_layers(self.backbone, h, self.k))
            pooled = h[mx.arange(h.shape[0]), batch.lengths - 1]
            return self.heads[batch.head](self.drop(pooled))

    return RSGClassifier


class PrefixCache:
    """Per-example layer-K inputs in RAM, assembled into right-padded batches."""

    def __init__(self, model, cache_dir=None):
        self.model = model
        self.store = {}

    def prefix(self, batch):
        import mlx.core as mx

        lengths = batch.lengths.tolist()
        missing = [j for j, i in enumerate(batch.ids) if i not in self.store]
        if missing:
            h = self.model.prefix(batch.tokens)
            mx.eval(h)
            for j in missing:
                self.store[batch.ids[j]] = h[j, : lengths[j]]
        L = batch.tokens.shape[1]
        rows = []
        for i in batch.ids:
            x = self.store[i]
            pad = mx.zeros((L - x.shape[0], x.shape[1]), x.dtype)
            rows.append(mx.concatenate([x, pad]) if L > x.shape[0] else x)
        return mx.stack(rows)


# ------------------------------------------------------------------ submission


def write_submission(out, by_task):
    with zipfile.ZipFile(out, "w") as z:
        for task, (records, preds) in by_task.items():
            lines = [
                json.dumps({"idx": r.idx, "label": p}, ensure_ascii=False)
                for r, p in zip(records, preds, strict=False)
            ]
            z.writestr(f"{task}.jsonl", "\n".join(lines) + "\n")


def install() -> list[str]:
    """Register stand-ins for every upstream name still missing; return what was installed."""
    g = globals()
    if _missing("mlx_rsg.tasks"):
        _module(
            "mlx_rsg.tasks",
            TASK_SPECS=TASK_SPECS,
            TaskSpec=TaskSpec,
            Unit=Unit,
            make_units=make_units,
            decode=decode,
        )
    if _missing("mlx_rsg.metrics"):
        _module("mlx_rsg.metrics", score_task=score_task, total_score=total_score)
    if _missing("mlx_rsg.batching"):
        _module(
            "mlx_rsg.batching",
            Batch=Batch,
            encode_units=encode_units,
            make_batches=make_batches,
            loss_fn=loss_fn,
        )
    if _missing("mlx_rsg.model"):
        _module("mlx_rsg.model", ClassifierConfig=ClassifierConfig, RSGClassifier=_model_classes())
    if _missing("mlx_rsg.features"):
        _module("mlx_rsg.features", PrefixCache=g["PrefixCache"])
    if _missing("mlx_rsg.submission"):
        _module("mlx_rsg.submission", write_submission=write_submission)
    for name in ("mlx_rsg.tasks",):
        importlib.import_module(name)
    return INSTALLED
