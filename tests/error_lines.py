"""What a command that fails on bad input prints: one `error:` line, the last, no traceback."""

from __future__ import annotations


def error_line(stderr: str) -> str:
    """The failed command's one `error:` line, which must be its last line (notices such as
    "--tasks all: ... skipped" may come before it), with no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    errors = [x for x in lines if x.startswith("error: ")]
    assert errors == lines[-1:], stderr[-3000:]
    return errors[0]
