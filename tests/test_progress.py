"""The progress bar's rate and ETA come from steady updates, not the warm-up one."""

from __future__ import annotations

import io

from mlx_rsg import progress
from mlx_rsg.progress import Progress


def test_eta_ignores_the_warm_up_update(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    bar = Progress(10, "epoch 1/1", stream=out)
    now[0] = 30.0  # the first batch: compilation, first allocations, a prefix cache filling
    bar.update(1, 8)
    assert out.getvalue().splitlines()[-1].endswith("1/10 warm-up ETA ?")
    for _ in range(2):  # steady batches of 1 s each
        now[0] += 1.0
        bar.update(1, 8)
    rate, eta = bar.rate_and_eta()
    assert rate == 8.0 and eta == 7.0  # 7 batches left at 1 s; from the start it would be 70 s
    now[0] += 1.0
    bar.update(1, 8)
    assert out.getvalue().splitlines()[-1].endswith("4/10 8.0 ex/s ETA 0:06")


def test_a_resumed_bar_counts_from_where_it_was():
    bar = Progress(10, "epoch 2/3", stream=io.StringIO(), done=6)
    bar.update(1, 8)
    assert bar.done == 7 and bar.rate_and_eta() == (None, None)


def test_fmt_time():
    assert progress.fmt_time(59) == "0:59"
    assert progress.fmt_time(3725) == "1:02:05"


def test_only_rank_0_of_a_launched_run_draws(monkeypatch):
    """Ranks other than 0 (mlx.launch's MLX_RANK, or mpirun's) draw nothing; a plain process and
    rank 0 draw. Read per bar from the environment: no flag set process-wide."""
    cases = [("MLX_RANK", "1", False), ("MLX_RANK", "0", True),
             ("OMPI_COMM_WORLD_RANK", "2", False), (None, None, True)]
    for variable, rank, drawn in cases:
        for k in progress.RANK_VARIABLES:
            monkeypatch.delenv(k, raising=False)
        if variable:
            monkeypatch.setenv(variable, rank)
        out = io.StringIO()
        bar = Progress(2, "val", stream=out)
        bar.update(2, 2)
        assert bool(out.getvalue()) == drawn, (variable, rank)
