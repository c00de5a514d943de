"""Data parallelism on MLX's own engine: `mx.distributed`, processes started by `mlx.launch`.

    mlx.launch -n 2 -- mlx-rsg train MODEL_DIR --data rsg -o runs/x ...
    mlx.launch --hostfile hosts.json -- mlx-rsg train ...

Every rank runs the same command on the same data and model files. Training splits each batch's
rows across the ranks (whole choice groups; `model/batching.shard_range`) and sums the
gradients weighted by each rank's share, so N ranks take the same optimizer steps as one process
with the same batches. Evaluation and prediction split records across ranks and gather the
logits. Only rank 0 writes files. A process not started by a launcher gets `SINGLE` and never
touches the distributed engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from mlx_rsg.accel.cpu_parallel import cpu_cores
from mlx_rsg.errors import UserError
from mlx_rsg.progress import RANK_VARIABLES


@dataclass(frozen=True)
class World:
    """The processes one command runs on; `group` is None for a single process. `device` is
    where its collectives run (`collective_device`); `local_ranks`: how many of them run on
    this rank's machine, sharing its cores."""

    group: Any = None
    device: Any = mx.cpu
    local_ranks: int = 1

    @property
    def cores(self) -> int:
        """The cores this rank may keep busy (row chunks, BLAS threads): its machine's share."""
        return cpu_cores(self.local_ranks)

    @property
    def rank(self) -> int:
        return 0 if self.group is None else self.group.rank()

    @property
    def size(self) -> int:
        return 1 if self.group is None else self.group.size()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of `items`: every size-th one from position rank."""
        return items[self.rank :: self.size]

    def all_sum(self, x: mx.array) -> mx.array:
        if self.group is None:
            return x
        return mx.distributed.all_sum(x, group=self.group, stream=self.device)

    def sum_tree(self, tree: Any) -> Any:
        """Element-wise sum over ranks of a tree of arrays (gradients): MLX's chunked
        all-reduce (`average_gradients`), times the rank count."""
        if self.group is None:
            return tree
        mean = nn.utils.average_gradients(tree, group=self.group)
        return tree_map(lambda g: g * self.size, mean)

    def gather_rows(self, total: int, positions: list[int], rows: np.ndarray) -> np.ndarray:
        """(total, width) float32 with every rank's `rows` at its `positions` (disjoint across
        ranks, together covering 0..total-1). Summing zeros is exact."""
        rows = np.asarray(rows, np.float32)
        rows = rows.reshape(len(positions), -1) if len(positions) else np.zeros((0, 0), np.float32)
        out = np.zeros((total, self.all_max(rows.shape[1])), np.float32)
        if len(positions):
            out[positions] = rows
        return out if self.group is None else np.array(self.all_sum(mx.array(out)))

    def count_local(self) -> int:
        """How many ranks run on this rank's machine (same host name): a collective."""
        if self.group is None:
            return 1
        mine = int.from_bytes(hashlib.sha256(socket.gethostname().encode()).digest()[:3], "little")
        hosts = mx.distributed.all_gather(mx.array([mine]), group=self.group, stream=self.device)
        return int((hosts == mine).sum().item())

    def barrier(self) -> None:
        """Wait until every rank is here."""
        self.all_max(0)

    def all_max(self, value: int) -> int:
        if self.group is None:
            return value
        high = mx.distributed.all_max(mx.array([value]), group=self.group, stream=self.device)
        return int(high.item())

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's `data` on every rank (others pass None)."""
        if self.group is None:
            return data or b""
        n = self.all_max(len(data) if self.is_main and data else 0)
        buf = np.zeros(n, np.int32)
        if self.is_main and data:
            buf[:] = np.frombuffer(data, np.uint8)
        return np.array(self.all_sum(mx.array(buf))).astype(np.uint8).tobytes()

    def broadcast_arrays(self, arrays: dict[str, mx.array] | None) -> dict[str, mx.array]:
        """Rank 0's named arrays on every rank (others pass None): names, shapes and dtypes
        first, then the values."""
        if self.group is None:
            return dict(arrays or {})
        manifest = None
        if self.is_main:
            manifest = json.dumps([[k, list(v.shape), str(v.dtype).split(".")[-1]]
                                   for k, v in arrays.items()]).encode()  # fmt: skip
        out = {}
        for name, shape, dtype in json.loads(self.broadcast_bytes(manifest)):
            value = arrays[name] if self.is_main else mx.zeros(shape, getattr(mx, dtype))
            out[name] = self.all_sum(value)
        mx.eval(out)
        return out

    def check_same(self, what: str, value: str) -> None:
        """Stop every rank with the same one-line error unless all ranks pass the same value
        (their flags, data, model files): a mismatch would otherwise train silently wrong."""
        if self.group is None:
            return
        digest = np.frombuffer(hashlib.sha256(value.encode()).digest()[:16], np.int32).copy()
        mine = mx.array(digest)
        high = mx.distributed.all_max(mine, group=self.group, stream=self.device)
        low = mx.distributed.all_min(mine, group=self.group, stream=self.device)
        if not bool(mx.all(high == low).item()):
            raise UserError(
                f"the {self.size} ranks were started with different {what}; every rank must run "
                "the same command on the same files"
            )


SINGLE = World()


@cache
def launched() -> World:
    """The world `mlx.launch` (or mpirun) started this process in; SINGLE otherwise."""
    if not any(k in os.environ for k in RANK_VARIABLES):
        return SINGLE
    group = mx.distributed.init()
    if group.size() == 1:
        return SINGLE
    world = World(group, collective_device())
    return replace(world, local_ranks=world.count_local())


def collective_device() -> mx.Device:
    """Where a job's sums, gathers and maxima run: NCCL (MLX's CUDA backend, which mlx.launch
    starts with NCCL_HOST_IP set) reduces on the GPU; ring, MPI and JACCL reduce on the CPU, as
    mlx-lm's collectives do. Gradients go through `average_gradients`, which picks its own."""
    return mx.gpu if "NCCL_HOST_IP" in os.environ else mx.cpu


def lost_peer(error: BaseException) -> bool:
    """Whether an exception is MLX's report that another rank went away."""
    text = str(error)
    return isinstance(error, RuntimeError) and ("peer" in text or "[ring]" in text)
