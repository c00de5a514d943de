"""`ClassifierConfig`: how a classifier is built (method, depth, pooling, lengths), saved in
run.json. Imports no mlx: `mlx-rsg --help` reads it through TrainConfig."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_rsg.errors import UserError
from mlx_rsg.tasks import REGISTRY, official_name

DTYPES = ("float32", "bfloat16", "float16")  # what a model's weights and activations can be in


@dataclass
class ClassifierConfig:
    method: str = "freeze"  # heads | freeze | lora | mlp-adapter
    freeze_layers: int | None = None  # bottom K frozen (freeze); the default trained depth
    # of lora / mlp-adapter when their own layer counts are None
    pooling: str = "last"  # last | mean; tasks with spec.pooling == "span" always pool spans
    dropout: float = 0.1  # on the pooled features, before the head
    lora_rank: int = 8
    lora_alpha: float = 16.0  # scale = alpha / rank, as in PEFT
    lora_layers: int | None = None  # top blocks with LoRA (None: all above freeze_layers)
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    adapter_size: int = 64
    adapter_layers: int | None = None  # top blocks followed by an adapter (None: as lora_layers)
    adapter_dropout: float = 0.1
    max_len: int = 256
    # TASK=N overrides of max_len (train resolves `auto` into them before building the model)
    task_max_len: tuple[str, ...] = ()
    grad_checkpoint: bool = False  # recompute the trained blocks' activations in backward
    feature_layer: int | None = None  # pool block N's output (1-based; None: the last)
    prompt: str = "plain"  # tasks.PROMPTS: how units end (runs before it have "plain")
    dtype: str = "float32"  # DTYPES: the backbone's compute dtype (heads: float32; precision.py)

    def max_len_for(self, task: str) -> int:
        """The task's token budget; LiDiRus, scored with TERRa's head, gets TERRa's."""
        _, by_task = parse_task_max_len(self.task_max_len)
        return by_task.get(task, by_task.get(REGISTRY[task].head, self.max_len))


def parse_task_max_len(spec: tuple[str, ...]) -> tuple[bool, dict[str, int]]:
    """(`auto` given, {task: N}) from --task-max-len's entries; one-line errors."""
    auto, explicit = False, {}
    for entry in spec:
        name, eq, value = entry.strip().partition("=")
        if not eq and name.lower() == "auto":
            auto = True
            continue
        task = official_name(name)
        if not eq or task is None or not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"--task-max-len: {entry!r} is not `auto` or TASK=N (N >= 1)")
        explicit[task] = int(value)
    return auto, explicit
