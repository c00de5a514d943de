"""What the zero-shot probes (rwsd_substitution.py, parus_likelihood.py) share: their command
line, checked before any work (one argparse line, exit 2), and their results file, to which a
split scored later is added."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlx_rsg.accel import blas  # first: OpenBLAS before anything imports mlx
from mlx_rsg.errors import UserError
from mlx_rsg.model import backbone as bbm


def parse(ap: argparse.ArgumentParser, task: str) -> tuple[argparse.Namespace, list[str], object,
                                                            object]:  # fmt: skip
    """The probe's arguments (its own added to `ap` before), each labelled split named checked
    to exist, then the model and its tokenizer: (args, splits, backbone, tokenizer)."""
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", action="append", default=None, choices=["train", "val"],
                    help="a labelled split: train (default), val")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    splits = a.split or ["train"]
    for split in splits:
        if not (Path(a.data) / task / f"{split}.jsonl").is_file():
            ap.error(f"{Path(a.data) / task / f'{split}.jsonl'}: no such file")
    try:
        bb, tokenizer = bbm.load_backbone(a.model), bbm.load_tokenizer(a.model)
    except UserError as e:  # not a converted model: one line, as the CLI says it
        ap.error(str(e))
    return a, splits, bb, tokenizer


def results(out: Path, benchmark: str, model: str) -> dict:
    """The results file's content so far (splits scored earlier stay), with this machine's BLAS."""
    result = {"benchmark": benchmark, "model": model, "splits": {}}
    if out.exists():
        result = json.loads(out.read_text())
    result["blas"] = blas.describe()
    return result
