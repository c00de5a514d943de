"""Half-precision Linear layers on the CPU: one float32 GEMM on up-cast operands.

Why: MLX's CPU has no fast bfloat16 or float16 GEMM — measured 4.3 and 3.5 GFLOP/s against 170
for float32 through OpenBLAS on this project's 2-core EPYC (1024 x 640 x 2048) — so a model that
computes in half precision (`train --dtype bfloat16`) would train ~40x slower on the CPU than in
float32. Here a Linear whose input and weight are both in half precision casts them to float32,
multiplies through the BLAS and rounds the result to the input's dtype: weights, activations and
the prefix cache stay in half precision, only the products are float32. A GPU's half-precision
GEMM accumulates in float32 as well, so the results differ from it only in summation order.
Float32 layers run MLX's own call. On Metal nothing changes (`mlx_rsg.accel.fastpaths`).

`FastHalfLinear` is nn.Linear with this path; `fastpaths` gives it to our models' Linear layers
where it measures faster, and no other model in the process is touched.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

HALF = (mx.bfloat16, mx.float16)


class FastHalfLinear(nn.Linear):
    def __call__(self, x: mx.array) -> mx.array:
        w = self["weight"]
        if x.dtype not in HALF or w.dtype not in HALF:
            return super().__call__(x)
        y = x.astype(mx.float32) @ w.astype(mx.float32).T
        if "bias" in self:
            y = y + self["bias"].astype(mx.float32)
        return y.astype(x.dtype)
