"""RUSSE: is a word used in the same sense in two sentences (accuracy)? The model pools the word
in each sentence and the last token of a question restating the task after both sentences (span
pooling): in a causal decoder a word's tokens see only the text before them."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_rsg.tasks.base import Task
from mlx_rsg.tasks.fields import BOOLS, Where, fail, get_int, get_label, get_str
from mlx_rsg.tasks.units import Unit, split_marked


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
class RUSSE(Task):
    def parse(self, obj: dict, where: Where) -> list[RUSSERecord]:
        spans = []
        for k in "12":
            text = get_str(obj, f"sentence{k}", where)
            start, end = get_int(obj, f"start{k}", where), get_int(obj, f"end{k}", where)
            if not 0 <= start < len(text):
                msg = f"{start} is outside sentence{k} ({len(text)} characters)"
                raise fail(where, f"start{k}", msg)
            # The official end offsets sometimes run one character past the sentence (thousands
            # of train/val records): accepted as they are; units() clamps spans to the text.
            if not start < end <= len(text) + 1:
                msg = (
                    f"{end} does not fit start{k}={start} and sentence{k} ({len(text)} characters)"
                )
                raise fail(where, f"end{k}", msg)
            spans += [text, start, end]
        s1, a1, b1, s2, a2, b2 = spans
        idx, word = get_int(obj, "idx", where), get_str(obj, "word", where)
        return [RUSSERecord(idx, word, s1, s2, a1, b1, a2, b2, get_label(obj, where, BOOLS))]

    def texts(self, record: RUSSERecord) -> list[str]:
        return [record.sentence1, record.sentence2]

    def group_keys(self, record: RUSSERecord) -> tuple:
        # One query (a word in a sentence) is paired with many second sentences: 19,845 train
        # pairs, 3,930 queries. Grouping by sentence or word would leave a few hundred giant
        # groups, and val shares 99.8 % of its records' sentences with train anyway.
        return (("query", record.word, record.sentence1),)

    def units(self, record: RUSSERecord, train=False, rng=None, max_negatives=None) -> list[Unit]:
        r = record
        # a leading space, so a target word at the very start is tokenised like one mid-sentence
        t1, t2 = " " + r.sentence1, " " + r.sentence2
        s1 = split_marked(t1, [word_span(t1, r.start1 + 1, r.end1 + 1)])
        s2 = split_marked(t2, [word_span(t2, r.start2 + 1, r.end2 + 1)])
        question = f"\nВопрос: слово «{r.word}» в 1 и 2 значит одно и то же"
        pieces = (("Слово:", False), (" " + r.word, False), ("\n1:", False), *s1, ("\n2:", False),
                  *s2, (question, False), ("?", True))  # fmt: skip
        return [Unit(self.name, (r.idx,), None, tuple(pieces), self.label_index(r.label))]


def word_span(text: str, start: int, end: int) -> tuple[int, int]:
    """The char span [start, end) snapped to the word it marks: trailing non-letters dropped,
    then widened to the whole word. The official offsets differ by split: train and val end one
    character past the word (99.4 %), test one character before its end (37,568 of 37,784
    spans: "доск" for "доска")."""
    start, end = min(max(start, 0), len(text)), min(max(end, start), len(text))
    while end > start + 1 and not text[end - 1].isalnum():
        end -= 1
    while start < end - 1 and not text[start].isalnum():
        start += 1
    while end < len(text) and text[end].isalnum():
        end += 1
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    return start, end


TASK = RUSSE("RUSSE", (False, True), pooling="span", spans=3, spelling=("false", "true"))
