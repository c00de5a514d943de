"""Communication vs compute per optimizer step of data-parallel training (`mlx.launch`), computed
from the model shapes: when do more Macs pay?

    python benchmarks/scaling_table.py [--tflops 10] [--tokens 4096]

Per step each rank sends and receives 2 (N-1)/N x the trainable parameters' fp32 gradients (a
ring all-reduce, `mlx.nn.utils.average_gradients`; our loop sums once per optimizer step, plus
one scalar loss per batch). Compute per step: the forward over every layer (2 FLOPs per Linear
weight per token, plus attention over the sequence) and the backward of what is trained: twice
the forward of the trained blocks for `freeze` (input and weight gradients), one more forward
for LoRA on every block (input gradients through all blocks; the adapters' own are negligible).
Assumed, not measured: the compute rate (--tflops, achieved fp32 FLOP/s of one Mac's GPU), link
bandwidths at their nominal rates, no overlap of communication with compute (MLX's all-reduce
runs after the backward). Writes benchmarks/results/scaling.json and prints the table.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from results_io import save  # benchmarks/results_io.py, beside this script

HERE = Path(__file__).parent
LINKS = {"10 GbE": 1.25e9, "TB5 (80 Gb/s)": 10e9}  # bytes/s


@dataclass(frozen=True)
class Shape:  # Gemma 3 text configs (config.json of google/gemma-3-{270m,1b-pt,4b-pt})
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int = 256

    def projections(self) -> dict[str, tuple[int, int]]:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h),
                "gate": (h, i), "up": (h, i), "down": (i, h)}  # fmt: skip

    def block_weights(self) -> int:
        return sum(a * b for a, b in self.projections().values())

    def block_forward_flops(self, seq: int) -> float:
        """Per token: 2 per Linear weight, plus scores and weighted values over `seq` keys."""
        return 2 * self.block_weights() + 4 * seq * self.heads * self.head_dim


MODELS = [
    Shape("Gemma-3-270M", 640, 2048, 18, 4, 1),
    Shape("Gemma-3-1B", 1152, 6912, 26, 4, 1),
    Shape("Gemma-3-4B", 2560, 10240, 34, 8, 4),
]


def setups(rank: int) -> list[dict]:
    """(model, method, trainable params, trained blocks) as in docs/scaling.md's table."""
    m270, m1b, m4b = MODELS

    def lora(m: Shape) -> int:
        return m.layers * sum(rank * (a + b) for a, b in m.projections().values())

    return [
        {"model": m270, "method": "freeze top 9", "trainable": 9 * m270.block_weights(),
         "backward_blocks": 9},
        {"model": m1b, "method": f"LoRA r{rank}, all 7 projections", "trainable": lora(m1b),
         "backward_blocks": m1b.layers / 2},
        {"model": m4b, "method": f"LoRA r{rank}, all 7 projections", "trainable": lora(m4b),
         "backward_blocks": m4b.layers / 2},
    ]  # fmt: skip


def step_costs(setup: dict, tokens: int, seq: int, flops: float, ranks: int) -> dict:
    m: Shape = setup["model"]
    # freeze: backward of the trained blocks = 2x their forward; LoRA: input gradients through
    # every block = 1x the forward of all blocks, written as layers / 2 blocks at 2x.
    per_token = m.block_forward_flops(seq) * (m.layers + 2 * setup["backward_blocks"])
    compute = per_token * tokens / flops
    grad_bytes = 4 * setup["trainable"]
    row = {"model": m.name, "method": setup["method"], "trainable_params": setup["trainable"],
           "gradient_mb": grad_bytes / 1e6, "compute_s_one_rank": compute, "links": {}}  # fmt: skip
    for link, bw in LINKS.items():
        comm = 2 * (ranks - 1) / ranks * grad_bytes / bw
        step = compute / ranks + comm
        row["links"][link] = {"comm_s": comm, "step_s": step, "speedup": compute / step}
    return row


def table(result: dict) -> str:
    n = result["ranks"]
    head = " | ".join(f"{link}: comm s / speed-up x{n}" for link in LINKS)
    lines = [
        f"| model, method | trainable | gradients per step | compute per step, 1 rank | {head} |",
        "|---|---|---|---|" + "---|" * len(LINKS),
    ]
    for r in result["rows"]:
        cells = " | ".join(f"{v['comm_s']:.3f} / {v['speedup']:.2f}x" for v in r["links"].values())
        lines.append(
            f"| {r['model']}, {r['method']} | {r['trainable_params'] / 1e6:.1f} M | "
            f"{r['gradient_mb']:.0f} MB | {r['compute_s_one_rank']:.2f} s | {cells} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tflops", type=float, default=10.0, help="achieved fp32 TFLOP/s per rank")
    ap.add_argument("--tokens", type=int, default=16 * 256, help="tokens per optimizer step")
    ap.add_argument("--seq", type=int, default=256, help="tokens per example (attention)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scaling.json")
    args = ap.parse_args()
    rows = [step_costs(s, args.tokens, args.seq, args.tflops * 1e12, args.ranks)
            for s in setups(args.lora_rank)]  # fmt: skip
    result = {"benchmark": "scaling (computed, not measured)", "tflops_per_rank": args.tflops,
              "tokens_per_step": args.tokens, "seq": args.seq, "ranks": args.ranks,
              "links_bytes_per_s": LINKS, "rows": rows}  # fmt: skip
    save(args.out, result, table(result))


if __name__ == "__main__":
    main()
