"""Does the language model itself resolve RWSD's pronouns? A zero-shot probe, no training.

The classic LM route for Winograd schemas (Trinh & Le 2018, "A Simple Method for Commonsense
Reasoning"): put each candidate in the pronoun's place and compare the log-likelihood of what
follows ("partial" scoring; the words after the pronoun are the same for every candidate, so the
scores compare directly). RWSD marks one candidate per record; the records that share a text and
a pronoun (mostly twins, one True) are decided together: the best-scoring candidate is True.
Nothing is trained, so every train record is held out: train is this probe's dev, val is scored
only to report a decision made on train.

    python benchmarks/rwsd_substitution.py --model runs/model --data ../shared/rsg \
        --out benchmarks/results/rwsd_substitution.json [--split train] [--split val]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import probe_cli  # first: OpenBLAS before anything imports mlx

from mlx_rsg.data import load_split
from mlx_rsg.model import backbone as bbm
from mlx_rsg.model.substitution import group_logits, tail_log_likelihoods, token_log_probs
from mlx_rsg.tasks.rwsd import pronoun_key, substituted


def token_log_likelihoods(bb, ids: list[int]) -> np.ndarray:
    """log P(ids[t] | ids[:t]) for t = 1 .. len(ids) - 1, from one forward pass."""
    import mlx.core as mx

    h = bbm.final_norm(bb, bbm.run_layers(bb, bbm.embed(bb, mx.array([ids]))))[0, :-1]
    return np.array(token_log_probs(bb, h, ids[1:]))


def scores(bb, tokenizer, records: list) -> list[dict[str, float]]:
    """partial: log P(words after the pronoun | text up to it, the candidate in its place), as
    `mlx-rsg` decides RWSD by substitution; full: the whole substituted text's log-likelihood
    per token."""
    pairs = [substituted(r) for r in records]
    partial = tail_log_likelihoods(bb, tokenizer, pairs)
    full = [float(token_log_likelihoods(bb, tokenizer.encode(f"{h} {t}" if t else h)).mean())
            for h, t in pairs]  # fmt: skip
    return [{"partial": float(p), "full": f} for p, f in zip(partial, full, strict=True)]


def pronoun_groups(records: list) -> list[list[int]]:
    """Indices of the records that share a text and a pronoun (its position and words)."""
    groups = defaultdict(list)
    for i, r in enumerate(records):
        groups[pronoun_key(r)].append(i)
    return list(groups.values())


def decide(records: list, got: list[dict], key: str) -> list[bool]:
    """Per text and pronoun the best-scoring candidate is True, the others False; a record alone
    in its group is False (the more common answer in train): `mlx-rsg`'s own decision."""
    logits = group_logits(records, np.array([g[key] for g in got]))
    return [bool(row[1] > row[0]) for row in logits]


def pairwise(records: list, got: list[dict], key: str) -> tuple[int, int]:
    """Groups of exactly two with one True: how often the True one scores higher."""
    right = n = 0
    for members in pronoun_groups(records):
        labels = [records[i].label for i in members]
        if len(members) == 2 and sum(labels) == 1:
            n += 1
            true, false = (members if labels[0] else members[::-1])
            right += got[true][key] > got[false][key]
    return right, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=None,
                    help="read the LM head after the first N blocks (a --feature-layer N run's "
                         "backbone) instead of after all of them")
    a, splits, bb, tokenizer = probe_cli.parse(ap, "RWSD")
    if a.blocks is not None:
        if not 1 <= a.blocks <= bb.num_layers:
            ap.error(f"--blocks: {a.blocks} is not a block in 1..{bb.num_layers}")
        bbm.keep_blocks(bb, a.blocks)
    out = Path(a.out)
    result = probe_cli.results(out, "rwsd_substitution", a.model)
    for split in splits:
        records = load_split(a.data, "RWSD", split)
        t0 = time.time()
        got = scores(bb, tokenizer, records)
        row = {"records": len(records), "seconds": round(time.time() - t0, 1),
               "constant_false": sum(not r.label for r in records) / len(records)}  # fmt: skip
        for key in ("partial", "full"):
            right, n = pairwise(records, got, key)
            decided = decide(records, got, key)
            acc = float(np.mean([d == r.label for d, r in zip(decided, records, strict=True)]))
            row[key] = {"pairs": n, "pairs_right": right, "pair_accuracy": right / n,
                        "pair_se": math.sqrt(0.25 / n), "accuracy_group_decoded": acc}  # fmt: skip
        result["splits"][split if a.blocks is None else f"{split}, first {a.blocks} blocks"] = row
        print(split, json.dumps(row), flush=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
