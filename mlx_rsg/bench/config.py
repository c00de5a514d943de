"""`BenchConfig`: every `mlx-rsg bench` option, defined once (the CLI's options are made from its
fields). Imports no mlx: `mlx-rsg --help` reads it."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_rsg.options import AT_LEAST_0, AT_LEAST_1, opt


@dataclass
class BenchConfig:
    """Every `mlx-rsg bench` option but the run dirs, --data and -o (the CLI's options are made
    from these fields)."""

    split: str = opt("val", "A labelled split (test labels are hidden).",
                     choices=["train", "val", "test"])  # test: refused with its reason
    max_per_task: int | None = opt(None, "~N examples per task, whole records drawn with --seed.",
                                   bounds=AT_LEAST_1)  # fmt: skip
    batch_size: int = opt(16, "For throughput.", bounds=AT_LEAST_1)
    latency_samples: int = opt(24, "Records timed one at a time, sampled across tasks.",
                               bounds=AT_LEAST_0)  # fmt: skip
    warmup: int = opt(3, "Untimed batch-1 calls before the latency samples.", bounds=AT_LEAST_0)
    seed: int = opt(0, "Draws --max-per-task's records and the latency sample.",
                    bounds=AT_LEAST_0)  # fmt: skip
    fixture_tasks: tuple[str, ...] = opt((), "Fixture-data tasks, or all.")
    force: bool = opt(False, "Overwrite OUT_DIR.")
