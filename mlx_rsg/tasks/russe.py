"""RUSSE: is a word used in the same sense in two sentences (accuracy)? The model pools the word
in each sentence (span pooling)."""

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

    def units(self, record: RUSSERecord, train=False, rng=None, max_negatives=None) -> list[Unit]:
        r = record
        # a leading space, so a target word at the very start is tokenised like one mid-sentence
        s1 = split_marked(" " + r.sentence1, [(r.start1 + 1, r.end1 + 1)])
        s2 = split_marked(" " + r.sentence2, [(r.start2 + 1, r.end2 + 1)])
        pieces = (("Слово:", False), (" " + r.word, False), ("\n1:", False), *s1, ("\n2:", False),
                  *s2)  # fmt: skip
        return [Unit(self.name, (r.idx,), None, tuple(pieces), self.label_index(r.label))]


TASK = RUSSE("RUSSE", (False, True), pooling="span", spans=2, spelling=("false", "true"))
