"""RWSD, the Russian Winograd schema: does the pronoun (span2) refer to span1 (accuracy)? The
model pools both spans and the last token of a question restating them after the text (span
pooling): in a causal decoder the spans' tokens see only what precedes them, and a schema's two
texts differ after the pronoun ("... because he was faster / slower")."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlx_rsg.tasks.base import Task
from mlx_rsg.tasks.fields import BOOLS, Where, as_object, fail, get, get_int, get_label, get_str
from mlx_rsg.tasks.units import PUNCT, Unit, split_marked


@dataclass(frozen=True)
class RWSDRecord:
    idx: int
    text: str
    span1_index: int  # word index (whitespace tokens) of span1 in text
    span1_text: str
    span2_index: int
    span2_text: str
    label: bool | None  # True: span2 (pronoun) refers to span1


_WORD = re.compile(r"\S+")


def _occurrences(text: str, span_text: str, index: int) -> list[tuple[int, int, int]]:
    """(distance in words from `index`, start, end) of each place `span_text` starts at a word,
    those where it also ends one ("его работа", not in "его работать") if there are any. The
    official word indices are sometimes off; the text is what counts."""
    words = [m.start() for m in _WORD.finditer(text)]
    span_text = span_text.strip()
    found, whole = [], []
    for i, start in enumerate(words):
        if span_text and text.startswith(span_text, start):
            end = start + len(span_text)
            found.append((abs(i - index), start, end))
            if end == len(text) or text[end].isspace() or text[end] in PUNCT or \
                    not text[end - 1].isalnum():
                whole.append(found[-1])
    if found:
        return whole or found
    # Not in the text verbatim: fall back to the index's words, trailing punctuation dropped.
    n = max(1, len(span_text.split()))
    i = min(max(index, 0), len(words) - 1) if words else 0
    if not words:
        return [(0, 0, 0)]
    ends = [m.end() for m in _WORD.finditer(text)]
    start, end = words[i], ends[min(i + n, len(words)) - 1]
    while end > start + 1 and text[end - 1] in PUNCT:
        end -= 1
    return [(0, start, end)]


def rwsd_spans(r: RWSDRecord) -> tuple[tuple[int, int], tuple[int, int]]:
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


GLUED = ",.;:!?«»\"()—-"  # what may follow a pronoun in its word ("он,")


def substituted(r: RWSDRecord) -> tuple[str, str]:
    """The text with span1 (the candidate) in place of the pronoun (span2's first word), cut
    after that word: (head, tail). Punctuation glued to the pronoun ("он,") stays with the
    candidate, so every candidate for one pronoun is followed by the same tail
    (`model/substitution.py`)."""
    start = rwsd_spans(r)[1][0]
    space = r.text.find(" ", start)
    word_end = len(r.text) if space < 0 else space
    word = r.text[start:word_end]
    glued = word[len(word.rstrip(GLUED)):]
    return r.text[:start] + r.span1_text.strip() + glued, r.text[word_end + 1:]


def pronoun_key(r: RWSDRecord) -> tuple:
    """The records that ask about one pronoun of one text (a schema's twins ask about the same
    pronoun with two candidates): decided together by substitution."""
    return (r.text, r.span2_index, r.span2_text)


@dataclass(frozen=True)
class RWSD(Task):
    def parse(self, obj: dict, where: Where) -> list[RWSDRecord]:
        text = get_str(obj, "text", where)
        target = as_object(get(obj, "target", where), "target", where)
        n_words = len(text.split())
        spans = []
        for k in "12":
            index = get_int(target, f"span{k}_index", where, "target.")
            if not 0 <= index < n_words:
                msg = f"word {index} is outside the text ({n_words} words)"
                raise fail(where, f"target.span{k}_index", msg)
            spans += [index, get_str(target, f"span{k}_text", where, "target.")]
        idx = get_int(obj, "idx", where)
        return [RWSDRecord(idx, text, *spans, get_label(obj, where, BOOLS))]

    def texts(self, record: RWSDRecord) -> list[str]:
        return [record.text]

    def group_keys(self, record: RWSDRecord) -> tuple:
        """A Winograd schema is two texts that differ after the pronoun ("... he moved faster /
        slower"), each asked about both candidates: 606 train records, 178 schemas. The text
        before the pronoun ties a text to its twin."""
        before = record.text[: rwsd_spans(record)[1][0]].strip()
        return (("text", record.text), ("before the pronoun", before))

    def units(self, record: RWSDRecord, train=False, rng=None, max_negatives=None) -> list[Unit]:
        sp1, sp2 = rwsd_spans(record)
        text = " " + record.text  # as RUSSE: a span at the start is tokenised like one mid-text
        marked = [(sp1[0] + 1, sp1[1] + 1), (sp2[0] + 1, sp2[1] + 1)]
        question = f"\nВопрос: «{record.span2_text.strip()}» — это «{record.span1_text.strip()}»"
        pieces = (("Текст:", False), *split_marked(text, marked), (question, False), ("?", True))
        order = (0, 1, 2) if sp1[0] <= sp2[0] else (1, 0, 2)
        label = self.label_index(record.label)
        return [Unit(self.name, (record.idx,), None, pieces, label, span_order=order)]


TASK = RWSD("RWSD", (False, True), pooling="span", spans=3, spelling=("False", "True"))
