"""Click options made from a config dataclass, so each setting is spelled once: its name, type,
default and help live on the dataclass field (`metadata={"help": ..., "choices": ...}`).

    @click.command()
    @config_options(TrainConfig, skip=("tasks",))
    def train_command(**kwargs): cfg = config_from_options(TrainConfig, kwargs)

A field becomes `--field-name`: a bool defaulting to False a flag, one defaulting to True a
`--x/--no-x` pair, `int | None` an optional int, `tuple[str, ...]` a comma list. Defaults show in
`--help`; `metadata["default_help"]` describes a None default (e.g. "round(12/26 x layers)").
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from typing import Any


def opt(default: Any, help: str = "", **meta: Any) -> Any:
    """A dataclass field carrying its command-line help (`choices=`, `default_help=`, and
    `path="dir"|"file"|True` in `meta`). Library modules use it without importing click."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def _option(f: dataclasses.Field, hint: Any) -> Callable:
    import click

    name = "--" + f.name.replace("_", "-")
    meta = f.metadata
    help_text = meta.get("help", "")
    if meta.get("default_help"):
        help_text += f" [default: {meta['default_help']}]"
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if hint is bool:
        decl = f"{name}/--no-{name[2:]}" if f.default else name
        return click.option(decl, f.name, is_flag=True, default=f.default, show_default=f.default,
                            help=help_text)  # fmt: skip
    if typing.get_origin(hint) is tuple:
        return click.option(name, f.name, default=",".join(f.default), help=help_text + " (comma "
                            "list)", show_default=bool(f.default))  # fmt: skip
    kind: Any = _finite_float() if base is float else base
    if "choices" in meta:  # click compares choices as text: numbers come back converted
        kind = click.Choice([str(c) for c in meta["choices"]])
    if meta.get("path"):
        kind = click.Path(file_okay=meta["path"] != "dir", dir_okay=meta["path"] != "file")
    convert = None if base is str or "choices" not in meta else (
        lambda ctx, param, v: v if v is None else base(v))  # fmt: skip
    return click.option(name, f.name, type=kind, default=f.default, callback=convert,
                        show_default=f.default is not None, help=help_text)  # fmt: skip


def _finite_float() -> Any:
    """click's float, but inf and nan are refused: no setting means them (`--batch-window-ms
    inf` crashed the server at its first request, `nan` hung it)."""
    import click

    class FiniteFloat(click.ParamType):
        name = "float"

        def convert(self, value: Any, param: Any, ctx: Any) -> float:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
            if not math.isfinite(number):
                self.fail(f"{value!r} is not a finite number", param, ctx)
            return number

    return FiniteFloat()


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
