"""Readers for the official Russian SuperGLUE layout.

  load_split(root, task, split)  -> list[Record]   root: directory, .zip, or files as .jsonl.gz
  available_splits(root, task)   -> list[str]

Accepted layouts (task folder names match case-insensitively, so `Terra`/`Parus` work too):
  DIR/Task/{train,val,test}.jsonl and DIR/LiDiRus/LiDiRus.jsonl (the split "test", labelled);
  the same one folder deeper (an unpacked `combined/`); any of these files as `.jsonl.gz`;
  the official zip (members optionally under a top folder) or per-task zips inside DIR.

Records and their labels are the task modules' (`mlx_rsg.tasks`): labels normalised to Python
values, None on test splits. Errors are one-line DataErrors naming file, line and field.
"""

from __future__ import annotations

import functools
import gzip
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from mlx_rsg import tasks
from mlx_rsg.errors import DataError, located
from mlx_rsg.io import jsonl_values
from mlx_rsg.tasks import Record

SPLITS = ("train", "val", "test")


def _file_name(task: str, split: str) -> str:
    return "LiDiRus.jsonl" if task == "LiDiRus" else f"{split}.jsonl"


def _index(root: Path) -> dict[tuple[str, str], tuple[str, Callable[[], bytes]]]:
    """(task folder lowercased, file name without .gz) -> (display path, read bytes) for every
    .jsonl / .jsonl.gz under ROOT (up to two folders deep) and inside zips there. When a file
    appears more than once, plain files beat archive members, shallower beats deeper and .jsonl
    beats .jsonl.gz, so a stray copy never shadows the real file."""
    found: dict[tuple[str, str], tuple[tuple, str, Callable[[], bytes]]] = {}

    def add(parts: tuple[str, ...], display: str, read: Callable[[], bytes], archived: bool):
        name = parts[-1]
        gz = name.endswith(".gz")
        if gz:
            name = name[:-3]
            read = functools.partial(_gunzip, read)
        if not name.endswith(".jsonl") or len(parts) < 2:
            return
        key, rank = (parts[-2].lower(), name.lower()), (archived, len(parts), gz, display)
        if key not in found or rank < found[key][0]:
            found[key] = (rank, display, read)

    def add_zip(zpath: Path, prefix: tuple[str, ...]) -> None:
        try:
            with zipfile.ZipFile(zpath) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
        except (OSError, zipfile.BadZipFile) as e:
            raise DataError(f"{zpath}: not a readable zip file ({e})") from None
        for n in names:
            read = functools.partial(_read_member, zpath, n)
            add(prefix + tuple(n.split("/")), f"{zpath}/{n}", read, archived=True)

    if root.is_file():
        if not zipfile.is_zipfile(root):
            raise DataError(f"{root}: expected a directory or a .zip of the official layout")
        # a per-task zip (TERRa.zip holding train.jsonl...) names the task by its file name
        add_zip(root, (root.stem,))
    elif root.is_dir():
        _walk(root, add, add_zip)
    else:
        raise DataError(f"{root}: no such file or directory")
    return {key: (display, read) for key, (_, display, read) in found.items()}


def _walk(root: Path, add: Callable, add_zip: Callable) -> None:
    """Every file up to two folders below `root` to `add`, zips to `add_zip`; hidden ones
    skipped. Linked folders are followed (a data directory of links to task folders is a
    common way to pick tasks); the depth limit keeps a link loop finite."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        rel = here.relative_to(root).parts
        dirnames[:] = [d for d in dirnames if len(rel) < 2 and not d.startswith(".")]
        for d in dirnames:  # would silently drop its split
            if d.endswith((".jsonl", ".jsonl.gz", ".zip")):
                raise DataError(f"{here / d}: a directory where a data file is expected")
        for f in filenames:
            if f.startswith("."):
                continue
            if f.endswith(".zip"):
                add_zip(here / f, rel + (f[:-4],))
            else:
                add(rel + (f,), str(here / f), (here / f).read_bytes, archived=False)


def _gunzip(read: Callable[[], bytes]) -> bytes:
    return gzip.decompress(read())


def _read_member(zpath: Path, name: str) -> bytes:
    with zipfile.ZipFile(zpath) as z:
        return z.read(name)


def _find(root: str | os.PathLike, task: str, split: str):
    tasks.get(task)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    if task == "LiDiRus" and split != "test":
        return None  # LiDiRus is one labelled diagnostic file: the split "test"
    return _index(Path(root)).get((task.lower(), _file_name(task, split).lower()))


def available_splits(root: str | os.PathLike, task: str) -> list[str]:
    """The splits of TASK present under ROOT, in train/val/test order."""
    tasks.get(task)
    index = _index(Path(root))
    if task == "LiDiRus":
        return ["test"] if (task.lower(), "lidirus.jsonl") in index else []
    return [s for s in SPLITS if (task.lower(), f"{s}.jsonl") in index]


def read_objects(root: str | os.PathLike, task: str, split: str) -> tuple[str, list]:
    """(the file's display name, [(line, JSON value)]) of TASK/SPLIT under ROOT, unparsed."""
    entry = _find(root, task, split)
    if entry is None:
        have = available_splits(root, task)
        raise DataError(
            f"{root}: no {task}/{_file_name(task, split)}"
            f" (splits found for {task}: {', '.join(have) or 'none'})"
        )
    display, read = entry
    try:
        raw = read()
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{display}: cannot read ({e})") from None
    return display, jsonl_values(display, raw, DataError)


def load_split(root: str | os.PathLike, task: str, split: str) -> list[Record]:
    """Records of TASK/SPLIT under ROOT (see the module docstring for the layouts). Labelled
    splits (train, val, LiDiRus) must carry every label; test labels are None when absent."""
    display, values = read_objects(root, task, split)
    labelled = split != "test" or task == "LiDiRus"
    records: list[Record] = []
    lines: dict[object, int] = {}  # idx -> line: predictions and caches match records by idx
    for line, obj in values:
        for r in tasks.parse_records(task, obj, display, line):
            field = tasks.REGISTRY[task].unlabelled_field(r) if labelled else None
            if field:
                msg = f"missing in the labelled split {split!r}"
                raise DataError(located(display, line, field, msg))
            if lines.setdefault(r.idx, line) != line:
                msg = f"{r.idx!r} is also line {lines[r.idx]}'s (each record needs its own)"
                raise DataError(located(display, line, "idx", msg))
            records.append(r)
    return records
