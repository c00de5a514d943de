"""How far one optimizer step on a quantized run's scales and biases may go: the learning rate of
`[distill]` (mlx_rsg/quant/distill.py), measured rather than borrowed.

    python benchmarks/distill_lr.py RUN_DIR --data RSG_DIR   # results/distill_lr.json

One batch of a task's train units; the float run's head probabilities as the target; the run
quantized to q4 (round to nearest). The heads' KL and its gradient on the scales and biases, then
the KL after (a) a plain gradient step sized to remove a fraction of the KL (checks the gradient:
the change must match its first-order prediction) and (b) one step of Adam's size, `lr` times the
sign of each gradient, which is what Adam's first steps are. Nothing is written to RUN_DIR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from results_io import save  # benchmarks/results_io.py, beside this script

RESULTS = Path(__file__).parent / "results"
SIGN_STEPS = (1e-8, 3e-8, 1e-7, 3e-7, 1e-6, 1e-5)
GRADIENT_FRACTIONS = (0.3, 0.1, 0.01)


def measure(run: Path, data: Path, task: str, units: int) -> dict:
    import mlx_rsg  # noqa: F401, I001  (first: the fast BLAS before MLX)
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map

    from mlx_rsg import predict
    from mlx_rsg.accel import blas
    from mlx_rsg.quant import distill, rtn
    from mlx_rsg.quant.recipe import resolve_recipe

    p = predict.load(run, verify=False, calibrated=False)
    model = p.model
    records, _ = distill.draw_records(data, [task], units, 0, 0)
    batch = distill.task_batches(model, p.tokenizer, records, units)[0]
    model.eval()
    target = distill.log_probs(model(batch), batch)
    mx.eval(target)
    rtn.quantize_backbone(model.lm, model.backbone.config, resolve_recipe(recipe="q4"))
    trainable = distill.unfreeze_quantization(model)

    def loss(m, b, t):
        return distill.kl_sum(distill.log_probs(m(b), b), t) / len(b.keys)

    kl, grads = nn.value_and_grad(model, loss)(model, batch, target)
    params = model.trainable_parameters()
    g2 = sum((v * v).sum().item() for _, v in tree_flatten(grads))

    def after(step, size: float) -> float:
        model.update(tree_map(lambda a, d: step(a, d, size), params, grads))
        out = loss(model, batch, target).item()
        model.update(params)
        return out

    gradient = []
    for frac in GRADIENT_FRACTIONS:
        eps = frac * kl.item() / g2
        gradient.append({"fraction": frac, "step": eps, "kl": after(lambda a, d, s: a - s * d, eps),
                         "predicted": kl.item() - eps * g2})  # fmt: skip
    sign = [{"lr": lr, "kl": after(lambda a, d, s: a - s * mx.sign(d), lr)} for lr in SIGN_STEPS]
    return {"benchmark": "distill_lr", "run": str(run), "task": task, "units": len(batch.keys),
            "trainable": trainable, "kl": kl.item(), "gradient_steps": gradient,
            "sign_steps": sign, "blas": blas.describe()}  # fmt: skip


def table(r: dict) -> str:
    rows = [f"KL of q4 vs float on {r['units']} {r['task']} train units: {r['kl']:.6f}", "",
            "| step | KL after | first-order prediction |", "|---|---|---|"]  # fmt: skip
    rows += [f"| gradient, {g['fraction']:.0%} of the KL | {g['kl']:.6f} | {g['predicted']:.6f} |"
             for g in r["gradient_steps"]]  # fmt: skip
    rows += [f"| lr {s['lr']:.0e} x sign | {s['kl']:.6f} | |" for s in r["sign_steps"]]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--task", default="TERRa")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS / "distill_lr.json")
    args = ap.parse_args()
    result = measure(args.run, args.data, args.task, args.units)
    save(args.out, result, table(result))


if __name__ == "__main__":
    main()
