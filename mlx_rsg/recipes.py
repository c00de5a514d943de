"""Declarative recipes: `convert/*.toml` (GGUF name maps) and `quantize/*.toml` (quantization).

They live at the repository root so they are easy to read and review; the wheel force-includes
both folders as `mlx_rsg/recipe_files/{convert,quantize}` (see pyproject.toml). Lookup tries the
installed location first, then the source checkout (editable install), so both work.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mlx_rsg.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pyproject declares `tomli; python_version < "3.11"`.
    import tomli as tomllib

KINDS = ("convert", "quantize")
_PACKAGE_DIR = Path(__file__).resolve().parent


def recipe_dir(kind: str) -> Path:
    """The folder holding recipes of `kind` ("convert" or "quantize")."""
    if kind not in KINDS:
        raise UserError(f"unknown recipe kind '{kind}' (expected one of: {', '.join(KINDS)})")
    for candidate in (_PACKAGE_DIR / "recipe_files" / kind, _PACKAGE_DIR.parent / kind):
        if candidate.is_dir():
            return candidate
    raise UserError(f"recipe folder '{kind}' not found next to {_PACKAGE_DIR} (broken install?)")


def available_recipes(kind: str) -> list[str]:
    """Recipe names of `kind`, sorted (file names without `.toml`)."""
    return sorted(p.stem for p in recipe_dir(kind).glob("*.toml"))


def recipe_path(kind: str, name: str) -> Path:
    """Path of the shipped recipe `name` (with or without `.toml`), or of a user's own recipe
    file (a path ending in `.toml`); unknown names list the shipped ones."""
    if "/" in name or "\\" in name:  # a path: the user's own recipe
        own = Path(name)
        if own.suffix != ".toml" or not own.is_file():
            raise UserError(f"{name}: no such {kind} recipe file (a path ending in .toml)")
        return own
    stem = name[:-5] if name.endswith(".toml") else name
    path = recipe_dir(kind) / f"{stem}.toml"
    if not path.is_file():
        names = ", ".join(available_recipes(kind)) or "none"
        raise UserError(f"unknown {kind} recipe '{name}' (available: {names})")
    return path


def load_recipe(kind: str, name: str) -> dict[str, Any]:
    """Parse the recipe `name` of `kind` as TOML; a syntax error names the file."""
    path = recipe_path(kind, name)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML: {e}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the recipe: {e.strerror or e}") from None
