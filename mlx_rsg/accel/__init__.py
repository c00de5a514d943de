"""CPU speed, kept behind one seam: the BLAS loaded before MLX (blas.py), the per-machine choice of
fast paths (fastpaths.py), dequantize + GEMM for quantized layers (fast_quant.py), row-parallel
streams (cpu_parallel.py) and the allocator's cache (memory.py). Nothing here is imported by
`import mlx_rsg` except blas.py, which imports no mlx."""
