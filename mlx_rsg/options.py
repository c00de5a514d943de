"""Click options made from a config dataclass, so each setting is spelled once: its name, type,
default and help live on the dataclass field (`metadata={"help": ..., "choices": ...}`).

    @click.command()
    @config_options(TrainConfig, skip=("tasks",))
    def train_command(**kwargs): cfg = config_from_options(TrainConfig, kwargs)

A field becomes `--field-name`: a bool defaulting to False a flag, one defaulting to True a
`--x/--no-x` pair, `int | None` an optional int, `tuple[str, ...]` a comma list. Defaults show in
`--help`; `metadata["default_help"]` describes a None default (e.g. "round(12/26 x layers)").

Every number carries its `Bounds` (`opt(8, bounds=Bounds(1))`): the CLI refuses a value outside
them as it parses (one line, before any work), and `check_bounds` applies the same to a config
made in Python. Floats must be finite; integers must also fit in 32 bits (MLX and numpy take
int32 scalars: `--seed 2**70` was a TypeError from inside MLX).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from typing import Any

INT_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The values a numeric setting accepts: low <= v (low < v when low_open), v <= high (v < high
    when high_open); an integer also <= INT_MAX."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, v: float) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if isinstance(v, int) and abs(v) > INT_MAX:
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def rule(self, kind: type) -> str:
        """What `holds` asks, in words: "must be >= 1", "must be in [0, 1)"."""
        high = self.high if self.high is not None or kind is not int else INT_MAX
        if self.low is not None and high is not None:
            return (f"must be in {'(' if self.low_open else '['}{_num(self.low)}, "
                    f"{_num(high)}{')' if self.high_open else ']'}")  # fmt: skip
        if self.low is not None:
            return f"must be {'>' if self.low_open else '>='} {_num(self.low)}"
        if high is not None:
            return f"must be {'<' if self.high_open else '<='} {_num(high)}"
        return "must be a finite number"


AT_LEAST_0, AT_LEAST_1 = Bounds(0), Bounds(1)
POSITIVE = Bounds(0, low_open=True)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def opt(default: Any, help: str = "", **meta: Any) -> Any:
    """A dataclass field carrying its command-line help (`choices=`, `default_help=`,
    `bounds=Bounds(...)`, and `path="dir"|"file"|True` in `meta`). Library modules use it
    without importing click."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def check_bounds(cfg: Any) -> None:
    """The bounds `cfg`'s fields declare, for a config made in Python (the CLI's options check
    them as they parse): the first value outside is a one-line UserError naming its flag."""
    from mlx_rsg.errors import UserError

    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        bounds, value = f.metadata.get("bounds"), getattr(cfg, f.name)
        if bounds is None or value is None:
            continue
        kind, flag = _base_type(hints[f.name]), "--" + f.name.replace("_", "-")
        number = isinstance(value, int if kind is int else (int, float))
        if isinstance(value, bool) or not number:
            raise UserError(f"{flag}: expected {'an integer' if kind is int else 'a number'}, "
                            f"got {value!r}")  # fmt: skip
        if not bounds.holds(value):
            raise UserError(f"{flag}: {bounds.rule(kind)}, got {value!r}")


def _base_type(hint: Any) -> type:
    """`int` for `int | None`: the type a field holds when it is set."""
    args = typing.get_args(hint)
    return next((a for a in args if a is not type(None)), hint) if args else hint


def number_type(kind: type, bounds: Bounds) -> Any:
    """A click type for an int or float option: a number, finite, within `bounds` (one line
    naming the flag otherwise: no setting means inf or nan, and `--batch-window-ms inf` crashed
    the server at its first request, `nan` hung it)."""
    import click

    class Number(click.ParamType):
        name = "integer" if kind is int else "float"
        number_kind, number_bounds = kind, bounds  # what it accepts, for the tests to read

        def convert(self, value: Any, param: Any, ctx: Any) -> float:
            try:
                number = kind(value)
            except (TypeError, ValueError, OverflowError):
                what = "an integer" if kind is int else "a number"
                self.fail(f"{value!r} is not {what}", param, ctx)
            if kind is float and not math.isfinite(number):
                self.fail(f"{value!r} is not a finite number", param, ctx)
            if not bounds.holds(number):
                self.fail(f"{bounds.rule(kind)}, got {value}", param, ctx)
            return number

    return Number()


def _option(f: dataclasses.Field, hint: Any) -> Callable:
    import click

    name = "--" + f.name.replace("_", "-")
    meta = f.metadata
    help_text = meta.get("help", "")
    if meta.get("default_help"):
        help_text += f" [default: {meta['default_help']}]"
    base = _base_type(hint)
    if hint is bool:
        decl = f"{name}/--no-{name[2:]}" if f.default else name
        return click.option(decl, f.name, is_flag=True, default=f.default, show_default=f.default,
                            help=help_text)  # fmt: skip
    if typing.get_origin(hint) is tuple:
        return click.option(name, f.name, default=",".join(f.default), help=help_text + " (comma "
                            "list)", show_default=bool(f.default))  # fmt: skip
    kind: Any = base
    if base in (int, float):
        kind = number_type(base, meta.get("bounds", Bounds()))
    if "choices" in meta:  # click compares choices as text: numbers come back converted
        kind = click.Choice([str(c) for c in meta["choices"]])
    if meta.get("path"):
        kind = click.Path(file_okay=meta["path"] != "dir", dir_okay=meta["path"] != "file")
    convert = None if base is str or "choices" not in meta else (
        lambda ctx, param, v: v if v is None else base(v))  # fmt: skip
    return click.option(name, f.name, type=kind, default=f.default, callback=convert,
                        show_default=f.default is not None, help=help_text)  # fmt: skip


def config_options(cls: type, skip: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> Callable:
    """A decorator adding one click option per field of the dataclass `cls` (but `skip`; only
    `only` when given)."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls)
              if f.name not in skip and (not only or f.name in only)]  # fmt: skip

    def decorate(fn: Callable) -> Callable:
        for f in reversed(fields):
            fn = _option(f, hints[f.name])(fn)
        return fn

    return decorate


def config_from_options(cls: type, values: dict[str, Any], **overrides: Any):
    """The dataclass from the options `config_options` made (comma lists split into tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides or f.name not in values:
            continue
        v = values[f.name]
        if typing.get_origin(hints[f.name]) is tuple and isinstance(v, str):
            v = tuple(x.strip() for x in v.split(",") if x.strip())
        kwargs[f.name] = v
    return cls(**kwargs, **overrides)
