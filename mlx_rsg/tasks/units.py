"""A unit: one classification example cut from a record, and its token ids.

A unit is a short Russian prompt cut into pieces `(text, marked)`. Marked pieces are the spans the
span-pooling tasks (RUSSE, RWSD) pool; the model sees the pieces concatenated in order. The first
element of every unit key is the record's idx. Pieces are tokenised one by one, so glue words end
without a space and the text after them starts with one: a SentencePiece tokenizer without a dummy
prefix then sees "▁word" tokens, as in running text, instead of a lone "▁".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mlx_rsg.errors import UserError


@dataclass(frozen=True)
class Unit:
    task: str
    key: tuple  # unique within the task's split; key[0] is the record idx
    group: tuple | None  # choice tasks: units scored against each other share it
    pieces: tuple[tuple[str, bool], ...]  # (text, marked) in order
    label: int | None  # index into the task's labels; choice tasks: 1 = the right candidate
    trim: tuple[int, ...] = ()  # pieces truncation may shorten first (the long context)
    keep_end: tuple[int, ...] = ()  # pieces truncation cuts from their start, keeping the end
    span_order: tuple[int, ...] = ()  # order to report the marked spans in (default: text order)


PUNCT = ',.;:!?»")'


def split_marked(text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[str, bool]]:
    """`text` cut around non-overlapping char spans. Whitespace before a span moves into it (so a
    SentencePiece tokenizer sees "▁word" as in running text); trailing whitespace and
    punctuation move out (the official RUSSE ends sometimes take one character too many)."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for s, e in sorted(spans):
        s, e = min(max(s, pos), len(text)), min(max(e, s), len(text))
        while e > s + 1 and (text[e - 1].isspace() or text[e - 1] in PUNCT):
            e -= 1
        while s > pos and text[s - 1].isspace():
            s -= 1
        pieces.append((text[pos:s], False))
        pieces.append((text[s:e], True))
        pos = e
    pieces.append((text[pos:], False))
    return pieces


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


def _truncate(unit: Unit, toks: list[list[int]], excess: int, max_len: int) -> None:
    """Remove `excess` tokens in place: from the longest `unit.trim` piece first, then from the
    longest other unmarked piece; a piece right before a marked one or in `unit.keep_end` loses
    its start (the words next to the span stay), any other piece its end. Marked pieces are
    never cut."""
    marked = [m for _, m in unit.pieces]
    first = [i for i in unit.trim if not marked[i]]
    rest = [i for i in range(len(toks)) if not marked[i] and i not in first]
    for group in (first, rest):
        if excess <= 0:
            break
        new, excess = _water_fill([len(toks[i]) for i in group], excess)
        for i, n in zip(group, new, strict=True):
            keep_end = (i + 1 < len(marked) and marked[i + 1]) or i in unit.keep_end
            toks[i] = toks[i][len(toks[i]) - n :] if keep_end else toks[i][:n]
    if excess > 0:
        raise UserError(
            f"{unit.task} record idx {unit.key[0]}: its marked words alone need "
            f"{max_len + excess} tokens, more than its max length {max_len} (raise --max-len or "
            "--task-max-len)"
        )


def encode_unit(
    unit: Unit, encode: Callable[[str], list[int]], max_len: int, bos: int | None
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the unit (BOS first when given) and the token span [start, end) of each marked
    piece (in `unit.span_order`), truncated to `max_len` as `_truncate` says."""
    toks = [list(encode(text)) if text else [] for text, _ in unit.pieces]
    budget = max_len - (1 if bos is not None else 0)
    excess = sum(len(t) for t in toks) - budget
    if excess > 0:
        _truncate(unit, toks, excess, max_len)
    ids: list[int] = [] if bos is None else [bos]
    spans = []
    for t, (_, m) in zip(toks, unit.pieces, strict=True):
        if m:
            spans.append((len(ids), len(ids) + len(t)))
        ids.extend(t)
    if unit.span_order:
        spans = [spans[i] for i in unit.span_order]
    return ids, spans
