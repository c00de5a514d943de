"""`mlx-rsg quantize`: MLX affine quantization of a converted model or of a trained run.

    MODEL_DIR -> OUT/                  a normal mlx-lm quantized model directory: config.json with
                                       the "quantization" block mlx-lm's load understands (plus
                                       per-path entries for mixed recipes), model.safetensors,
                                       tokenizer files, and mlx_rsg.json (how it was made)
    RUN_DIR   -> OUT/                  a run directory predict/bench read whole: run.json (method
                                       "freeze", every layer frozen), trainable.safetensors (the
                                       float32 heads only), backbone/ (the trained weights merged
                                       and quantized, "copied": true; a --feature-layer run's
                                       blocks above its layer dropped), mlx_rsg.json

What is quantized: every Linear of the backbone and the embedding table (63% of Gemma-3-270M's
parameters; classification only gathers from it). Norms stay in the model's dtype (float32, or a
`train --dtype bfloat16` run's bfloat16), the classification heads float32.
Quantization is mlx-lm's own (`quantize_model` with a predicate), so `mlx_lm.load` reads OUT.
A recipe may store the scales and biases in 16 bits (`scale_dtype`) and, for a run, learn the
scales and biases until the heads give the float run's probabilities (`distill.py`) and correct
the heads' biases for the shift quantization leaves in their mean logits (`bias_correction.py`).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx_lm
from mlx.utils import tree_flatten
from mlx_lm.utils import save_config, save_model

from mlx_rsg import predict
from mlx_rsg.accel.blas import warn_if_slow
from mlx_rsg.distributed import SINGLE, World
from mlx_rsg.errors import UserError
from mlx_rsg.io import atomic_dir, check_replaceable, read_json_object, write_json
from mlx_rsg.model import methods, row_embedding, substitution
from mlx_rsg.model.backbone import load_checked
from mlx_rsg.model.methods.lora import fuse_lora
from mlx_rsg.model_files import MANIFEST, copy_model_dir, weight_hashes, write_manifest
from mlx_rsg.quant import gptq, rtn
from mlx_rsg.quant.bias_correction import BiasCorrection
from mlx_rsg.quant.distill import Distillation
from mlx_rsg.quant.embedding_rows import EmbeddingRows
from mlx_rsg.quant.recipe import Recipe, resolve_recipe
from mlx_rsg.quant.sensitivity import Sensitivity
from mlx_rsg.run import WEIGHTS, mark_merged, read_run_json, resolve_backbone
from mlx_rsg.version import __version__
from mlx_rsg.weights import save_weights, weights_outside_backbone

# ---------------------------------------------------------------- model directories


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    config = read_json_object(
        path, f"{model_dir}: not a model directory (no config.json) nor a run (run.json)"
    )
    if "model_type" not in config:
        raise UserError(f"{path}: field 'model_type': missing (not a converted model config)")
    if "quantization" in config:
        raise UserError(
            f"{path}: field 'quantization': the model is already quantized; "
            "quantize the float32 model or run instead"
        )
    if not list(model_dir.glob("*.safetensors")):
        raise UserError(f"{model_dir}: no *.safetensors weights (is it a converted model dir?)")
    return config


def write_quantized(src_dir: Path, dst: Path, model, qconfig: dict[str, Any]) -> None:
    """A model directory readable by `mlx_lm.load`: weights, config, the source's tokenizer;
    an embedding's high rows (`[embedding_rows]`) in their own file, which mlx-lm does not read."""
    copy_model_dir(src_dir, dst, weights=False)  # tokenizer + any extra json
    (dst / MANIFEST).unlink(missing_ok=True)
    with row_embedding.low_rows_only(model):
        save_model(dst, model)
    row_embedding.save(model, dst)
    save_config(dict(qconfig), config_path=dst / "config.json")


def _manifest(source: Path, kind: str, recipe: Recipe, counts: dict) -> dict[str, Any]:
    return {
        "format": "mlx-rsg-quantized",
        "version": 1,
        "source": str(source.resolve()),
        "source_kind": kind,
        "bits": recipe.bits,
        "group_size": recipe.group_size,
        "mode": "affine",
        "recipe": recipe.as_dict(),
        "method": recipe.method,
        "calibration": counts.get("calibration"),
        "sensitivity": counts.get("sensitivity"),
        "distill": counts.get("distill"),
        "bias_correction": counts.get("bias_correction"),
        "embedding_rows": counts.get("embedding_rows"),
        "blocks_dropped": counts.get("blocks_dropped", 0),
        "bits_per_weight": counts["bits_per_weight"],  # the backbone's, as mlx-lm counts them
        "stored": counts.get("stored"),  # every weight the copy stores, by part, and their b/w
        "quantized_modules": counts["quantized"],
        "skipped_modules": counts["skipped"],
        # norms stay in the model's own dtype (a `train --dtype bfloat16` run's: bfloat16)
        "kept_float32": (["norms"] if counts["norms_dtype"] == "float32" else [])
        + ["classification heads"],
        "norms_dtype": counts["norms_dtype"],
        "versions": {
            "mlx_rsg": __version__,
            "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__,
        },
    }


def _quantize_with(model, config: dict, recipe: Recipe, src_dir: Path, calib_data, log,
                   world: World, distill: Distillation | None = None):  # fmt: skip
    """Round-to-nearest, or GPTQ calibrated on calib_data's train splits: the recipe's method;
    then the distillation of the scales and biases (a run's), then the scales and biases cast
    to the recipe's scale_dtype."""
    if recipe.method == "gptq":
        qconfig, counts = gptq.quantize_gptq(model, config, recipe, calib_data, src_dir, log,
                                             world)  # fmt: skip
    else:
        qconfig, counts = rtn.quantize_backbone(model, config, recipe)
    if distill is not None:
        counts["distill"] = distill.apply(log)
    if recipe.scale_dtype:
        counts["bits_per_weight"] = rtn.cast_scales(model, getattr(mx, recipe.scale_dtype))
    norms = [v.dtype for k, v in tree_flatten(model.parameters()) if k.endswith("norm.weight")]
    counts["norms_dtype"] = str(norms[0]).removeprefix("mlx.core.") if norms else "float32"
    return qconfig, counts


def _quantize_model_dir(model_dir: Path, dst: Path | None, recipe: Recipe, calib_data=None,
                        log=None, world: World = SINGLE) -> dict:  # fmt: skip
    """dst None: compute only (the ranks of a distributed run other than 0)."""
    config = _read_config(model_dir)
    model, _ = load_checked(model_dir)
    levers = ((recipe.bias_correction, "bias correction"), (recipe.distill, "distill"),
              (recipe.sensitivity, "sensitivity"), (recipe.embedding_rows, "embedding rows"))
    for lever, name in levers:
        if lever and log is not None:
            log(f"{recipe.name}: {name} skipped: a model directory has no heads to match "
                "nor tasks to read")
    qconfig, counts = _quantize_with(model, config, recipe, model_dir, calib_data, log, world)
    if not counts["quantized"]:
        raise UserError(
            f"{model_dir}: no layer's width is a multiple of group size {recipe.group_size}; "
            "nothing to quantize (try --group-size 32)"
        )
    if dst is None:
        return counts
    counts["stored"] = rtn.stored_bits_per_weight({"backbone": rtn.stored(model)})
    write_quantized(model_dir, dst, model, qconfig)
    return counts


# ---------------------------------------------------------------- run directories


def _measure_float(model, tokenizer, recipe: Recipe, calib_data, log) -> tuple:
    """What the recipe's levers measure on the float run before anything is quantized: the
    float embedding rows of the train text (whose cost the sensitivity's budget then pays),
    the sensitivities (which give the recipe its overrides), the heads' mean logits (bias
    correction), the heads' probabilities (distillation). Returns (recipe, each or None)."""
    say = log or (lambda _: None)
    rows = sensitivity = correction = distill = None
    if recipe.embedding_rows:
        rows = EmbeddingRows(model, tokenizer, calib_data, **recipe.embedding_rows)
        say(f"embedding rows: {len(rows.ids)} tokens of the train text, kept at {rows.bits} bits")
    if recipe.sensitivity:
        say(f"sensitivity: each module's effect on the heads, on "
            f"{recipe.sensitivity['units']} train units per task")
        paid = {"reserved": rows.reserved_bits(recipe), "keep": (rows.path,)} if rows else {}
        sensitivity = Sensitivity(model, tokenizer, calib_data, recipe, **recipe.sensitivity,
                                  **paid)  # fmt: skip
        recipe = sensitivity.recipe(recipe)
    if recipe.bias_correction:
        say(f"bias correction: scoring {recipe.bias_correction['units']} train units per task "
            "with the float heads, then again once quantized")
        correction = BiasCorrection(model, tokenizer, calib_data, **recipe.bias_correction)
    if recipe.distill:
        say(f"distill: scoring {recipe.distill['units']} train units per task with the float heads")
        distill = Distillation(model, tokenizer, calib_data, **recipe.distill)
    return recipe, sensitivity, correction, distill, rows


def _quantize_run(run_dir: Path, dst: Path | None, recipe: Recipe, calib_data=None, log=None,
                  world: World = SINGLE) -> dict:  # fmt: skip
    """Merge a run's trained weights into its backbone (LoRA fused, unfrozen layers copied, as
    `train --fuse` does), quantize that backbone into dst/backbone, keep the classifier's own
    weights (heads, MLP adapters) float32 in dst/trainable.safetensors. dst None: compute only."""
    info = read_run_json(run_dir)  # heads, classifier, backbone: objects, checked there
    if info.get("quantized"):
        raise UserError(f"{run_dir}/run.json: field 'quantized': the run is already quantized")
    src_backbone = resolve_backbone(run_dir, info, verify=True)
    config = _read_config(src_backbone)
    # resolve_backbone verified it above; the heads as trained (run.json's calibration, copied
    # into dst's, is added when dst is loaded)
    predictor = predict.load(run_dir, verify=False, calibrated=False, world=world,
                             decisions=False)  # fmt: skip
    model = predictor.model
    n_fused = fuse_lora(model)
    dropped = model.blocks_dropped  # a --feature-layer run's unused blocks, not loaded
    if dropped:
        config = dict(model.backbone.config)
    # [sensitivity]'s overrides are measured on the classifier's blocks: the RWSD language
    # model's own blocks (other weights at the same indices) get the recipe as declared
    declared = recipe
    recipe, sensitivity, correction, distill, rows = _measure_float(
        model, predictor.tokenizer, recipe, calib_data, log)  # fmt: skip
    qconfig, counts = _quantize_with(model.lm, config, recipe, src_backbone, calib_data, log,
                                     world, distill)  # fmt: skip
    if rows is not None:  # before the bias correction, which measures the model as stored
        counts["embedding_rows"] = rows.apply(model.lm)
        counts["bits_per_weight"] = rtn.bits_per_weight(model.lm)
    if correction is not None:
        counts["bias_correction"] = correction.apply()
    counts["blocks_dropped"] = dropped
    if sensitivity is not None:
        counts["sensitivity"] = sensitivity.record
    if not counts["quantized"]:
        raise UserError(f"{src_backbone}: no layer's width is a multiple of {recipe.group_size}")
    if dst is None:
        return counts
    write_quantized(src_backbone, dst / "backbone", model.lm, qconfig)
    trainable = weights_outside_backbone(model)
    save_weights(dst / WEIGHTS, trainable)
    own = _write_run_json(run_dir, dst, info, predictor, n_fused, recipe, declared)
    heads = {"parameters": sum(v.size for v in trainable.values()),
             "bytes": sum(v.nbytes for v in trainable.values())}  # fmt: skip
    parts = {"backbone": rtn.stored(model.lm), **({"substitution": own} if own else {}),
             "trainable": heads}  # fmt: skip
    counts["stored"] = rtn.stored_bits_per_weight(parts)
    if (run_dir / "metrics.json").is_file():  # the fp32 run's own validation history
        shutil.copy2(run_dir / "metrics.json", dst / "metrics.json")
    return counts


def _write_run_json(run_dir: Path, dst: Path, info: dict, predictor, n_fused: int,
                    recipe: Recipe, declared: Recipe) -> dict | None:  # fmt: skip
    """dst/run.json: the run's, with its backbone now dst/backbone (merged, quantized by
    `recipe`) and, for a run that decides RWSD by substitution, its language model's own blocks
    quantized beside (as `declared`, the recipe before [sensitivity]'s overrides, at its
    `[substitution]` width where it has one): returns what those store (None: no such blocks)."""
    model, method = predictor.model, info["classifier"].get("method")
    new = copy.deepcopy(info)
    if methods.get(method).mergeable:  # adapters are not linear: they stay beside the backbone
        mark_merged(new, len(model.backbone.layers), method, n_fused)
    new["backbone"] = {
        "path": "backbone",
        "sha256": weight_hashes(dst / "backbone"),
        "copied": True,
        "source": info["backbone"].get("path"),
    }
    new["quantized"] = {"from": str(run_dir.resolve()), "recipe": recipe.as_dict()}
    rwsd, stored = new.get("decisions", {}).get("RWSD", {}), None
    if rwsd.get("by") == "substitution":  # its language model's own blocks, quantized beside
        sub = substitution.build(model.backbone, rwsd, predictor.tokenizer, run_dir, verify=False)
        own = dst / substitution.OWN_BLOCKS
        width = dataclasses.replace(declared, **(declared.substitution or {}))
        stored = substitution.write_own_blocks(sub, rwsd["shared_blocks"], width, own)
        rwsd["lm"] = {"path": substitution.OWN_BLOCKS, "sha256": weight_hashes(own),
                      "copied": True}  # fmt: skip
    write_json(dst / "run.json", new)
    return stored


# ---------------------------------------------------------------- entry point


def quantize(
    source: str | Path,
    out: str | Path,
    bits: int | None = None,
    group_size: int | None = None,
    recipe: str | None = None,
    force: bool = False,
    log=None,
    calib_data: str | Path | None = None,
    world: World = SINGLE,
) -> Path:
    """Quantize a converted MODEL_DIR or a trained RUN_DIR into OUT (atomic); returns OUT.
    `world`: GPTQ's calibration forwards shared among ranks (`distributed`); rank 0 writes."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise UserError(f"{source}: no such directory")
    if out.resolve() == source.resolve():
        raise UserError(f"{out}: OUT must differ from the source directory")
    inputs = (source, calib_data)
    check_replaceable(out, force, MANIFEST, inputs)  # before any work; atomic_dir checks again
    rec = resolve_recipe(bits, group_size, recipe)
    if rec.calibrated and calib_data is None:
        levers = ", ".join(rec.calibrated_by)
        raise UserError(f"quantize recipe '{rec.name}' is calibrated ({levers}): give "
                        "--calib-data RSG_DIR (its train splits are the calibration set)")
    if calib_data is not None and not Path(calib_data).is_dir():
        raise UserError(f"--calib-data: {calib_data}: no such directory")
    if rec.calibrated:  # calibration runs the model: say it now if the BLAS is slow
        warn_if_slow(log)
    is_run = (source / "run.json").is_file()
    if not world.is_main:
        (_quantize_run if is_run else _quantize_model_dir)(source, None, rec, calib_data, None,
                                                           world)  # fmt: skip
        return out
    with atomic_dir(out, force, MANIFEST, inputs) as tmp:
        if is_run:
            counts = _quantize_run(source, tmp, rec, calib_data, log, world)
        else:
            counts = _quantize_model_dir(source, tmp, rec, calib_data, log, world)
        manifest = _manifest(source, "run" if is_run else "model", rec, counts)
        write_manifest(tmp, manifest)
    _report(counts, rec, out, log)
    return out


def _report(counts: dict, rec: Recipe, out: Path, log) -> None:
    """What a quantization did, a line per lever that ran."""
    if counts["skipped"]:
        log(
            f"warning: {len(counts['skipped'])} modules kept float32 (input width not a multiple "
            f"of the group size): {', '.join(counts['skipped'][:4])}"
            + (" ..." if len(counts["skipped"]) > 4 else "")
        )
    if counts.get("calibration"):
        c = counts["calibration"]
        log(f"{rec.method}: calibrated on {c['examples']} train examples ({c['tokens']} tokens, "
            f"{', '.join(c['tasks'])}) in {c['seconds']} s")
    if counts.get("blocks_dropped"):
        log(f"the {counts['blocks_dropped']} blocks above the run's --feature-layer dropped "
            "(never run)")
    if counts.get("sensitivity"):
        c = counts["sensitivity"]
        log(f"sensitivity: {len(c['raised'])} modules at {c['high_bits']} bits within "
            f"{c['budget']} bits per weight ({c['seconds']} s)")
    if counts.get("embedding_rows"):
        c = counts["embedding_rows"]
        log(f"embedding rows: {c['rows']} rows of the train text at {c['bits']} bits"
            + (f" (skipped: {c['skipped']})" if c.get("skipped") else ""))
    if counts.get("distill"):
        c = counts["distill"]
        held = c["kl"]["holdout"]
        log(f"distill: {c['steps']} steps on {sum(c['units'].values())} train units in "
            f"{c['seconds']} s; held-out KL {held['before'].get('all', 0):.5f} -> "
            f"{held['after'].get('all', 0):.5f}")
    if counts.get("bias_correction"):
        c = counts["bias_correction"]
        log(f"bias correction: heads re-centred on {sum(c['units'].values())} train units "
            f"in {c['seconds']} s")
    stored = (counts.get("stored") or {}).get("bits_per_weight")
    log(
        f"quantized {counts['quantized']} modules ({rec.name}: {rec.bits}-bit, group "
        f"{rec.group_size}; {counts['bits_per_weight']} bits per weight"
        + (f", {stored} over all the copy stores" if stored else "") + f") -> {out}"
    )
