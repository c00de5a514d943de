"""Heads that start from the language model's own answer: `--head-init label-words`.

With `--prompt answer` a unit ends where the model would write its answer (`tasks.Answer`), and
its logit for word w there is final_norm(h) . E[w], E the output projection (Gemma's and
SmolLM2's tied input embedding). Our heads read that pooled state RMS-normalised without a
scale (classifier.py), x = n / rms(n) with n = final_norm(h); so a head whose rows are s . E[w],
s the pooled states' typical rms(n), starts at the model's logits for the label words: a label
task's softmax over its words, a choice task's score logit(yes) - logit(no). A word that is
several tokens is represented by its first, the token the model would write first. PET and
LM-BFF report large gains from such a start at small data with larger models; at 270M the prior
is weak (docs/training.md, "Label words, measured").
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx

from mlx_rsg.model.backbone import output_rows
from mlx_rsg.model.batching import make_batches
from mlx_rsg.tasks import REGISTRY

SAMPLE = 16  # training units per task the scale s is measured on


def label_word_heads(model, tokenizer, encoded: dict[str, Sequence], batch_size: int) -> dict:
    """Set the head of every task in `encoded` (task -> its encoded training units) that has an
    `Answer` to its label words' rows, scaled by the mean RMS of final_norm at the pooled
    position over the task's first SAMPLE units; bias zero. Returns {head: scale}. The heads
    of tasks without an answer (span-pooled RUSSE, RWSD; RuCoS) stay as they are."""
    scales = {}
    for task, units in encoded.items():
        spec = REGISTRY[task]
        if spec.answer is None or spec.head not in model.heads or not units:
            continue
        ids = [word_token(tokenizer, w) for w in spec.answer.words]
        rows = output_rows(model.backbone, ids)
        if spec.choice:  # one score per candidate: how much more "yes" than "no"
            no, yes = rows[0], rows[1]
            rows = (yes - no)[None]
        scale = pooled_rms(model, units[:SAMPLE], batch_size)
        head = model.heads[spec.head]
        head.weight = (scale * rows).astype(head.weight.dtype)
        head.bias = mx.zeros_like(head.bias)
        scales[spec.head] = scale
    mx.eval(model.parameters())
    return scales


def word_token(tokenizer, word: str) -> int:
    """The first token of `word` as it is encoded after the prompt (it starts with a space)."""
    return tokenizer.encode(word, add_special_tokens=False)[0]


def pooled_rms(model, units: Sequence, batch_size: int) -> float:
    """Mean over `units` of the RMS of the pooled final-normed state the heads read."""
    training = model.training
    model.eval()
    total, n = 0.0, 0
    for batch in make_batches(units, batch_size, rng=None):
        f = model.features(batch)
        rms = mx.sqrt(mx.mean(f.astype(mx.float32) ** 2, axis=-1))
        total += float(mx.sum(rms))
        n += rms.size
    model.train(training)
    return total / max(n, 1)
