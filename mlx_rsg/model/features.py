"""The exact frozen-prefix cache: layer K's input per example, computed once per run.

The blocks below the classifier's `trainable_start()` never change during training and run
without dropout, so their output for an example depends on its tokens only. The first time an
example is seen its rows are stored (unpadded); afterwards batches are assembled from the store
and the frozen blocks are skipped. `fill` stores the units of records that share a passage
ahead of their batches, running the passage once (`model/shared_prefix.py`).

In RAM by default; with `cache_dir` the rows go to one append-only file that is memory-mapped
back (~330 KB per 128-token example at 640 hidden in float32, half that in bfloat16: rows
are kept in the model's compute dtype), so the cache can exceed RAM. The file
belongs to one cache object: a new, uniquely named file, removed when the cache is, so a cache
never holds another model's, tokenisation's or process's rows (two trains sharing a --cache-dir
each get their own).
"""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_rsg.accel.cpu_parallel import row_parallel
from mlx_rsg.io import remove_stale
from mlx_rsg.model import shared_prefix
from mlx_rsg.model.batching import make_batches
from mlx_rsg.model.precision import mx_rows, numpy_dtype, numpy_rows
from mlx_rsg.progress import Progress


class PrefixCache:
    def __init__(self, model, cache_dir: str | Path | None = None):
        self.model = model
        self.index: dict[tuple, tuple[int, int]] = {}  # example id -> (row offset, rows)
        self.rows: dict[tuple, np.ndarray] = {}  # RAM store
        self.path = None
        self.hits = self.misses = 0
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            remove_stale(Path(cache_dir), "prefix-")  # files of killed runs
            fd, name = tempfile.mkstemp(prefix=f"prefix-{os.getpid()}-", suffix=".rows",
                                        dir=cache_dir)  # fmt: skip
            self.path = Path(name)
            self._file = os.fdopen(fd, "ab")
            self._written = 0  # rows in the file
            self._map: np.ndarray | None = None
            weakref.finalize(self, _remove, self._file, self.path)

    def __len__(self) -> int:
        return len(self.index) if self.path else len(self.rows)

    def __contains__(self, example_id) -> bool:
        return example_id in (self.index if self.path else self.rows)

    def prefix(self, batch) -> mx.array:
        """Layer-K input (B, L, D) for a right-padded batch. Values at padding positions are
        unspecified: causal attention and pooling never read them."""
        lengths = batch.lengths.tolist()
        missing = [j for j, i in enumerate(batch.ids) if i not in self]
        self.misses += len(missing)
        self.hits += len(batch.ids) - len(missing)
        if len(missing) == len(batch.ids):
            h = row_parallel(self.model.prefix, batch.tokens, parts=self._parts)
            self._store(batch.ids, lengths, h)
            return h
        if missing:
            h = row_parallel(self.model.prefix, batch.tokens[mx.array(missing)],
                             parts=self._parts)  # fmt: skip
            self._store([batch.ids[j] for j in missing], [lengths[j] for j in missing], h)
        L = batch.tokens.shape[1]
        dims = self.model.backbone.hidden_size
        out = np.zeros((len(batch.ids), L, dims), numpy_dtype(self._dtype))
        for j, i in enumerate(batch.ids):
            out[j, : lengths[j]] = self._get(i)
        return mx_rows(out, self._dtype)

    @property
    def _parts(self) -> int:
        return self.model.backbone.runtime.row_parts

    def fill(self, encoded: Sequence, batch_size: int, desc: str | None = None) -> None:
        """Store the rows of the units (batching.EncodedUnit) not stored yet whose record's units
        share a long token prefix: the prefix runs once per record (`model.shared_prefix`; equal
        to running each unit whole). Other units are left to `prefix`, batch by batch."""
        missing = [e for e in encoded if (e.unit.task, e.unit.key) not in self]
        groups, _ = shared_prefix.group_shared(missing)
        if not groups:
            return
        bar = Progress(sum(len(g.members) for g in groups), desc) if desc else None
        for group in groups:
            state = shared_prefix.PrefixState(self.model, group.prefix, self.model.k)
            self._dtype = state.hidden.dtype
            for batch in make_batches(group.members, batch_size, rng=None):
                self._store_rows(batch.ids, shared_prefix.shared_rows(state, batch))
                self.misses += len(batch.ids)
                if bar is not None:
                    bar.update(len(batch.ids), len(batch.ids))
        if bar is not None:
            bar.close()

    def _store(self, ids, lengths, h: mx.array) -> None:
        self._dtype = h.dtype
        rows = numpy_rows(h)
        self._store_rows(ids, [r[:n] for r, n in zip(rows, lengths, strict=True)])

    def _store_rows(self, ids, rows: list[np.ndarray]) -> None:
        """Store each id's unpadded rows (L, D), in the compute dtype (`precision.numpy_rows`)."""
        kind = numpy_dtype(self._dtype)
        for i, r in zip(ids, rows, strict=True):
            if self.path is None:
                self.rows[i] = np.array(r, kind)
            else:
                self._file.write(np.ascontiguousarray(r, kind).tobytes())
                self.index[i] = (self._written, len(r))
                self._written += len(r)
        if self.path is not None:
            self._file.flush()

    def _get(self, example_id) -> np.ndarray:
        if self.path is None:
            return self.rows[example_id]
        start, n = self.index[example_id]
        if self._map is None or start + n > self._map.shape[0]:
            dims = self.model.backbone.hidden_size
            kind = numpy_dtype(self._dtype)
            self._map = np.memmap(self.path, kind, "r", shape=(self._written, dims))
        return self._map[start : start + n]


def _remove(file, path: Path) -> None:
    file.close()
    path.unlink(missing_ok=True)
