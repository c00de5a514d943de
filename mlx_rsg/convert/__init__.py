"""Conversion to an MLX model directory: from a Hugging Face directory or Hub id (hf.py) or from a
GGUF file (gguf.py), with per-architecture recipes in the top-level `convert/` folder."""
