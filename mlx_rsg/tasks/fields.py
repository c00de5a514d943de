"""Checks of the fields of one JSON object of an official task file. Each failure is a DataError
`FILE:LINE: field 'a.b[2].c': problem`; `where` carries the (path, line) of the object."""

from __future__ import annotations

import json

from mlx_rsg.errors import DataError, located

Where = tuple[object, int | None]

# (raw JSON value, normalised label) pairs; pairs, not a dict, because True == 1 in a dict key
BOOLS = (
    (True, True),
    (False, False),
    ("True", True),
    ("False", False),
    ("true", True),
    ("false", False),
    (1, True),
    (0, False),
)
BINARY = ((0, 0), (1, 1), (False, 0), (True, 1))


def fail(where: Where, field: str | None, msg: str) -> DataError:
    return DataError(located(where[0], where[1], field, msg))


def type_name(v: object) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def get(obj: dict, key: str, where: Where, prefix: str = "") -> object:
    if key not in obj:
        raise fail(where, prefix + key, "missing")
    return obj[key]


def get_str(obj: dict, key: str, where: Where, prefix: str = "") -> str:
    v = get(obj, key, where, prefix)
    if not isinstance(v, str):
        raise fail(where, prefix + key, f"expected a string, got {type_name(v)}")
    try:  # JSON can escape a lone surrogate ("\ud800"): no tokenizer can encode it
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = f"U+{ord(v[e.start]):04X}"
        raise fail(where, prefix + key, f"a lone surrogate {bad} at character {e.start} "
                                        "is not text") from None  # fmt: skip
    return v


def get_int(obj: dict, key: str, where: Where, prefix: str = "") -> int:
    """An integer; LiDiRus writes its idx as a string of digits, so those are accepted too."""
    v = get(obj, key, where, prefix)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise fail(where, prefix + key, f"expected an integer, got {type_name(v)} {v!r:.40}")
    return v


def get_list(obj: dict, key: str, where: Where, prefix: str = "") -> list:
    v = get(obj, key, where, prefix)
    if not isinstance(v, list):
        raise fail(where, prefix + key, f"expected a list, got {type_name(v)}")
    return v


def as_object(v: object, field: str | None, where: Where) -> dict:
    if not isinstance(v, dict):
        what = f"expected {'an object' if field else 'a JSON object'}, got {type_name(v)}"
        raise fail(where, field, what)
    return v


def get_label(obj: dict, where: Where, allowed: tuple, prefix: str = ""):
    """The label normalised through `allowed` ((raw, normalised) pairs), None when absent."""
    if "label" not in obj or obj["label"] is None:
        return None
    v = obj["label"]
    # bool is an int subclass: True must not pass as 1 where only 0/1 are allowed, and vice versa
    for raw, norm in allowed:
        if type(raw) is type(v) and raw == v:
            return norm
    spelled = ", ".join(json.dumps(k) for k, _ in allowed)
    raise fail(
        where,
        prefix + "label",
        f"unknown label {json.dumps(v, ensure_ascii=False)} (expected one of {spelled})",
    )
