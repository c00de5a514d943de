"""`ServeConfig`: every `mlx-rsg serve` option, defined once (the CLI's options are made from its
fields). Imports no mlx."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_rsg.options import AT_LEAST_1, Bounds, opt


@dataclass
class ServeConfig:
    host: str = opt("127.0.0.1", "Address to bind (0.0.0.0 lets other machines in: there is "
                    "no authentication).")  # fmt: skip
    port: int = opt(8000, "Port to bind (0: any free port, printed at start).",
                    bounds=Bounds(0, 65535))  # fmt: skip
    data: str | None = opt(None, "An RSG data directory: the page's examples are each task's "
                           "first val record (default: hand-written ones).",
                           path="dir")  # fmt: skip
    batch_window_ms: float = opt(5.0, "How long a batch waits for more requests of its run "
                                 "and task once the device is free (0: only what is queued).",
                                 bounds=Bounds(0, 60_000))  # fmt: skip
    max_batch: int = opt(32, "Most units (texts classified) in one batch.", bounds=AT_LEAST_1)
    max_records: int = opt(64, "Most records in one request.", bounds=AT_LEAST_1)
    max_pending: int = opt(256, "Most requests waiting for a batch; more are refused (503).",
                           bounds=AT_LEAST_1)  # fmt: skip
    max_body_kb: int = opt(1024, "Largest request body, KiB.", bounds=AT_LEAST_1)
