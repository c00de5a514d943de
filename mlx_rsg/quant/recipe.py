"""A quantize recipe (a `quantize/*.toml` file, or q8 / q4 by --bits): bits and group size for
every module, per-path overrides, the method (rtn | gptq) and its calibration set, the dtype of
the scales and biases, and for a run the classifier-aware distillation of the scales and biases,
the heads' bias correction, and the width of the RWSD language model's own blocks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mlx_rsg.errors import UserError
from mlx_rsg.options import opt
from mlx_rsg.recipes import load_recipe

BITS = (2, 3, 4, 5, 6, 8)  # what MLX's affine mode supports
GROUP_SIZES = (32, 64, 128)
DEFAULT_RECIPE = {8: "q8", 4: "q4"}
METHODS = ("rtn", "gptq")  # rtn.py, gptq.py
CALIBRATION = {"examples": 128, "max_len": 128, "seed": 0}
SCALE_DTYPES = ("float32", "float16", "bfloat16")
BIAS_CORRECTION = {"units": 128, "seed": 0}
# quant/distill.py; a float default takes a finite number > 0, an int one an int >= 0
# lr: one Adam-sized step of 1e-6 already overshoots on Gemma-3-270M (benchmarks/distill_lr.py)
DISTILL = {"units": 32, "holdout": 32, "epochs": 1, "batch_size": 4, "lr": 1e-7,
           "temperature": 1.0, "seed": 0}  # fmt: skip
# quant/sensitivity.py: `budget` in bits per weight as mlx-lm counts them
SENSITIVITY = {"units": 64, "budget": 5.0, "high_bits": 8, "seed": 0}
EMBEDDING_ROWS = {"bits": 8}  # quant/embedding_rows.py: the run's train tokens' rows at `bits`
FIELDS = {"name", "bits", "group_size", "overrides", "method", "calibration", "scale_dtype",
          "bias_correction", "distill", "sensitivity", "embedding_rows",
          "substitution"}  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """Bits and group size for every quantized module, with per-path overrides: a module whose
    path contains an override's key gets that override's parameters (first match wins)."""

    name: str
    bits: int
    group_size: int
    overrides: dict[str, dict[str, int]] = field(default_factory=dict)
    method: str = "rtn"
    calibration: dict[str, int] = field(default_factory=lambda: dict(CALIBRATION))
    scale_dtype: str | None = None  # None: the model's own (float32 scales for a float32 model)
    bias_correction: dict[str, int] | None = None  # {units, seed}: quant/bias_correction.py
    distill: dict[str, float] | None = None  # DISTILL's fields: quant/distill.py
    sensitivity: dict[str, float] | None = None  # SENSITIVITY's fields: quant/sensitivity.py
    embedding_rows: dict[str, int] | None = None  # EMBEDDING_ROWS's: quant/embedding_rows.py
    # {bits, group_size} of the RWSD language model's own blocks (model/substitution.py); None:
    # the recipe's own
    substitution: dict[str, int] | None = None

    def params_for(self, path: str) -> dict[str, int]:
        for key, p in self.overrides.items():
            if key in path:
                return {
                    "bits": p.get("bits", self.bits),
                    "group_size": p.get("group_size", self.group_size),
                }
        return {"bits": self.bits, "group_size": self.group_size}

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bits": self.bits,
            "group_size": self.group_size,
            "overrides": self.overrides,
            "method": self.method,
            **({"calibration": self.calibration} if self.method != "rtn" else {}),
            **({"scale_dtype": self.scale_dtype} if self.scale_dtype else {}),
            **({"bias_correction": self.bias_correction} if self.bias_correction else {}),
            **({"distill": self.distill} if self.distill else {}),
            **({"sensitivity": self.sensitivity} if self.sensitivity else {}),
            **({"embedding_rows": self.embedding_rows} if self.embedding_rows else {}),
            **({"substitution": self.substitution} if self.substitution else {}),
        }

    @property
    def calibrated(self) -> bool:
        """Whether the recipe reads --calib-data."""
        return bool(self.calibrated_by)

    @property
    def calibrated_by(self) -> list[str]:
        """What reads --calib-data: GPTQ's Hessians, sensitivities, distillation, the heads'
        bias correction, the embedding rows of the train text."""
        levers = {"sensitivity": self.sensitivity, "distill": self.distill,
                  "bias correction": self.bias_correction,
                  "embedding rows": self.embedding_rows}  # fmt: skip
        return (([self.method] if self.method != "rtn" else [])
                + [name for name, table in levers.items() if table is not None])


def _check_params(where: str, bits: Any, group_size: Any) -> None:
    if bits not in BITS:
        raise UserError(f"{where}: field 'bits': {bits!r} is not one of {BITS}")
    if group_size not in GROUP_SIZES:
        raise UserError(f"{where}: field 'group_size': {group_size!r} is not one of {GROUP_SIZES}")


def resolve_recipe(
    bits: int | None = None, group_size: int | None = None, recipe: str | None = None
) -> Recipe:
    """The recipe to apply: a named one (bits/group_size given explicitly override its
    defaults), or q8/q4 chosen by `bits`."""
    if recipe is None:
        if bits is None:
            raise UserError("quantize: give --bits 4|8 or --recipe NAME")
        if bits not in DEFAULT_RECIPE:
            raise UserError(f"--bits: {bits} is not 4 or 8 (other widths need a --recipe)")
        recipe = DEFAULT_RECIPE[bits]
    raw = load_recipe("quantize", recipe)
    where = f"quantize recipe '{recipe}'"
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise UserError(f"{where}: field '{unknown[0]}': not a recipe field (one of "
                        f"{', '.join(sorted(FIELDS))})")  # fmt: skip
    name = raw.get("name", recipe)
    r_bits = bits if bits is not None else raw.get("bits")
    r_group = group_size if group_size is not None else raw.get("group_size", 64)
    _check_params(where, r_bits, r_group)
    clean = _overrides(raw.get("overrides", {}), where, r_bits, r_group)
    method = raw.get("method", "rtn")
    if method not in METHODS:
        raise UserError(f"{where}: field 'method': {method!r} is not one of {METHODS}")
    cal = _table(raw, "calibration", CALIBRATION, where)
    scale_dtype = raw.get("scale_dtype")
    if scale_dtype is not None and scale_dtype not in SCALE_DTYPES:
        raise UserError(f"{where}: field 'scale_dtype': {scale_dtype!r} is not one of "
                        f"{SCALE_DTYPES}")  # fmt: skip
    correction = None
    if "bias_correction" in raw:
        correction = _table(raw, "bias_correction", BIAS_CORRECTION, where)
        _at_least_one(correction, "bias_correction", ("units",), where)
    distill = None
    if "distill" in raw:
        distill = _table(raw, "distill", DISTILL, where)
        _at_least_one(distill, "distill", ("units", "epochs", "batch_size"), where)
    sensitivity = None
    if "sensitivity" in raw:
        sensitivity = _table(raw, "sensitivity", SENSITIVITY, where)
        _at_least_one(sensitivity, "sensitivity", ("units",), where)
        if sensitivity["high_bits"] not in BITS or sensitivity["high_bits"] <= r_bits:
            raise UserError(f"{where}: field 'sensitivity.high_bits': "
                            f"{sensitivity['high_bits']} is not one of {BITS} above {r_bits}")
    rows = _table(raw, "embedding_rows", EMBEDDING_ROWS, where) if "embedding_rows" in raw else None
    substitution = None
    if "substitution" in raw:
        substitution = _table(raw, "substitution", {"bits": r_bits, "group_size": r_group}, where)
        _check_params(f"{where}: substitution", **substitution)
    out = Recipe(name=name, bits=r_bits, group_size=r_group, overrides=clean, method=method,
                 calibration=cal, scale_dtype=scale_dtype, bias_correction=correction,
                 distill=distill, sensitivity=sensitivity, embedding_rows=rows,
                 substitution=substitution)  # fmt: skip
    emb_bits = out.params_for("model.embed_tokens")["bits"]
    if rows and (rows["bits"] not in BITS or rows["bits"] <= emb_bits):
        raise UserError(f"{where}: field 'embedding_rows.bits': {rows['bits']} is not one of "
                        f"{BITS} above the embedding's {emb_bits}")  # fmt: skip
    return out


def _table(raw: dict, key: str, defaults: dict, where: str) -> dict:
    """raw[key] over the defaults: a table of keys from `defaults`, each an int >= 0 where the
    default is an int, a finite number > 0 where it is a float."""
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise UserError(f"{where}: field '{key}': expected a table ({', '.join(defaults)})")
    for name, value in table.items():
        if name not in defaults:
            raise UserError(f"{where}: field '{key}.{name}': not one of {', '.join(defaults)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ok = False
        elif isinstance(defaults[name], float):
            ok = math.isfinite(value) and value > 0
        else:
            ok = isinstance(value, int) and value >= 0
        if not ok:
            want = "a number > 0" if isinstance(defaults[name], float) else "an int >= 0"
            raise UserError(f"{where}: field '{key}.{name}': {value!r} is not {want}")
    return {**defaults, **{k: type(defaults[k])(v) for k, v in table.items()}}


def _at_least_one(table: dict, key: str, names: tuple[str, ...], where: str) -> None:
    for name in names:
        if table[name] < 1:
            raise UserError(f"{where}: field '{key}.{name}': must be >= 1")


def _overrides(overrides: Any, where: str, bits: int, group_size: int) -> dict[str, dict]:
    if not isinstance(overrides, dict):
        raise UserError(f"{where}: field 'overrides': expected a table of path -> parameters")
    clean = {}
    for key, p in overrides.items():
        if not isinstance(p, dict) or set(p) - {"bits", "group_size"}:
            raise UserError(f"{where}: field 'overrides.{key}': expected {{bits, group_size}}")
        _check_params(f"{where}: overrides.{key}", p.get("bits", bits),
                      p.get("group_size", group_size))  # fmt: skip
        clean[key] = dict(p)
    return clean


@dataclass
class QuantizeOptions:
    """Every `mlx-rsg quantize` option but SOURCE and -o (the CLI's options are made from these
    fields); `quantize(source, out, **asdict(options))`."""

    bits: int | None = opt(None, "q4 or q8 recipe.", choices=[4, 8])
    group_size: int | None = opt(None, "Weights per scale/bias.", choices=list(GROUP_SIZES),
                                 default_help="the recipe's, 64")  # fmt: skip
    recipe: str | None = opt(None, "A quantize/*.toml recipe (e.g. q4-mixed) or path/to/own.toml.")
    force: bool = opt(False, "Overwrite OUT.")
    calib_data: str | None = opt(
        None, "RSG_DIR whose train splits calibrate a gptq recipe (e.g. q4-gptq).", path=True
    )
