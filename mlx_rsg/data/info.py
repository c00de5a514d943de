"""`mlx-rsg data info` (what a data directory holds) and `mlx-rsg data download` (the Hub copy)."""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from mlx_rsg import tasks
from mlx_rsg.data.files import available_splits, load_split
from mlx_rsg.errors import UserError
from mlx_rsg.io import atomic_dir
from mlx_rsg.model.batching import encode_units

HUB_REPO = "RussianNLP/russian_super_glue"


def label_counts(task: str, records: list) -> Counter | None:
    """Gold label counts (MuSeRC: over answers; RuCoS: gold answers per query); None unlabelled."""
    values = [v for r in records for v in tasks.REGISTRY[task].label_values(r)]
    if not records or any(v is None for v in values):
        return None
    return Counter(values)


def _describe(task: str, counts: Counter | None) -> str:
    return "unlabelled" if counts is None else tasks.REGISTRY[task].describe_labels(counts)


def unit_lengths(task: str, records: list, tokenizer, prompt: str = "plain") -> list[int]:
    """The token length of every unit of the records (BOS included), untruncated."""
    units = tasks.make_units(task, records, prompt=prompt)
    encoded = encode_units(units, tokenizer, max_len=sys.maxsize)
    return [len(e.ids) for e in encoded]


def token_cost(task: str, records: list, tokenizer, max_len: int,
               min_shared: int | None = None) -> dict:  # fmt: skip
    """What one pass over the records costs: `tokens`, every unit's tokens at `max_len`, and
    `once`, with each shared prefix (a MuSeRC passage for its answers, a RuCoS passage for its
    candidates, a long text records repeat; `min_shared` tokens or more) counted once, as
    `predict` runs it (`model/shared_prefix.py`; training runs a record's once per batch of its
    units)."""
    from mlx_rsg.model.shared_prefix import group_shared

    encoded = encode_units(tasks.make_units(task, records), tokenizer, max_len)
    tokens = sum(len(e.ids) for e in encoded)
    groups, _ = group_shared(encoded, min_shared)
    return {"tokens": tokens,
            "once": tokens - sum((len(g.members) - 1) * len(g.prefix) for g in groups)}  # fmt: skip


def fitting_max_len(lengths: list[int], coverage: float = 0.95, step: int = 32) -> int:
    """The smallest multiple of `step` that at least `coverage` of `lengths` fit in."""
    if not lengths:
        return step
    need = sorted(lengths)[max(0, math.ceil(coverage * len(lengths)) - 1)]
    return step * math.ceil(need / step)


def length_report(lengths: list[int], max_len: int) -> dict:
    """Median, 95th percentile and longest unit, the share over max_len, the 95 % fit."""
    s = sorted(lengths)
    if not s:
        return {"units": 0}
    return {"units": len(s), "p50": s[(len(s) - 1) // 2], "p95": s[math.ceil(0.95 * len(s)) - 1],
            "max": s[-1], "max_len": max_len, "truncated": sum(n > max_len for n in s) / len(s),
            "fits_95": fitting_max_len(s)}  # fmt: skip


def summary(root: str | os.PathLike, tokenizer=None, max_len: int = 256) -> list[dict]:
    """One row per task and split found: examples, label distribution, mean characters; with a
    tokenizer also the units' token lengths and how many `max_len` truncates."""
    rows = []
    for task in tasks.TASKS:
        splits = available_splits(root, task)
        if not splits:
            rows.append(dict(task=task, split="-", examples=0, labels="not found", mean_chars=None))
        for split in splits:
            recs = load_split(root, task, split)
            chars = [sum(map(len, tasks.REGISTRY[task].texts(r))) for r in recs]
            rows.append(dict(task=task, split=split, examples=len(recs),
                             labels=_describe(task, label_counts(task, recs)),
                             mean_chars=sum(chars) / len(chars) if chars else None))  # fmt: skip
            if tokenizer is not None:
                rows[-1]["tokens"] = length_report(unit_lengths(task, recs, tokenizer), max_len)
                rows[-1]["tokens"].update(token_cost(task, recs, tokenizer, max_len))
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("task", "split", "examples", "mean chars", "labels")
    body = [(r["task"], r["split"], str(r["examples"]),
             "-" if r["mean_chars"] is None else f"{r['mean_chars']:.0f}", r["labels"])
            for r in rows]  # fmt: skip
    right = (False, False, True, True, False)
    reports = [r.get("tokens") for r in rows]
    if any(reports):
        max_len = next(t["max_len"] for t in reports if t and t.get("units"))
        head = head[:4] + ("tokens p50/p95/max", f"over {max_len}", "95% fit",
                           f"tokens at {max_len}", "shared once") + head[4:]  # fmt: skip
        body = [b[:4] + _token_cells(t) + b[4:] for b, t in zip(body, reports, strict=True)]
        right = right[:4] + (True,) * 5 + right[4:]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells) -> str:
        out = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def _token_cells(t: dict | None) -> tuple[str, ...]:
    if not t or not t.get("units"):
        return ("-",) * 5
    return (f"{t['p50']}/{t['p95']}/{t['max']}", f"{t['truncated']:.0%}", str(t["fits_95"]),
            f"{t['tokens']:,}", f"{t['once']:,}")  # fmt: skip


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_replaceable_data(out: Path, force: bool) -> None:
    """--force replaces an empty directory or one holding RSG data (an earlier download), never
    another folder of the user's."""
    if not (force and out.is_dir() and any(out.iterdir())):
        return
    try:
        ours = any(available_splits(out, t) for t in tasks.TASKS)
    except UserError:
        ours = False
    if not ours:
        raise UserError(f"{out}: holds no Russian SuperGLUE data; refusing to replace it with "
                        "--force")  # fmt: skip


def download(out: str | os.PathLike, force: bool = False, revision: str | None = None) -> Path:
    """Snapshot the Hub dataset repo into OUT atomically (nothing is left behind on failure)."""
    cannot = f"cannot reach the Hugging Face Hub to download {HUB_REPO} (offline?)"
    if _offline():
        raise UserError(f"{cannot}: HF_HUB_OFFLINE is set")
    from huggingface_hub import errors, snapshot_download

    _check_replaceable_data(Path(out), force)
    try:
        with atomic_dir(out, force) as tmp:
            snapshot_download(HUB_REPO, repo_type="dataset", revision=revision, local_dir=tmp)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's local metadata
    except UserError:
        raise
    except Exception as e:  # one line, never a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        first = first.removeprefix("Got: ")  # huggingface_hub's wrapper of the network error
        network = (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError, ConnectionError,
                   TimeoutError)  # fmt: skip
        if isinstance(e, network) or type(e).__module__.startswith(("httpx", "httpcore")):
            raise UserError(f"{cannot}: {first}") from None
        raise UserError(f"downloading {HUB_REPO} failed: {type(e).__name__}: {first}") from None
    return Path(out)
