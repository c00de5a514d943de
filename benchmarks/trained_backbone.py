"""A model directory whose weights are a `freeze` run's backbone: the base model with the run's
trained blocks and final norm in place, its heads left out.

    python benchmarks/trained_backbone.py --run RUN_DIR -o OUT_DIR

For measuring a head on the features a real run's trained blocks give (`benchmarks/ablation.py
--model OUT_DIR --method heads ...`): with `train --head-only TASK` the run never trained its
blocks on TASK's records, so cross-validating a TASK head on them holds those records out of
everything it reads. Only a `freeze` run's weights replace the base's one for one (LoRA and
adapters add modules).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlx_rsg.errors import UserError  # first: OpenBLAS before anything imports mlx
from mlx_rsg.io import atomic_dir
from mlx_rsg.model_files import MANIFEST, copy_model_dir, write_manifest
from mlx_rsg.run import read_run_json, resolve_backbone


def trained_backbone(run: Path, out: Path, force: bool = False) -> list[str]:
    """Write OUT, atomically: the run's base model directory (checked against the hashes the
    run recorded) with the run's backbone weights in place, in one weights file, and a manifest
    that says so. Returns the names of the weights replaced."""
    import mlx.core as mx

    info = read_run_json(run)
    if info["classifier"]["method"] != "freeze":
        raise UserError(f"{run}: a {info['classifier']['method']} run; only freeze runs")
    base = resolve_backbone(run, info)
    trained = {k.removeprefix("lm."): v
               for k, v in mx.load(str(run / "trainable.safetensors")).items()
               if k.startswith("lm.")}  # fmt: skip
    weights = {}
    for f in sorted(base.glob("model*.safetensors")):
        weights.update(mx.load(str(f)))
    missing = sorted(set(trained) - set(weights))
    if missing:
        raise UserError(f"{run}: {missing[0]} is not a weight of {base}")
    made = base / MANIFEST  # how the base was made (convert writes it; a hand-made one lacks it)
    manifest = json.loads(made.read_text()) if made.is_file() else {}
    with atomic_dir(out, force, MANIFEST, inputs=(run, base)) as tmp:
        copy_model_dir(base, tmp, weights=False)
        mx.save_safetensors(str(tmp / "model.safetensors"), {**weights, **trained},
                            metadata={"format": "mlx"})  # fmt: skip
        trained_from = {"run": str(run), "weights": len(trained)}
        write_manifest(tmp, {**manifest, "trained_blocks": trained_from})
    return sorted(trained)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="replace OUT if it is a model directory")
    args = p.parse_args()
    try:  # a bad run or model directory: one line, as the CLI says it
        names = trained_backbone(args.run, args.out, args.force)
    except UserError as e:
        p.error(str(e))
    print(f"{args.out}: {len(names)} weights from {args.run}")


if __name__ == "__main__":
    main()
