"""What is specific to one backbone architecture (Gemma 3): its last block run only at the pooled
positions (top_block.py) and CPU kernels for its MLP and attention (fast_gelu.py,
fast_attention.py). A model of another architecture gets none of them (`supports` checks)."""
