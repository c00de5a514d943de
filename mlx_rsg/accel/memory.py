"""MLX's CPU allocator settings for our forwards and training steps. Process-wide, so applied
only on request: by the `mlx-rsg` commands that run a model, the benchmarks, or a Python user."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import mlx.core as mx


def keep_freed_buffers(limit: int = 2 << 30) -> int | None:
    """Let MLX's CPU allocator keep up to `limit` bytes (2 GiB) of freed buffers for reuse;
    returns the previous limit (None on a GPU, where nothing changes).

    Its default on the CPU is 32 MiB (on Metal: the memory limit), so the hundreds of MB of
    temporaries a forward or training step frees go back to the OS and are page-faulted in again
    on the next step (docs/benchmarks.md). A process-wide setting: the `mlx-rsg` commands that
    load a model call it, a Python user may. Only ever raises the limit, so a user's own setting
    stands; more than a quarter of the memory limit raised RSS for no gain.
    """
    if mx.default_device() != mx.cpu:
        return None
    limit = min(limit, mx.get_memory_limit() // 4)
    before = mx.set_cache_limit(limit)
    if before > limit:
        mx.set_cache_limit(before)
    return before


@contextlib.contextmanager
def freed_buffers_kept() -> Iterator[None]:
    """keep_freed_buffers() for the duration of the block only."""
    before = keep_freed_buffers()
    try:
        yield
    finally:
        if before is not None:
            mx.set_cache_limit(before)
