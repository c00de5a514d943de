"""A one-line progress bar on stderr: items, loss, examples/s and an ETA a newcomer can trust.

The first update of a bar is warm-up (MLX compiles kernels, allocates buffers, a prefix cache
fills): it can take many times a steady batch, so rates and the ETA are measured from the end
of the first update on, and the bar says `ETA ?` until there is a steady batch to measure.
"""

from __future__ import annotations

import os
import sys
import time

# What mlx.launch (and mpirun) set in every process it starts (`distributed.launched` reads them).
RANK_VARIABLES = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def drawn_here() -> bool:
    """Whether this process draws bars: not in the ranks other than 0 of a distributed run, so
    that one bar shows."""
    return all(os.environ.get(k, "0") == "0" for k in RANK_VARIABLES)


class Progress:
    """Redrawn in place on a terminal; one plain line every ~10% otherwise (logs, CI)."""

    def __init__(self, total: int, desc: str, stream=None, done: int = 0):
        self.total, self.desc = total, desc
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.enabled = drawn_here()
        self.done = done  # items already done before this bar (a resumed epoch)
        self.examples = 0
        self.loss: float | None = None
        self._warm: tuple[float, int, int] | None = None  # (time, done, examples) after warm-up
        self._next_plain = 0

    def update(self, items: int, examples: int, loss: float | None = None) -> None:
        self.done += items
        self.examples += examples
        if self._warm is None:
            self._warm = (time.perf_counter(), self.done, self.examples)
        if loss is not None:
            self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        if self.tty or self.done >= self._next_plain or self.done == self.total:
            self._draw()
            self._next_plain = self.done + max(1, self.total // 10)

    def rate_and_eta(self) -> tuple[float | None, float | None]:
        """Examples/s and seconds left, from the steady updates after the first (None before)."""
        if self._warm is None:
            return None, None
        t0, done0, examples0 = self._warm
        elapsed = time.perf_counter() - t0
        if self.done == done0 or elapsed <= 0:
            return None, None
        rate = (self.examples - examples0) / elapsed
        return rate, elapsed / (self.done - done0) * (self.total - self.done)

    def _draw(self) -> None:
        if not self.enabled:
            return
        rate, eta = self.rate_and_eta()
        width = 20
        fill = int(width * self.done / max(self.total, 1))
        line = (
            f"{self.desc} [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total}"
            + (f" loss {self.loss:.4f}" if self.loss is not None else "")
            + (" warm-up" if rate is None else f" {rate:.1f} ex/s")
            + f" ETA {'?' if eta is None else fmt_time(eta)}"
        )
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
