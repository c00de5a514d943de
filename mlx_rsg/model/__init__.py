"""The classifier: an mlx-lm backbone called layer by layer (backbone.py), pooling and heads
(classifier.py), one module per training method (methods/), batches and the loss (batching.py),
and the frozen-prefix cache (features.py)."""
