"""Does the language model itself choose PARus's more plausible alternative? A zero-shot probe.

Each choice is scored as the continuation of its premise joined by the question's connective
("…, потому что" for a cause, "…, поэтому" for an effect): the log-likelihood of the choice's
tokens (`sum`), per token (`mean`), and less their likelihood after the connective alone
(`pmi`: domain-conditional PMI, Holtzman et al. 2021, "Surface Form Competition", which corrects
for one alternative being a likelier string whatever the premise). The higher-scoring choice is
the answer. Nothing is trained, so every train record is held out: train is this probe's dev,
val is scored only to report a scoring chosen on train.

    python benchmarks/parus_likelihood.py --model runs/model --data ../shared/rsg \
        --out benchmarks/results/parus_likelihood.json [--split train] [--split val]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import probe_cli  # first: OpenBLAS before anything imports mlx

from mlx_rsg.data import load_split
from mlx_rsg.model.substitution import tail_log_likelihoods

CONNECTIVES = {"cause": "потому что", "effect": "поэтому"}
SCORINGS = ("sum", "mean", "pmi")


def as_continuation(sentence: str) -> str:
    """A choice as the second half of one sentence: its first letter lower-cased (not an
    acronym's)."""
    if len(sentence) > 1 and sentence[1].isupper():
        return sentence
    return sentence[:1].lower() + sentence[1:]


def premise_head(premise: str, question: str) -> str:
    return f"{premise.rstrip().rstrip('.!?…').rstrip()}, {CONNECTIVES[question]}"


def scores(bb, tokenizer, records: list) -> dict[str, np.ndarray]:
    """(records, 2) scores per scoring."""
    choices = [as_continuation(c) for r in records for c in (r.choice1, r.choice2)]
    heads = [premise_head(r.premise, r.question) for r in records for _ in (0, 1)]
    alone = [CONNECTIVES[r.question].capitalize() for r in records for _ in (0, 1)]
    lengths = np.array([len(tokenizer.encode(f"{h} {c}")) - len(tokenizer.encode(h))
                        for h, c in zip(heads, choices, strict=True)])  # fmt: skip
    given = tail_log_likelihoods(bb, tokenizer, list(zip(heads, choices, strict=True)))
    prior = tail_log_likelihoods(bb, tokenizer, list(zip(alone, choices, strict=True)))
    out = {"sum": given, "mean": given / np.maximum(lengths, 1), "pmi": given - prior}
    return {k: v.reshape(-1, 2) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a, splits, bb, tokenizer = probe_cli.parse(ap, "PARus")
    out = Path(a.out)
    result = probe_cli.results(out, "parus_likelihood", a.model)
    for split in splits:
        records = load_split(a.data, "PARus", split)
        labels = np.array([r.label for r in records])
        t0 = time.time()
        got = scores(bb, tokenizer, records)
        row = {"records": len(records), "seconds": round(time.time() - t0, 1),
               "constant": float(max(np.mean(labels == 0), np.mean(labels == 1))),
               "se": math.sqrt(0.25 / len(records))}  # fmt: skip
        for key in SCORINGS:
            row[key] = float(np.mean(got[key].argmax(axis=1) == labels))
        result["splits"][split] = row
        print(split, json.dumps(row), flush=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
