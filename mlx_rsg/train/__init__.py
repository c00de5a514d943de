"""Multi-task training (`mlx-rsg train`): the flags (config.py), the data plan (plan.py), the
optimizer (optim.py), resumable checkpoints (checkpoint.py) and the loop (loop.py)."""

from mlx_rsg.model.methods import METHODS
from mlx_rsg.tasks import TRAIN_TASKS, parse_tasks
from mlx_rsg.train.config import TrainConfig, classifier_config, heads_for

__all__ = ["METHODS", "TRAIN_TASKS", "TrainConfig", "classifier_config", "heads_for",
           "parse_tasks", "train"]  # fmt: skip


def __getattr__(name: str):
    # The loop imports mlx and mlx-lm; `mlx-rsg --help` imports this package for TrainConfig.
    if name == "train":
        from mlx_rsg.train.loop import train

        return train
    raise AttributeError(f"module 'mlx_rsg.train' has no attribute {name!r}")
