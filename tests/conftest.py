"""Shared fixtures. pytest imports this file before any test module, so `import mlx_rsg` here
loads the BLAS before anything imports mlx (mlx_rsg/accel/blas.py): test modules import in any
order."""

import os
from pathlib import Path

# The tests exercise every CPU fast path, whatever this machine's timings say
# (mlx_rsg.accel.fastpaths); tests of the per-machine decision set their own value.
os.environ["MLX_RSG_FAST_PATHS"] = "all"

import mlx_rsg  # noqa: F401, I001  (first: the BLAS before mlx)
import pytest
from tiny_model import tiny_model_dir, tiny_rsg_dir  # noqa: F401

TESTS = Path(__file__).parent


@pytest.fixture(scope="session")
def fixture_root() -> Path:
    """Our own small RSG-format fixtures for all nine tasks."""
    return TESTS / "fixtures" / "rsg"


@pytest.fixture(scope="session")
def real_rsg_root() -> Path:
    """The real RSG data: $RSG_DATA, or ../shared/rsg next to the checkout; skip when absent."""
    root = Path(os.environ.get("RSG_DATA", TESTS.parent.parent / "shared" / "rsg"))
    if not root.is_dir():
        pytest.skip(f"real RSG data not found at {root} (set RSG_DATA)")
    return root
