"""User-facing errors: the CLI prints them as one line and exits non-zero, never a traceback."""

from __future__ import annotations

# How a rank whose peer went away ends (the CLI's line; `mlx-rsg launch` tells it from the cause)
PEER_LOST = "lost the connection to another rank"


class UserError(Exception):
    """Bad input or environment the user can fix. The message is shown as-is."""


class DataError(UserError):
    """A malformed data file: the message names the file, line number and field."""


def located(path: object, line: int | None = None, field: str | None = None, msg: str = "") -> str:
    """Format `file:line: field 'x': msg` consistently for every user-facing error."""
    where = str(path)
    if line is not None:
        where += f":{line}"
    if field:
        where += f": field '{field}'"
    return f"{where}: {msg}" if msg else where
