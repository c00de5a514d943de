"""Quantization of a model or run directory by a recipe (quantize.py); the recipe's `method` picks
the algorithm: round-to-nearest (rtn.py) or GPTQ calibrated on RSG train examples (gptq.py)."""
