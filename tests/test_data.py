"""Readers for the official RSG layout: fixtures, archives, quirks, located errors, real data."""

from __future__ import annotations

import pytest

from mlx_rsg import data


@pytest.mark.parametrize("task", data.TASKS)
def test_real_data_loads(task, real_rsg_root):
    splits = data.available_splits(real_rsg_root, task)
    if not splits:
        pytest.skip(f"{task} is not in {real_rsg_root}")
    for split in splits:
        assert data.load_split(real_rsg_root, task, split)
