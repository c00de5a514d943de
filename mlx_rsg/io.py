"""Files the user sees: JSON read with one-line errors, and atomic output (write into a
temporary sibling, then rename, so no partial output survives)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlx_rsg.errors import UserError, located


def read_json_object(path: Path, missing: str | None = None) -> dict:
    """The JSON object in `path`, or a one-line UserError naming the file (and the line of a
    syntax error). `missing`: the message when the file does not exist."""
    if not path.is_file():
        raise UserError(missing or located(path, msg="not found"))
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(located(path, msg="not UTF-8 text")) from None
    except json.JSONDecodeError as e:
        raise UserError(located(path, e.lineno, msg=f"invalid JSON: {e.msg}")) from None
    except RecursionError:
        raise UserError(located(path, msg="invalid JSON: nested too deeply")) from None
    if not isinstance(value, dict):
        raise UserError(located(path, msg="not a JSON object"))
    return value


def jsonl_values(display: object, raw: bytes, error: type[UserError] = UserError) -> list:
    """(line number, parsed value) of each non-blank line of a JSON Lines file: UTF-8 with or
    without a BOM, LF or CRLF, with or without a final newline. Lines are split on \\n only: JSON
    strings may hold U+2028 and other characters `str.splitlines()` breaks on. Bad UTF-8 or JSON
    raises `error` naming display:line. The one JSONL reader: data files, --input, submissions."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise error(located(display, line, None, f"not UTF-8 ({e.reason})")) from None
    out = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            msg = f"invalid JSON: {e.msg} (column {e.colno})"
            raise error(located(display, n, None, msg)) from None
        except RecursionError:
            raise error(located(display, n, None, "invalid JSON: nested too deeply")) from None
    return out


def check_safetensors(path: Path, exact: bool = True) -> None:
    """Refuse a truncated or garbled .safetensors file by its header, before a loader fails
    deep inside: 8 bytes of header length, a JSON header, then the data the header's offsets
    span. `exact`: the file must end where the data does (our own files); otherwise only a
    file shorter than its header says is refused (a checkpoint from elsewhere may be padded)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ValueError(f"header of {n} bytes but the file has {size}")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                  default=0)  # fmt: skip
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    if 8 + n + end > size or (exact and 8 + n + end != size):
        raise UserError(f"{path}: truncated or corrupt safetensors file ({size} bytes, the "
                        f"header says {8 + n + end})")  # fmt: skip


def holds(directory: Path, path: Path) -> bool:
    """Whether deleting `directory` would delete `path` (the same directory, or above it)."""
    target, inside = directory.resolve(), path.resolve()
    return inside == target or target in inside.parents


def check_replaceable(out: Path, force: bool, marker: str | None = None,
                      inputs: tuple = ()) -> None:  # fmt: skip
    """What an output directory's `--force` may replace: a directory that is empty or holds
    `marker` (a file only our command writes there), and never one that is or holds one of the
    command's inputs. Checked before any work, and again before the swap."""
    out = Path(out)
    if not out.exists():
        return
    if not force:
        raise UserError(f"{out}: already exists (use --force to overwrite)")
    for given in inputs:
        if given is not None and holds(out, Path(given)):
            raise UserError(f"{out}: holds the input {given}; refusing to replace it with --force")
    if marker and out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise UserError(f"{out}: not a directory this command wrote (no {marker}); refusing to "
                        "replace it with --force")  # fmt: skip
    if not out.is_dir():
        raise UserError(f"{out}: not a directory; refusing to replace it with --force")


def remove_stale(parent: Path, prefix: str) -> None:
    """Remove `parent/PREFIX<pid>...` entries whose process is gone: what a kill -9 left. Only our
    own temporaries carry such names, and one whose process still runs is in use."""
    for p in _stale(Path(parent), prefix):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _stale(parent: Path, prefix: str) -> list[Path]:
    out = []
    for p in sorted(parent.glob(glob_escape(prefix) + "*")):
        pid = p.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            out.append(p)
    return out


def recover(out: Path) -> None:
    """Finish what a killed `atomic_dir` left: OUT back from its hidden old copy if the kill came
    between the swap's two renames (OUT missing), then its stale temporaries removed."""
    out = Path(out)
    old = _stale(out.parent, f".{out.name}.old-")
    if old and not out.exists():
        old.pop().rename(out)
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    remove_stale(out.parent, f".{out.name}.tmp-")


def glob_escape(s: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in s)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sibling(out: Path, make):
    """`make` (tempfile.mkdtemp or mkstemp) of a hidden temporary sibling of `out`; a refusal
    (a read-only or full disk, no permission) names `out`, what the user asked to write, not
    the temporary name."""
    try:
        return make(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(out)) from e


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, force: bool = False, marker: str | None = None,
               inputs: tuple = ()) -> Iterator[Path]:  # fmt: skip
    """Yield a temporary directory next to `out`; on success it replaces `out`.

    An existing `out` is refused unless `force`, and then too when `check_replaceable` says so.
    On any error the temporary directory is removed and `out` is left exactly as it was.
    """
    out = Path(out)
    recover(out)
    check_replaceable(out, force, marker, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(_sibling(out, tempfile.mkdtemp))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; outputs get the usual permissions
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary sibling of `out` for writing; rename it over `out` on success."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, f".{out.name}.tmp-")
    fd, tmp = _sibling(out, tempfile.mkstemp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a write on the open file: name it
            e.filename = str(out)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically, as strict JSON: a NaN or infinity (a score of no examples) is written null."""
    with atomic_file(path) as f:
        json.dump(_finite(obj), f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def jsonable(v):
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
