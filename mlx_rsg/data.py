"""Typed records for the nine Russian SuperGLUE tasks and readers for the official layout.

INTERFACE (fixed; other modules build on it):
  TASKS                          the nine official task names, in leaderboard order
  load_split(root, task, split)  -> list[Record]   root: directory, .zip, or files as .jsonl.gz
  available_splits(root, task)   -> list[str]
  parse_record(task, obj, path, line) -> Record   one JSON object of a task's file
  DataError(UserError)           one line naming file, line number and field

Accepted layouts (task folder names match case-insensitively, so `Terra`/`Parus` work too):
  DIR/Task/{train,val,test}.jsonl and DIR/LiDiRus/LiDiRus.jsonl (the split "test", labelled);
  the same one folder deeper (an unpacked `combined/`); any of these files as `.jsonl.gz`;
  the official zip (members optionally under a top folder) or per-task zips inside DIR.

Labels are normalised to Python values: NLI tasks str (official spelling), PARus int 0/1,
RUSSE/DaNetQA/RWSD bool, MuSeRC answers int 0/1, RuCoS the set of gold answer texts. Test splits
have label None.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlx_rsg.errors import UserError, located
from mlx_rsg.io import jsonl_values

TASKS = ("LiDiRus", "RCB", "PARus", "MuSeRC", "TERRa", "RUSSE", "RWSD", "DaNetQA", "RuCoS")


class DataError(UserError):
    """A malformed data file: the message names the file, line number and field."""


@dataclass(frozen=True)
class NLIRecord:
    """TERRa, RCB and LiDiRus (LiDiRus's sentence1/sentence2 become premise/hypothesis)."""

    idx: int
    premise: str
    hypothesis: str
    # TERRa/LiDiRus: entailment|not_entailment; RCB: entailment|contradiction|neutral
    label: str | None


@dataclass(frozen=True)
class PARusRecord:
    idx: int
    premise: str
    choice1: str
    choice2: str
    question: str  # "cause" | "effect"
    label: int | None  # 0 -> choice1, 1 -> choice2


@dataclass(frozen=True)
class MuSeRCAnswer:
    idx: int
    text: str
    label: int | None  # 1 correct, 0 wrong


@dataclass(frozen=True)
class MuSeRCQuestion:
    idx: int
    question: str
    answers: tuple[MuSeRCAnswer, ...]


@dataclass(frozen=True)
class MuSeRCRecord:
    idx: int
    text: str
    questions: tuple[MuSeRCQuestion, ...]


@dataclass(frozen=True)
class RUSSERecord:
    idx: int
    word: str
    sentence1: str
    sentence2: str
    start1: int  # character span of the target word in sentence1 (validated against the text)
    end1: int
    start2: int
    end2: int
    label: bool | None


@dataclass(frozen=True)
class RWSDRecord:
    idx: int
    text: str
    span1_index: int  # word index (whitespace tokens) of span1 in text
    span1_text: str
    span2_index: int
    span2_text: str
    label: bool | None  # True: span2 (pronoun) refers to span1


@dataclass(frozen=True)
class DaNetQARecord:
    idx: int
    question: str
    passage: str
    label: bool | None


@dataclass(frozen=True)
class RuCoSRecord:
    idx: int
    text: str  # passage
    entities: tuple[tuple[int, int], ...]  # character spans [start, end) of candidate entities
    query: str  # contains "@placeholder"
    answers: tuple[str, ...] | None  # gold answer texts; None on test


Record = (
    NLIRecord | PARusRecord | MuSeRCRecord | RUSSERecord | RWSDRecord | DaNetQARecord | RuCoSRecord
)


SPLITS = ("train", "val", "test")

# ----------------------------------------------------------------------------- field checks
# Every check raises DataError with `FILE:LINE: field 'a.b[2].c': problem`. `where` carries the
# (path, line) of the JSON object being parsed.

_Where = tuple[object, int | None]


def _fail(where: _Where, field: str | None, msg: str) -> DataError:
    return DataError(located(where[0], where[1], field, msg))


def _type_name(v: object) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _field(obj: dict, key: str, where: _Where, prefix: str = "") -> object:
    if key not in obj:
        raise _fail(where, prefix + key, "missing")
    return obj[key]


def _str(obj: dict, key: str, where: _Where, prefix: str = "") -> str:
    v = _field(obj, key, where, prefix)
    if not isinstance(v, str):
        raise _fail(where, prefix + key, f"expected a string, got {_type_name(v)}")
    return v


def _int(obj: dict, key: str, where: _Where, prefix: str = "") -> int:
    """An integer; LiDiRus writes its idx as a string of digits, so those are accepted too."""
    v = _field(obj, key, where, prefix)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(where, prefix + key, f"expected an integer, got {_type_name(v)} {v!r:.40}")
    return v


def _list(obj: dict, key: str, where: _Where, prefix: str = "") -> list:
    v = _field(obj, key, where, prefix)
    if not isinstance(v, list):
        raise _fail(where, prefix + key, f"expected a list, got {_type_name(v)}")
    return v


def _obj(v: object, field: str, where: _Where) -> dict:
    if not isinstance(v, dict):
        raise _fail(where, field, f"expected an object, got {_type_name(v)}")
    return v


# (raw JSON value, normalised label) pairs; pairs, not a dict, because True == 1 in a dict key
_BOOLS = (
    (True, True),
    (False, False),
    ("True", True),
    ("False", False),
    ("true", True),
    ("false", False),
    (1, True),
    (0, False),
)
_BINARY = ((0, 0), (1, 1), (False, 0), (True, 1))


def _label(obj: dict, where: _Where, allowed: tuple, prefix: str = ""):
    """The label normalised through `allowed` ((raw, normalised) pairs), None when absent."""
    if "label" not in obj or obj["label"] is None:
        return None
    v = obj["label"]
    # bool is an int subclass: True must not pass as 1 where only 0/1 are allowed, and vice versa
    for raw, norm in allowed:
        if type(raw) is type(v) and raw == v:
            return norm
    spelled = ", ".join(json.dumps(k) for k, _ in allowed)
    raise _fail(
        where,
        prefix + "label",
        f"unknown label {json.dumps(v, ensure_ascii=False)} (expected one of {spelled})",
    )


# ----------------------------------------------------------------------------- per-task parsers

NLI_LABELS = {
    "TERRa": ("entailment", "not_entailment"),
    "LiDiRus": ("entailment", "not_entailment"),
    "RCB": ("entailment", "contradiction", "neutral"),
}


def _nli(task: str) -> Callable:
    first, second = ("sentence1", "sentence2") if task == "LiDiRus" else ("premise", "hypothesis")
    labels = tuple((s, s) for s in NLI_LABELS[task])

    def parse(o: dict, w: _Where) -> list[Record]:
        return [
            NLIRecord(
                _int(o, "idx", w), _str(o, first, w), _str(o, second, w), _label(o, w, labels)
            )
        ]

    return parse


def _parus(o: dict, w: _Where) -> list[Record]:
    question = _str(o, "question", w)
    if question not in ("cause", "effect"):
        raise _fail(w, "question", f'expected "cause" or "effect", got {question!r}')
    label = _label(o, w, _BINARY)
    return [
        PARusRecord(
            _int(o, "idx", w),
            _str(o, "premise", w),
            _str(o, "choice1", w),
            _str(o, "choice2", w),
            question,
            label,
        )
    ]


def _danetqa(o: dict, w: _Where) -> list[Record]:
    return [
        DaNetQARecord(
            _int(o, "idx", w), _str(o, "question", w), _str(o, "passage", w), _label(o, w, _BOOLS)
        )
    ]


def _russe(o: dict, w: _Where) -> list[Record]:
    spans = []
    for k in "12":
        text = _str(o, f"sentence{k}", w)
        start, end = _int(o, f"start{k}", w), _int(o, f"end{k}", w)
        if not 0 <= start < len(text):
            raise _fail(w, f"start{k}", f"{start} is outside sentence{k} ({len(text)} characters)")
        # The official end offsets sometimes run one character past the sentence (thousands of
        # train/val records): accepted as they are; tasks.py clamps spans to the text.
        if not start < end <= len(text) + 1:
            raise _fail(
                w,
                f"end{k}",
                f"{end} does not fit start{k}={start} and sentence{k} ({len(text)} characters)",
            )
        spans += [text, start, end]
    s1, a1, b1, s2, a2, b2 = spans
    return [
        RUSSERecord(
            _int(o, "idx", w), _str(o, "word", w), s1, s2, a1, b1, a2, b2, _label(o, w, _BOOLS)
        )
    ]


def _rwsd(o: dict, w: _Where) -> list[Record]:
    text = _str(o, "text", w)
    target = _obj(_field(o, "target", w), "target", w)
    n_words = len(text.split())
    spans = []
    for k in "12":
        index = _int(target, f"span{k}_index", w, "target.")
        if not 0 <= index < n_words:
            raise _fail(
                w, f"target.span{k}_index", f"word {index} is outside the text ({n_words} words)"
            )
        spans += [index, _str(target, f"span{k}_text", w, "target.")]
    return [RWSDRecord(_int(o, "idx", w), text, *spans, _label(o, w, _BOOLS))]


def _muserc(o: dict, w: _Where) -> list[Record]:
    passage = _obj(_field(o, "passage", w), "passage", w)
    questions = []
    for qi, q in enumerate(_list(passage, "questions", w, "passage.")):
        qp = f"passage.questions[{qi}]"
        q = _obj(q, qp, w)
        answers = []
        for ai, a in enumerate(_list(q, "answers", w, qp + ".")):
            ap = f"{qp}.answers[{ai}]"
            a = _obj(a, ap, w)
            label = _label(a, w, _BINARY, ap + ".")
            answers.append(
                MuSeRCAnswer(_int(a, "idx", w, ap + "."), _str(a, "text", w, ap + "."), label)
            )
        questions.append(
            MuSeRCQuestion(
                _int(q, "idx", w, qp + "."), _str(q, "question", w, qp + "."), tuple(answers)
            )
        )
    return [MuSeRCRecord(_int(o, "idx", w), _str(passage, "text", w, "passage."), tuple(questions))]


def _rucos(o: dict, w: _Where) -> list[Record]:
    """One record per query. Entity `end` offsets are inclusive in the official files (as in
    ReCoRD, and as the Hugging Face loader reads them); records hold half-open [start, end)."""
    passage = _obj(_field(o, "passage", w), "passage", w)
    text = _str(passage, "text", w, "passage.")
    entities = []
    for i, e in enumerate(_list(passage, "entities", w, "passage.")):
        ep = f"passage.entities[{i}]"
        e = _obj(e, ep, w)
        start, end = _int(e, "start", w, ep + "."), _int(e, "end", w, ep + ".")
        if not 0 <= start <= end <= len(text):
            raise _fail(
                w, ep, f"span {start}..{end} is outside the passage ({len(text)} characters)"
            )
        entities.append((start, min(end + 1, len(text))))
    out = []
    for qi, qa in enumerate(_list(o, "qas", w)):
        qp = f"qas[{qi}]"
        qa = _obj(qa, qp, w)
        query = _str(qa, "query", w, qp + ".")
        if "@placeholder" not in query:
            raise _fail(w, qp + ".query", "has no @placeholder")
        answers = None
        if "answers" in qa:
            texts = []
            for ai, a in enumerate(_list(qa, "answers", w, qp + ".")):
                texts.append(
                    _str(_obj(a, f"{qp}.answers[{ai}]", w), "text", w, f"{qp}.answers[{ai}].")
                )
            answers = tuple(dict.fromkeys(texts))
        idx = _int(qa, "idx", w, qp + ".") if "idx" in qa else _int(o, "idx", w)
        out.append(RuCoSRecord(idx, text, tuple(entities), query, answers))
    if not out:
        raise _fail(w, "qas", "empty")
    return out


_PARSERS: dict[str, Callable[[dict, _Where], list[Record]]] = {
    "LiDiRus": _nli("LiDiRus"),
    "RCB": _nli("RCB"),
    "PARus": _parus,
    "MuSeRC": _muserc,
    "TERRa": _nli("TERRa"),
    "RUSSE": _russe,
    "RWSD": _rwsd,
    "DaNetQA": _danetqa,
    "RuCoS": _rucos,
}


def _check_task(task: str) -> None:
    if task not in _PARSERS:
        raise DataError(f"unknown task {task!r} (one of {', '.join(TASKS)})")


def parse_records(
    task: str, obj: object, path: object = "<input>", line: int | None = None
) -> list[Record]:
    """All records in one JSON object of TASK's file (RuCoS: one per query; others: one)."""
    _check_task(task)
    where = (path, line)
    if not isinstance(obj, dict):
        raise _fail(where, None, f"expected a JSON object, got {_type_name(obj)}")
    return _PARSERS[task](obj, where)


def parse_record(
    task: str, obj: object, path: object = "<input>", line: int | None = None
) -> Record:
    """The record in one JSON object of TASK's official file; DataError names path:line:field."""
    records = parse_records(task, obj, path, line)
    if len(records) != 1:
        raise _fail((path, line), "qas", f"{len(records)} queries (read the file with load_split)")
    return records[0]


def _unlabelled_field(r: Record) -> str | None:
    """The first field that lacks its gold label, None when the record is fully labelled."""
    if isinstance(r, MuSeRCRecord):
        for qi, q in enumerate(r.questions):
            for ai, a in enumerate(q.answers):
                if a.label is None:
                    return f"passage.questions[{qi}].answers[{ai}].label"
        return None
    if isinstance(r, RuCoSRecord):
        return "qas[].answers" if r.answers is None else None
    return "label" if r.label is None else None


# ----------------------------------------------------------------------------- files


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
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            rel = here.relative_to(root).parts
            dirnames[:] = [d for d in dirnames if len(rel) < 2 and not d.startswith(".")]
            for f in filenames:
                if f.startswith("."):
                    continue
                if f.endswith(".zip"):
                    add_zip(here / f, rel + (f[:-4],))
                else:
                    add(rel + (f,), str(here / f), (here / f).read_bytes, archived=False)
    else:
        raise DataError(f"{root}: no such file or directory")
    return {key: (display, read) for key, (_, display, read) in found.items()}


def _gunzip(read: Callable[[], bytes]) -> bytes:
    return gzip.decompress(read())


def _read_member(zpath: Path, name: str) -> bytes:
    with zipfile.ZipFile(zpath) as z:
        return z.read(name)


def _find(root: str | os.PathLike, task: str, split: str):
    _check_task(task)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    if task == "LiDiRus" and split != "test":
        return None  # LiDiRus is one labelled diagnostic file: the split "test"
    return _index(Path(root)).get((task.lower(), _file_name(task, split).lower()))


def available_splits(root: str | os.PathLike, task: str) -> list[str]:
    """The splits of TASK present under ROOT, in train/val/test order."""
    _check_task(task)
    index = _index(Path(root))
    if task == "LiDiRus":
        return ["test"] if (task.lower(), "lidirus.jsonl") in index else []
    return [s for s in SPLITS if (task.lower(), f"{s}.jsonl") in index]


def load_split(root: str | os.PathLike, task: str, split: str) -> list[Record]:
    """Records of TASK/SPLIT under ROOT (see the module docstring for the layouts). Labelled
    splits (train, val, LiDiRus) must carry every label; test labels are None when absent."""
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
    labelled = split != "test" or task == "LiDiRus"
    records: list[Record] = []
    for line, obj in jsonl_values(display, raw, DataError):
        for r in parse_records(task, obj, display, line):
            field = _unlabelled_field(r) if labelled else None
            if field:
                msg = f"missing in the labelled split {split!r}"
                raise DataError(located(display, line, field, msg))
            records.append(r)
    return records
