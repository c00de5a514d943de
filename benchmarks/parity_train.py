"""Training parity: `mlx-rsg train` against a PyTorch + transformers (+ PEFT for LoRA) reference.

    python benchmarks/parity_train.py --model MODEL_DIR --data RSG_DIR   # e.g. the converted
                                                                          # Gemma-3-270M, real RSG

The reference is the same classifier written in PyTorch: the backbone's final hidden states
(transformers' AutoModel of MODEL_DIR), pooled at the last token (or averaged over marked spans),
RMS-normalised without a scale, one zero-initialised linear head per task; mean cross-entropy (a
softmax over each group's scores for choice tasks); AdamW with the heads at --head-lr and the
backbone at --lr, linear warmup and decay, gradients summed over --grad-accum batches and
divided. `freeze` trains the blocks above --freeze-layers and the final norm; `lora` trains PEFT's
LoRA on the same projections, its A matrices copied from the MLX run's initial ones (B starts at
zero in both). Both sides see the same batches: the MLX run is `mlx_rsg.train.loop.train` itself
(its losses.jsonl), the reference replays `train.plan.epoch_plan` with the same config.
Writes benchmarks/results/parity.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import mlx_rsg  # noqa: F401, I001  (first: the BLAS before mlx)

HERE = Path(__file__).parent


# ------------------------------------------------------------------------------- MLX side


def mlx_losses(model_dir: Path, data_dir: Path, cfg, work: Path) -> list[float]:
    """Per-batch training losses of a real `train` run (its losses.jsonl, in batch order)."""
    from mlx_rsg.train.loop import train

    run = work / "run"
    train(model_dir, data_dir, run, cfg, log=lambda m: None)
    rows = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines() if x.strip()]
    return [r["loss"] for r in sorted(rows, key=lambda r: r["batch"])]


def mlx_initial_lora(model_dir: Path, cfg) -> dict[str, np.ndarray]:
    """The LoRA A matrices `train` starts from ({"layers.I.self_attn.q_proj": (in, r)}): the
    classifier built exactly as train builds it, from the same seed."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_rsg.model.backbone import load_backbone
    from mlx_rsg.model.classifier import RSGClassifier
    from mlx_rsg.train.config import classifier_config, heads_for

    bb = load_backbone(model_dir)
    mx.random.seed(cfg.seed)
    model = RSGClassifier(bb, classifier_config(cfg, bb.num_layers), heads_for(cfg.tasks))
    return {
        k.removeprefix("lm.model.").removesuffix(".lora_a"): np.array(v)
        for k, v in tree_flatten(model.parameters())
        if k.endswith(".lora_a")
    }


def batches_of(model_dir: Path, data_dir: Path, cfg) -> list[list]:
    """Every epoch's batches as train sees them (train/plan.py), as numpy arrays."""
    from mlx_rsg.model.backbone import load_tokenizer
    from mlx_rsg.train.plan import epoch_plan, load_task_data, max_lens

    data = load_task_data(data_dir, cfg, log=lambda m: None)
    tokenizer = load_tokenizer(model_dir)
    lengths = max_lens(cfg, data, tokenizer)
    out = []
    for epoch in range(cfg.epochs):
        out.append([
            {
                "tokens": np.array(b.tokens, np.int64),
                "lengths": np.array(b.lengths, np.int64),
                "labels": np.array(b.labels, np.int64),
                "groups": None if b.groups is None else np.array(b.groups, np.int64),
                "spans": None if b.spans is None else np.array(b.spans, np.int64),
                "head": b.head,
            }
            for b in epoch_plan(data, tokenizer, cfg, epoch, lengths)
        ])  # fmt: skip
    return out


# ------------------------------------------------------------------------- PyTorch side


def torch_classifier(model_dir: Path, cfg, lora_a: dict[str, np.ndarray]):
    """(module, head parameter names): the reference classifier, trainable as cfg.method says."""
    from transformers import AutoModel

    from mlx_rsg.tasks import REGISTRY
    from mlx_rsg.train.config import classifier_config, heads_for

    backbone = AutoModel.from_pretrained(model_dir, dtype=torch.float32,
                                         attn_implementation="eager")  # fmt: skip
    n = backbone.config.num_hidden_layers
    k = classifier_config(cfg, n).freeze_layers
    backbone.requires_grad_(False)
    if cfg.method == "freeze":
        for layer in backbone.layers[k:]:
            layer.requires_grad_(True)
        if k < n:
            backbone.norm.requires_grad_(True)
    elif cfg.method == "lora":
        backbone = _with_lora(backbone, cfg, list(range(k, n)), lora_a)
    else:
        raise ValueError(f"parity covers freeze and lora, not {cfg.method}")
    hidden = backbone.config.hidden_size
    spans = {REGISTRY[t].head: max(1, REGISTRY[t].spans) for t in cfg.tasks}
    heads = torch.nn.ModuleDict()
    for name, n_out in heads_for(cfg.tasks).items():
        head = torch.nn.Linear(hidden * spans[name], n_out)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        heads[name] = head
    return Reference(backbone, heads)


def _with_lora(backbone, cfg, layers: list[int], lora_a: dict[str, np.ndarray]):
    from peft import LoraConfig, get_peft_model

    # A regex over module names (PEFT full-matches it): the targets of the top blocks only.
    names = "|".join(re.escape(t) for t in cfg.lora_targets)
    targets = rf"layers\.({'|'.join(map(str, layers))})\.(.*\.)?({names})"
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                        target_modules=targets, bias="none")  # fmt: skip
    model = get_peft_model(backbone, config)
    copied = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            key = name[name.find("layers."):] if "layers." in name else None
            if key in lora_a and hasattr(module, "lora_A"):
                module.lora_A["default"].weight.copy_(torch.from_numpy(lora_a[key].T.copy()))
                torch.nn.init.zeros_(module.lora_B["default"].weight)
                copied += 1
    if copied != len(lora_a):
        raise RuntimeError(f"copied {copied} of {len(lora_a)} LoRA A matrices into PEFT")
    return model


class Reference(torch.nn.Module):
    """The classifier in PyTorch: backbone, pooling, RMS normalisation, a linear head per task."""

    def __init__(self, backbone, heads: torch.nn.ModuleDict):
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    def forward(self, batch: dict) -> torch.Tensor:
        tokens = torch.from_numpy(batch["tokens"])
        lengths = torch.from_numpy(batch["lengths"])
        h = self.backbone(input_ids=tokens).last_hidden_state  # the final norm applied
        B, L, _ = h.shape
        pos = torch.arange(L)[None, None, :]
        if batch["spans"] is not None:
            spans = torch.from_numpy(batch["spans"])
            w = ((pos >= spans[..., :1]) & (pos < spans[..., 1:])).float()
        else:
            w = (pos == (lengths - 1)[:, None, None]).float()
        w = w / w.sum(-1, keepdim=True).clamp_min(1.0)
        x = w @ h  # (B, S, D)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.heads[batch["head"]](x.reshape(B, -1))


def reference_loss(model, batch: dict):
    logits = model(batch)
    labels = torch.from_numpy(batch["labels"])
    if batch["groups"] is None:
        return torch.nn.functional.cross_entropy(logits, labels)
    scores, groups = logits[:, 0], torch.from_numpy(batch["groups"])
    member = groups[None, :] == torch.arange(int(groups.max()) + 1)[:, None]
    masked = torch.where(member, scores[None, :], torch.tensor(-math.inf))
    gold = (member * (labels == 1)[None, :] * scores[None, :]).sum(1)
    return (torch.logsumexp(masked, 1) - gold).mean()


def reference_losses(model_dir: Path, epochs: list[list], cfg, lora_a) -> list[float]:
    """Per-batch losses of the reference trained on the same batches with the same schedule."""
    torch.manual_seed(cfg.seed)
    model = torch_classifier(model_dir, cfg, lora_a)
    heads = list(model.heads.parameters())
    rest = [p for n, p in model.named_parameters()
            if p.requires_grad and not n.startswith("heads.")]  # fmt: skip
    groups = [{"params": heads, "lr": cfg.head_lr}, {"params": rest, "lr": cfg.lr}]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    total = math.ceil(len(epochs[0]) / cfg.grad_accum) * cfg.epochs
    warmup = cfg.warmup

    def factor(step: int) -> float:  # transformers' get_linear_schedule_with_warmup
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [factor, factor])
    model.train()
    losses = []
    for batches in epochs:
        n_accum = 0
        for i, batch in enumerate(batches):
            loss = reference_loss(model, batch)
            loss.backward()
            losses.append(loss.item())
            n_accum += 1
            if n_accum == cfg.grad_accum or i == len(batches) - 1:
                for p in heads + rest:
                    # MLX's optimizers update every trainable parameter each step: a head no
                    # batch of this step used gets a zero gradient (its momentum carries on, its
                    # weight decays). PyTorch would skip a parameter whose .grad is None, so the
                    # reference gives it zeros: the same AdamW.
                    p.grad = torch.zeros_like(p) if p.grad is None else p.grad / n_accum
                opt.step()
                sched.step()
                opt.zero_grad()
                n_accum = 0
    return losses


# ----------------------------------------------------------------------------- compare


def compare(model_dir: Path, data_dir: Path, cfg) -> dict:
    """Both runs on the same batches; the per-batch losses side by side."""
    cfg = dataclasses.replace(cfg, dropout=0.0, adapter_dropout=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        ours = mlx_losses(model_dir, data_dir, cfg, Path(tmp))
    lora_a = mlx_initial_lora(model_dir, cfg) if cfg.method == "lora" else {}
    epochs = batches_of(model_dir, data_dir, cfg)
    ref = reference_losses(model_dir, epochs, cfg, lora_a)
    if len(ours) != len(ref):
        raise RuntimeError(f"{len(ours)} MLX batches but {len(ref)} reference batches")
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, ref, strict=True)]
    return {
        "method": cfg.method,
        "batches": len(ours),
        "steps": math.ceil(len(epochs[0]) / cfg.grad_accum) * cfg.epochs,
        "max_rel_diff": max(rel),
        "mlx": ours,
        "reference": ref,
    }


def table(result: dict) -> str:
    lines = ["| method | batches | optimizer steps | first loss (MLX / torch) | last loss (MLX / "
             "torch) | max relative difference |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["runs"]:
        lines.append(f"| {r['method']} | {r['batches']} | {r['steps']} | {r['mlx'][0]:.5f} / "
                     f"{r['reference'][0]:.5f} | {r['mlx'][-1]:.5f} / {r['reference'][-1]:.5f} | "
                     f"{r['max_rel_diff']:.1e} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a converted model directory")
    ap.add_argument("--data", type=Path, required=True, help="RSG data directory")
    ap.add_argument("--tasks", default="TERRa,RCB,PARus")
    ap.add_argument("--freeze-layers", type=int, default=16, help="bottom layers frozen")
    ap.add_argument("--examples", type=int, default=32, help="training examples per task")
    ap.add_argument("--max-len", type=int, default=96)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "parity.json")
    args = ap.parse_args()

    import transformers

    from mlx_rsg.train.config import TrainConfig
    from mlx_rsg.version import __version__

    runs = []
    for method in ("freeze", "lora"):
        cfg = TrainConfig(tasks=tuple(args.tasks.split(",")), method=method,
                          freeze_layers=args.freeze_layers, epochs=1, lr=1e-4, head_lr=1e-3,
                          warmup=3, batch_size=4, grad_accum=1, max_len=args.max_len,
                          max_train_per_task=args.examples, max_eval_per_task=8,
                          checkpoint_every=1000, lora_targets=("q_proj", "k_proj", "v_proj",
                                                               "o_proj"))  # fmt: skip
        runs.append(compare(args.model, args.data, cfg))
        print(f"{method}: max relative loss difference {runs[-1]['max_rel_diff']:.1e} over "
              f"{runs[-1]['batches']} batches", file=sys.stderr)  # fmt: skip
    result = {
        "benchmark": "parity_train",
        "model": str(args.model),
        "data": str(args.data),
        "tasks": args.tasks,
        "versions": {"mlx_rsg": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},  # fmt: skip
        "machine": f"{platform.machine()} {platform.system()}",
        "runs": runs,
    }
    from results_io import save  # benchmarks/results_io.py, beside this script

    save(args.out, result, table(result))


if __name__ == "__main__":
    main()
