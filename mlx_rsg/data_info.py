"""`mlx-rsg data info` (what a data directory holds) and `mlx-rsg data download` (the Hub copy)."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

from mlx_rsg import data
from mlx_rsg.errors import UserError
from mlx_rsg.io import atomic_dir

HUB_REPO = "RussianNLP/russian_super_glue"


def _texts(r: data.Record) -> list[str]:
    """Every text field of a record: what the model reads, for the mean length."""
    if isinstance(r, data.NLIRecord):
        return [r.premise, r.hypothesis]
    if isinstance(r, data.PARusRecord):
        return [r.premise, r.choice1, r.choice2]
    if isinstance(r, data.MuSeRCRecord):
        return [r.text] + [
            s for q in r.questions for s in [q.question, *(a.text for a in q.answers)]
        ]
    if isinstance(r, data.RUSSERecord):
        return [r.sentence1, r.sentence2]
    if isinstance(r, data.RWSDRecord):
        return [r.text]
    if isinstance(r, data.DaNetQARecord):
        return [r.question, r.passage]
    return [r.text, r.query]


def label_counts(records: list[data.Record]) -> Counter | None:
    """Gold label counts (MuSeRC: over answers; RuCoS: gold answers per query); None unlabelled."""
    if not records:
        return None
    r0 = records[0]
    if isinstance(r0, data.MuSeRCRecord):
        labels = [a.label for r in records for q in r.questions for a in q.answers]
    elif isinstance(r0, data.RuCoSRecord):
        labels = [None if r.answers is None else len(r.answers) for r in records]
    else:
        labels = [r.label for r in records]
    if any(v is None for v in labels):
        return None
    return Counter(labels)


def _describe(task: str, counts: Counter | None) -> str:
    if counts is None:
        return "unlabelled"
    if task == "RuCoS":
        n = sum(counts.values())
        return f"{sum(k * v for k, v in counts.items()) / n:.2f} gold answers per query"
    total = sum(counts.values())
    parts = [f"{k} {v} ({v / total:.0%})" for k, v in counts.most_common()]
    return ("answers: " if task == "MuSeRC" else "") + ", ".join(parts)


def summary(root: str | os.PathLike) -> list[dict]:
    """One row per task and split found: examples, label distribution, mean characters."""
    rows = []
    for task in data.TASKS:
        splits = data.available_splits(root, task)
        if not splits:
            rows.append(dict(task=task, split="-", examples=0, labels="not found", mean_chars=None))
        for split in splits:
            recs = data.load_split(root, task, split)
            chars = [sum(len(t) for t in _texts(r)) for r in recs]
            rows.append(dict(task=task, split=split, examples=len(recs),
                             labels=_describe(task, label_counts(recs)),
                             mean_chars=sum(chars) / len(chars) if chars else None))  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("task", "split", "examples", "mean chars", "labels")
    body = [(r["task"], r["split"], str(r["examples"]),
             "-" if r["mean_chars"] is None else f"{r['mean_chars']:.0f}", r["labels"])
            for r in rows]  # fmt: skip
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    right = (False, False, True, True, False)

    def line(cells) -> str:
        out = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(out: str | os.PathLike, force: bool = False, revision: str | None = None) -> Path:
    """Snapshot the Hub dataset repo into OUT atomically (nothing is left behind on failure)."""
    cannot = f"cannot reach the Hugging Face Hub to download {HUB_REPO} (offline?)"
    if _offline():
        raise UserError(f"{cannot}: HF_HUB_OFFLINE is set")
    from huggingface_hub import errors, snapshot_download

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
