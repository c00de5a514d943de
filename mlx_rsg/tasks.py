"""How each Russian SuperGLUE record becomes classification units, and how unit scores become
predictions again.

INTERFACE (fixed; train.py / predict.py / batching.py build on it):
  TaskSpec, TASK_SPECS[name]
  Unit(task, key, group, pieces, label)          (+ optional trim / span_order, see below)
  make_units(task, records, train=False, rng=None, max_negatives=None) -> list[Unit]
  encode_unit(unit, encode, max_len, bos) -> (ids, spans)
  decode(task, records, unit_keys, scores) -> predictions aligned with records

A unit is a short Russian prompt cut into pieces `(text, marked)`. Marked pieces are the spans the
span-pooling tasks (RUSSE, RWSD) pool; the model sees the pieces concatenated in order. The first
element of every unit key is the record's idx. Pieces are tokenised one by one, so glue words end
without a space and the text after them starts with one: a SentencePiece tokenizer without a dummy
prefix then sees "▁word" tokens, as in running text, instead of a lone "▁".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mlx_rsg.data import NLI_LABELS
from mlx_rsg.metrics import OFFICIAL, normalize_answer


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: tuple  # label values in decode's form; a unit's label is an index into this
    choice: bool  # units of a group are scored against each other (one output per unit)
    pooling: str  # "last" | "span"
    head: str  # the head that scores this task (LiDiRus is scored with TERRa's)
    metrics: tuple[str, ...]  # keys of metrics.score_task for this task (metrics.OFFICIAL)
    has_train: bool
    spans: int = 0  # marked pieces pooled and concatenated (RUSSE, RWSD: 2)


NLI = NLI_LABELS["TERRa"]
TASK_SPECS: dict[str, TaskSpec] = {
    "LiDiRus": TaskSpec("LiDiRus", NLI, False, "last", "TERRa", OFFICIAL["LiDiRus"], False),
    "RCB": TaskSpec("RCB", NLI_LABELS["RCB"], False, "last", "RCB", OFFICIAL["RCB"], True),
    "PARus": TaskSpec("PARus", (0, 1), True, "last", "PARus", OFFICIAL["PARus"], True),
    "MuSeRC": TaskSpec("MuSeRC", (0, 1), False, "last", "MuSeRC", OFFICIAL["MuSeRC"], True),
    "TERRa": TaskSpec("TERRa", NLI, False, "last", "TERRa", OFFICIAL["TERRa"], True),
    "RUSSE": TaskSpec("RUSSE", (False, True), False, "span", "RUSSE", OFFICIAL["RUSSE"], True, 2),
    "RWSD": TaskSpec("RWSD", (False, True), False, "span", "RWSD", OFFICIAL["RWSD"], True, 2),
    "DaNetQA": TaskSpec(
        "DaNetQA", (False, True), False, "last", "DaNetQA", OFFICIAL["DaNetQA"], True
    ),
    "RuCoS": TaskSpec("RuCoS", (0, 1), True, "last", "RuCoS", OFFICIAL["RuCoS"], True),
}


@dataclass(frozen=True)
class Unit:
    task: str
    key: tuple  # unique within the task's split; key[0] is the record idx
    group: tuple | None  # choice tasks: units scored against each other share it
    pieces: tuple[tuple[str, bool], ...]  # (text, marked) in order
    label: int | None  # index into spec.labels; choice tasks: 1 = the right candidate
    trim: tuple[int, ...] = ()  # pieces truncation may shorten first (the long context)
    span_order: tuple[int, ...] = ()  # order to report the marked spans in (default: text order)


# ----------------------------------------------------------------------------------- units


def make_units(
    task: str,
    records: Sequence,
    train: bool = False,
    rng: np.random.Generator | None = None,
    max_negatives: int | None = None,
) -> list[Unit]:
    """Units of every record, contiguous per record. `train` only changes RuCoS: the gold entity
    plus at most `max_negatives` negatives sampled with `rng`; records whose candidates contain no
    gold answer are skipped there (nothing to learn from)."""
    if task not in TASK_SPECS:
        raise ValueError(f"unknown task {task!r}")
    make = _MAKERS[task]
    units: list[Unit] = []
    for r in records:
        if task == "RuCoS":
            units.extend(_rucos_units(r, train, rng, max_negatives))
        else:
            units.extend(make(r))
    return units


def _index(task: str, label) -> int | None:
    return None if label is None else TASK_SPECS[task].labels.index(label)


def _nli_units(task: str):
    def make(r) -> list[Unit]:
        pieces = (
            ("Посылка:", False),
            (" " + r.premise, False),
            ("\nГипотеза:", False),
            (" " + r.hypothesis, False),
        )
        return [Unit(task, (r.idx,), None, pieces, _index(task, r.label), trim=(1, 3))]

    return make


PARUS_QUESTION = {"cause": "\nПричина:", "effect": "\nСледствие:"}


def _parus_units(r) -> list[Unit]:
    out = []
    for c, choice in enumerate((r.choice1, r.choice2)):
        pieces = ((r.premise, False), (PARUS_QUESTION[r.question], False), (" " + choice, False))
        label = None if r.label is None else int(r.label == c)
        out.append(Unit("PARus", (r.idx, c), (r.idx,), pieces, label, trim=(0,)))
    return out


def _muserc_units(r) -> list[Unit]:
    out = []
    for q in r.questions:
        for a in q.answers:
            pieces = (
                ("Текст:", False),
                (" " + r.text, False),
                ("\nВопрос:", False),
                (" " + q.question, False),
                ("\nОтвет:", False),
                (" " + a.text, False),
            )
            out.append(Unit("MuSeRC", (r.idx, q.idx, a.idx), None, pieces, a.label, trim=(1,)))
    return out


_PUNCT = ',.;:!?»")'


def _split_marked(text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[str, bool]]:
    """`text` cut around non-overlapping char spans. Whitespace before a span moves into it (so a
    SentencePiece tokenizer sees "▁word" as in running text); trailing whitespace and
    punctuation move out (the official RUSSE ends sometimes take one character too many)."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for s, e in sorted(spans):
        s, e = min(max(s, pos), len(text)), min(max(e, s), len(text))
        while e > s + 1 and (text[e - 1].isspace() or text[e - 1] in _PUNCT):
            e -= 1
        while s > pos and text[s - 1].isspace():
            s -= 1
        pieces.append((text[pos:s], False))
        pieces.append((text[s:e], True))
        pos = e
    pieces.append((text[pos:], False))
    return pieces


def _russe_units(r) -> list[Unit]:
    # a leading space, so a target word at the very start is tokenised like one mid-sentence
    s1 = _split_marked(" " + r.sentence1, [(r.start1 + 1, r.end1 + 1)])
    s2 = _split_marked(" " + r.sentence2, [(r.start2 + 1, r.end2 + 1)])
    pieces = (("Слово:", False), (" " + r.word, False), ("\n1:", False), *s1, ("\n2:", False), *s2)
    return [Unit("RUSSE", (r.idx,), None, tuple(pieces), _index("RUSSE", r.label))]


_WORD = re.compile(r"\S+")


def _occurrences(text: str, span_text: str, index: int) -> list[tuple[int, int, int]]:
    """(distance in words from `index`, start, end) of each place `span_text` starts at a word.
    The official word indices are sometimes off; the text is what counts."""
    words = [m.start() for m in _WORD.finditer(text)]
    span_text = span_text.strip()
    found = []
    for i, start in enumerate(words):
        if span_text and text.startswith(span_text, start):
            found.append((abs(i - index), start, start + len(span_text)))
    if found:
        return found
    # Not in the text verbatim: fall back to the index's words, trailing punctuation dropped.
    n = max(1, len(span_text.split()))
    i = min(max(index, 0), len(words) - 1) if words else 0
    if not words:
        return [(0, 0, 0)]
    ends = [m.end() for m in _WORD.finditer(text)]
    start, end = words[i], ends[min(i + n, len(words)) - 1]
    while end > start + 1 and text[end - 1] in _PUNCT:
        end -= 1
    return [(0, start, end)]


def rwsd_spans(r) -> tuple[tuple[int, int], tuple[int, int]]:
    """Char spans [start, end) of span1 and span2: the non-overlapping pair of occurrences of the
    span texts closest to the official word indices."""
    a = _occurrences(r.text, r.span1_text, r.span1_index)
    b = _occurrences(r.text, r.span2_text, r.span2_index)
    best = None
    for da, s1, e1 in a:
        for db, s2, e2 in b:
            if e1 <= s2 or e2 <= s1:
                cost = da + db
                if best is None or cost < best[0]:
                    best = (cost, (s1, e1), (s2, e2))
    if best is None:  # overlapping however placed: mark span1 and the part of span2 outside it
        (_, s1, e1), (_, s2, e2) = min(a), min(b)
        s2, e2 = (e1, max(e1, e2)) if s2 >= s1 else (s2, min(e2, s1))
        return (s1, e1), (s2, e2)
    return best[1], best[2]


def _rwsd_units(r) -> list[Unit]:
    sp1, sp2 = rwsd_spans(r)
    text = " " + r.text  # as RUSSE: a span at the start is tokenised like one mid-text
    marked = [(sp1[0] + 1, sp1[1] + 1), (sp2[0] + 1, sp2[1] + 1)]
    pieces = (("Текст:", False), *_split_marked(text, marked))
    order = (0, 1) if sp1[0] <= sp2[0] else (1, 0)
    return [Unit("RWSD", (r.idx,), None, pieces, _index("RWSD", r.label), span_order=order)]


def _danetqa_units(r) -> list[Unit]:
    pieces = (
        ("Текст:", False),
        (" " + r.passage, False),
        ("\nВопрос:", False),
        (" " + r.question, False),
    )
    return [Unit("DaNetQA", (r.idx,), None, pieces, _index("DaNetQA", r.label), trim=(1,))]


_TRAILING = ",.;:!?"


def rucos_candidates(r) -> list[str]:
    """Candidate entity texts of a RuCoS record, deduplicated by their normalised form, in order
    of first appearance (surface text: the first occurrence, whitespace and trailing punctuation
    stripped)."""
    seen: set[str] = set()
    out = []
    for s, e in r.entities:
        text = r.text[s:e].strip().rstrip(_TRAILING).strip() or r.text[s:e].strip()
        norm = normalize_answer(text)
        if text and norm not in seen:
            seen.add(norm)
            out.append(text)
    return out


def _rucos_units(r, train: bool, rng, max_negatives: int | None) -> list[Unit]:
    cands = rucos_candidates(r)
    gold = None if r.answers is None else {normalize_answer(a) for a in r.answers}
    labels = [None if gold is None else int(normalize_answer(c) in gold) for c in cands]
    positions = list(range(len(cands)))
    if train:
        pos = [i for i in positions if labels[i] == 1]
        if gold is None or not pos:
            return []
        keep = pos[0] if rng is None else pos[int(rng.integers(len(pos)))]
        neg = [i for i in positions if labels[i] == 0]
        if max_negatives is not None and len(neg) > max_negatives:
            neg = (
                list(rng.choice(neg, size=max_negatives, replace=False))
                if rng is not None
                else neg[:max_negatives]
            )
        positions = sorted([keep, *(int(i) for i in neg)])
    passage = r.text.replace("@highlight\n", "").replace("@highlight", "")
    units = []
    for i in positions:
        query = r.query.replace("@placeholder", cands[i])
        pieces = (
            ("Текст:", False),
            (" " + passage, False),
            ("\nЗапрос:", False),
            (" " + query, False),
        )
        units.append(Unit("RuCoS", (r.idx, i), (r.idx,), pieces, labels[i], trim=(1,)))
    return units


_MAKERS: dict[str, Callable] = {
    "LiDiRus": _nli_units("LiDiRus"),
    "RCB": _nli_units("RCB"),
    "TERRa": _nli_units("TERRa"),
    "PARus": _parus_units,
    "MuSeRC": _muserc_units,
    "RUSSE": _russe_units,
    "RWSD": _rwsd_units,
    "DaNetQA": _danetqa_units,
    "RuCoS": None,  # needs train/rng, handled in make_units
}


# ------------------------------------------------------------------------------- encoding


def _water_fill(lengths: list[int], excess: int) -> tuple[list[int], int]:
    """Shorten the longest lengths first, down to the next longest, until `excess` is removed;
    returns (new lengths, excess left)."""
    new = list(lengths)
    while excess > 0 and new and max(new) > 0:
        top = max(new)
        tops = [i for i, n in enumerate(new) if n == top]
        nxt = max((n for n in new if n < top), default=0)
        room = (top - nxt) * len(tops)
        if room <= excess:
            for i in tops:
                new[i] = nxt
            excess -= room
        else:
            per, extra = divmod(excess, len(tops))
            for j, i in enumerate(tops):
                new[i] = top - per - (1 if j < extra else 0)
            excess = 0
    return new, excess


def encode_unit(
    unit: Unit, encode: Callable[[str], list[int]], max_len: int, bos: int | None
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the unit (BOS first when given) and the token span [start, end) of each marked
    piece (in `unit.span_order`). Over `max_len`, tokens go from the longest `unit.trim` piece
    first, then from the longest other unmarked piece; a piece right before a marked one loses its
    start (the words next to the span stay), any other piece its end. Marked pieces are never
    cut."""
    toks = [list(encode(text)) if text else [] for text, _ in unit.pieces]
    marked = [m for _, m in unit.pieces]
    budget = max_len - (1 if bos is not None else 0)
    excess = sum(len(t) for t in toks) - budget
    if excess > 0:
        first = [i for i in unit.trim if not marked[i]]
        rest = [i for i in range(len(toks)) if not marked[i] and i not in first]
        for group in (first, rest):
            if excess <= 0:
                break
            new, excess = _water_fill([len(toks[i]) for i in group], excess)
            for i, n in zip(group, new, strict=True):
                before_span = i + 1 < len(marked) and marked[i + 1]
                toks[i] = toks[i][len(toks[i]) - n :] if before_span else toks[i][:n]
        if excess > 0:
            raise ValueError(
                f"{unit.task} {unit.key}: the marked spans alone need more than max_len={max_len} "
                "tokens"
            )
    ids: list[int] = [] if bos is None else [bos]
    spans = []
    for t, m in zip(toks, marked, strict=True):
        if m:
            spans.append((len(ids), len(ids) + len(t)))
        ids.extend(t)
    if unit.span_order:
        spans = [spans[i] for i in unit.span_order]
    return ids, spans


# -------------------------------------------------------------------------------- decoding


def decode(task: str, records: Sequence, unit_keys: Sequence[tuple], scores: np.ndarray) -> list:
    """Predictions aligned with `records`, in the normalised label form (data.py's): NLI strings,
    PARus the chosen choice 0/1, RUSSE/RWSD/DaNetQA bool, MuSeRC {answer idx: 0/1}, RuCoS the
    entity text (argmax over its candidates; "" when a record has none). `scores` has one row per
    unit key; choice tasks use column 0 (their head has one output)."""
    spec = TASK_SPECS[task]
    scores = np.asarray(scores)
    by_key = {tuple(k): scores[i] for i, k in enumerate(unit_keys)}
    out: list = []
    for r in records:
        if task == "PARus":
            out.append(int(by_key[(r.idx, 1)][0] > by_key[(r.idx, 0)][0]))
        elif task == "RuCoS":
            cands = rucos_candidates(r)
            best, best_score = "", -np.inf
            for i, c in enumerate(cands):
                row = by_key.get((r.idx, i))
                if row is not None and float(row[0]) > best_score:
                    best, best_score = c, float(row[0])
            out.append(best)
        elif task == "MuSeRC":
            out.append(
                {
                    a.idx: spec.labels[int(np.argmax(by_key[(r.idx, q.idx, a.idx)]))]
                    for q in r.questions
                    for a in q.answers
                }
            )
        else:
            out.append(spec.labels[int(np.argmax(by_key[(r.idx,)]))])
    return out


def gold_predictions(task: str, records: Sequence) -> list:
    """The gold labels of labelled records in decode's form (RuCoS: the first gold answer)."""
    out: list = []
    for r in records:
        if task == "MuSeRC":
            out.append({a.idx: a.label for q in r.questions for a in q.answers})
        elif task == "RuCoS":
            out.append(r.answers[0] if r.answers else "")
        else:
            out.append(r.label)
    return out
