"""Typed records for the nine Russian SuperGLUE tasks and readers for the official layout.

INTERFACE (fixed; other modules build on it):
  TASKS                          the nine official task names, in leaderboard order
  load_split(root, task, split)  -> list[Record]   root: directory, .zip, or files as .jsonl.gz
  available_splits(root, task)   -> list[str]
  DataError(UserError)           one line naming file, line number and field

Labels are normalised to Python values: NLI tasks str (official spelling), PARus int 0/1,
RUSSE/DaNetQA/RWSD bool, MuSeRC answers int 0/1, RuCoS the set of gold answer texts. Test splits
have label None.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_rsg.errors import UserError

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
    NLIRecord
    | PARusRecord
    | MuSeRCRecord
    | RUSSERecord
    | RWSDRecord
    | DaNetQARecord
    | RuCoSRecord
)
