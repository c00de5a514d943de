"""What every benchmark script ends with: its results as JSON under results/, its table printed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def save(out: Path, result: dict[str, Any], table: str) -> None:
    """Write `result` to `out` (atomically, as run.json is written) and print `table`."""
    from mlx_rsg.io import write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(table)
    print(f"wrote {out}", file=sys.stderr)
