"""Dropout whose mask is drawn for the whole batch, so a rank holding some of its rows applies
exactly the mask one process would (`distributed`: the same seed, the same draws, its rows)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import mlx.core as mx
import mlx.nn as nn

_ROWS: ContextVar[tuple[int, int] | None] = ContextVar("mlx_rsg_batch_rows", default=None)


@contextmanager
def batch_rows(start: int, total: int) -> Iterator[None]:
    """Inside: the arrays dropout sees hold rows start.. of a batch of `total` rows."""
    token = _ROWS.set((start, total))
    try:
        yield
    finally:
        _ROWS.reset(token)


class Dropout(nn.Dropout):
    """nn.Dropout (the same mask outside `batch_rows`), with the mask drawn for the whole batch
    and sliced to this array's rows inside it."""

    def __call__(self, x: mx.array) -> mx.array:
        if self._p_1 == 1 or not self.training:
            return x
        rows = _ROWS.get()
        if rows is None:
            mask = mx.random.bernoulli(self._p_1, x.shape)
        else:
            start, total = rows
            mask = mx.random.bernoulli(self._p_1, (total, *x.shape[1:]))[start : start + x.shape[0]]
        return (mask * x) * (1 / self._p_1)
