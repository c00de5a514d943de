"""`TrainConfig`: every `mlx-rsg train` flag, defined once (the CLI's options are made from its
fields), and the classifier config and heads it implies. Imports no mlx: `mlx-rsg --help` reads
it."""

from __future__ import annotations

from dataclasses import dataclass, fields

from mlx_rsg.errors import UserError
from mlx_rsg.model.config import DTYPES, ClassifierConfig, parse_task_max_len
from mlx_rsg.model.methods import METHODS
from mlx_rsg.options import AT_LEAST_0, AT_LEAST_1, POSITIVE, Bounds, check_bounds, opt
from mlx_rsg.tasks import AUGMENTABLE, PROMPTS, REGISTRY, TRAIN_TASKS, official_name

REFERENCE_FROZEN_FRACTION = 12 / 26  # the reference froze 12 of Gemma-3-1b's 26 layers
PROBABILITY = Bounds(0, 1, high_open=True)  # a dropout rate
HEAD_INITS = ("zero", "label-words")  # how heads start (model/label_words.py)
TRAIN_DTYPES = DTYPES  # float16 with dynamic loss scaling (train/loss_scale.py)
RWSD_DECISIONS = ("head", "substitution", "dev")  # model/substitution.py


@dataclass
class TrainConfig:
    """Every `mlx-rsg train` flag, its one definition (the CLI options are made from these
    fields). Saved in run.json; --resume requires the same values."""

    tasks: tuple[str, ...] = TRAIN_TASKS
    method: str = opt("freeze", choices=list(METHODS))
    freeze_layers: int | None = opt(
        None, "Bottom K layers frozen.", default_help="round(12/26 x layers), as the reference",
        bounds=AT_LEAST_0,
    )
    pooling: str = opt(
        "last", "Sentence pooling (RUSSE/RWSD always use span pooling).", choices=["last", "mean"]
    )
    prompt: str = opt(
        "plain", "How each example ends: `answer` appends a question the task's label words "
        "answer (TERRa, LiDiRus, RCB: да / нет / возможно; DaNetQA, MuSeRC, PARus: нет / да), so "
        "the pooled last token is where the language model would write its answer; RUSSE, RWSD "
        "and RuCoS keep theirs.", choices=list(PROMPTS),
    )  # fmt: skip
    head_init: str = opt(
        "zero", "How the heads start: at zero (chance), or with --prompt answer at the label "
        "words' rows of the model's output embedding (`label-words`: the model's own prior "
        "for the answer).", choices=list(HEAD_INITS),
    )  # fmt: skip
    dropout: float = opt(0.1, bounds=PROBABILITY)
    lora_rank: int = opt(8, bounds=AT_LEAST_1)
    lora_alpha: float = opt(16.0, bounds=POSITIVE)
    lora_layers: int | None = opt(
        None, "Top N layers get LoRA.", default_help="those above --freeze-layers",
        bounds=AT_LEAST_0,
    )
    lora_targets: tuple[str, ...] = opt(
        ("q_proj", "v_proj"), "Linear layer names inside each block."
    )
    adapter_size: int = opt(64, bounds=AT_LEAST_1)
    adapter_layers: int | None = opt(
        None, "MLP adapters after the top N blocks.", default_help="those above --freeze-layers",
        bounds=AT_LEAST_0,
    )
    adapter_dropout: float = opt(0.1, bounds=PROBABILITY)
    epochs: int = opt(3, bounds=AT_LEAST_1)
    lr: float = opt(5e-6, "Peak learning rate of the backbone's trainable weights.",
                    bounds=POSITIVE)  # fmt: skip
    head_lr: float = opt(1e-3, "Peak learning rate of the new classification heads.",
                         bounds=POSITIVE)  # fmt: skip
    weight_decay: float = opt(0.01, bounds=AT_LEAST_0)
    batch_size: int = opt(8, bounds=AT_LEAST_1)
    grad_accum: int = opt(2, bounds=AT_LEAST_1)
    warmup: int = opt(100, "Linear warmup, in optimizer steps; then linear decay to 0.",
                      bounds=AT_LEAST_0)  # fmt: skip
    max_len: int = opt(256, "Tokens per example (longer ones are cut from their long context).",
                       bounds=AT_LEAST_1)  # fmt: skip
    task_max_len: tuple[str, ...] = opt(
        (), "Per-task lengths: TASK=N, and/or `auto`: each other task gets the length 95 % of its "
        "training examples fit in (a multiple of 32, at most --max-len; `mlx-rsg data info "
        "--model` shows them)."
    )  # fmt: skip
    seed: int = opt(0, bounds=AT_LEAST_0)
    # Caps count examples (units: one per MuSeRC answer, gold + negatives per RuCoS query) and
    # draw whole records, so one number keeps every task in proportion.
    max_train_per_task: int | None = opt(
        5000, "At most ~N training examples per task, drawn as whole records (examples = units: "
        "one per MuSeRC answer, gold + negatives per RuCoS query; 0: no cap).", bounds=AT_LEAST_0
    )  # fmt: skip
    task_max_train: tuple[str, ...] = opt(
        (), "Per-task training budgets: TASK=N (~N examples, drawn as --max-train-per-task "
        "draws) or TASK=all (every training record); the other tasks keep "
        "--max-train-per-task. `mlx-rsg data info --model M` shows what each task costs."
    )  # fmt: skip
    max_eval_per_task: int | None = opt(
        None, "At most ~N val examples per task, drawn as whole records.", bounds=AT_LEAST_0
    )
    dev_per_task: int = opt(
        0, "Carve ~N examples per task out of train as a dev split (whole groups of records "
        "that share a text, so no near-copy straddles it): the best epoch is chosen and the "
        "decisions are calibrated on it, and val is scored once, at the end, with predictions "
        "written to RUN_DIR/val_predictions.zip (0: no dev split; epochs are chosen on val).",
        bounds=AT_LEAST_0,
    )  # fmt: skip
    dev_fold: str | None = opt(
        None, "K/N: the dev split is the K-th of N folds of train's record groups (drawn from "
        "--seed, near-copies kept together, balanced by examples) instead of --dev-per-task's "
        "draw; the N runs K = 1..N with one seed hold every training record out once "
        "(cross-validation, for tasks too small for one dev split to tell levers apart; "
        "`benchmarks/ablation.py --folds N` pools them).",
    )  # fmt: skip
    calibrate: bool = opt(
        True, "With --dev-per-task: offset each label head's decision for the metric its task "
        "is scored by (thresholds, RCB's class biases, LiDiRus's MCC; one-standard-error rule)."
    )
    select: str = opt(
        "loss", "With --dev-per-task: the epoch kept is the one with the lowest mean dev "
        "log-loss of the heads (`loss`: every record's confidence counts, the least noisy on a "
        "small dev split) or the highest mean official dev score, calibrated (`score`).",
        choices=["loss", "score"],
    )
    refit: bool = opt(
        False, "With --dev-per-task: once the epoch and the calibration are chosen on dev, train "
        "again from the start on train + dev for that many epochs and score val with that model "
        "(about twice the training time; dev holds a third of RCB's and a quarter of RWSD's "
        "training data)."
    )  # fmt: skip
    rwsd_decision: str = opt(
        "dev", "How RWSD is decided: by its trained head; by `substitution` (no training: the "
        "base model scores the words after the pronoun with each candidate in its place, "
        "through all of its blocks, and the best candidate per pronoun is True); or `dev`: "
        "whichever scores higher on the dev split (the head without one).",
        choices=list(RWSD_DECISIONS),
    )  # fmt: skip
    augment: tuple[str, ...] = opt(
        (), "Tasks whose training records are also trained on transformed (dev, val and the "
        "budgets count the records as drawn): PARus, each record mirrored (the right choice as "
        "the premise, the question turned, the premise as the right choice)."
    )  # fmt: skip
    head_only: tuple[str, ...] = opt(
        (), "Tasks whose loss trains only their own head: the blocks the other tasks train still "
        "shape the features it reads, but get no gradient from it (a small task's noise kept "
        "out of the shared blocks; PARus, cross-validated: docs/training.md).",
    )  # fmt: skip
    max_negatives: int = opt(4, "RuCoS: wrong entities sampled per query per epoch.",
                             bounds=AT_LEAST_0)  # fmt: skip
    checkpoint_every: int = opt(
        50, "Optimizer steps between resume checkpoints (and every epoch end).", bounds=AT_LEAST_1
    )
    prefix_cache: bool = opt(
        True, "Compute the frozen layers once per example and reuse them every epoch."
    )
    share_prefix: bool = opt(
        True, "Train a record's units that share a long token prefix (a MuSeRC passage's "
        "answers) in the same batches and run that prefix once through the trained blocks, "
        "forward and backward (the same loss and gradients as running each unit whole)."
    )  # fmt: skip
    feature_layer: int | None = opt(
        None, "Pool the output of block N (1..layers) instead of the last block's: the blocks "
        "above it are dropped (never run, never stored), and --freeze-layers / --lora-layers / "
        "--adapter-layers count within the N kept.", default_help="the last block",
        bounds=AT_LEAST_1
    )  # fmt: skip
    grad_checkpoint: bool = opt(
        False, "Recompute the trained layers' activations in backward (less memory, slower)."
    )
    dtype: str = opt(
        "float32", "What the backbone computes in (weights and activations; the prefix cache "
        "keeps its rows in it too). The heads and the loss stay float32, and the trained weights "
        "are learned as float32 masters (saved as such). float16 (Macs without bfloat16) scales "
        "its loss dynamically so its gradients do not underflow; bfloat16 needs no scaling.",
        choices=list(TRAIN_DTYPES),
    )  # fmt: skip
    cache_dir: str | None = opt(
        None, "Memory-map the prefix cache here instead of keeping it in RAM.", path="dir"
    )

    def validate(self) -> None:
        bad = [t for t in self.tasks if t not in TRAIN_TASKS]
        if bad:
            raise UserError(f"--tasks: unknown or untrainable task {bad[0]!r}")
        if not self.tasks:
            raise UserError("--tasks: no task selected")
        if self.method not in METHODS:
            raise UserError(f"--method: {self.method!r} is not one of {', '.join(METHODS)}")
        check_bounds(self)
        parse_task_max_len(self.task_max_len)  # a bad entry fails here, before any work
        parse_task_budgets(self.task_max_train)
        if self.select not in ("loss", "score"):
            raise UserError(f"--select: {self.select!r} is not one of loss, score")
        if self.prompt not in PROMPTS:
            raise UserError(f"--prompt: {self.prompt!r} is not one of {', '.join(PROMPTS)}")
        if self.head_init not in HEAD_INITS:
            msg = f"{self.head_init!r} is not one of {', '.join(HEAD_INITS)}"
            raise UserError(f"--head-init: {msg}")
        if self.head_init == "label-words" and self.prompt != "answer":
            raise UserError("--head-init label-words: needs --prompt answer (the label words "
                            "answer its question)")  # fmt: skip
        if self.dtype not in TRAIN_DTYPES:
            raise UserError(f"--dtype: {self.dtype!r} is not one of {', '.join(TRAIN_DTYPES)}")
        if self.rwsd_decision not in RWSD_DECISIONS:
            msg = f"{self.rwsd_decision!r} is not one of {', '.join(RWSD_DECISIONS)}"
            raise UserError(f"--rwsd-decision: {msg}")
        self._check_task_lists()
        if self.folds() is not None and self.dev_per_task:  # a bad --dev-fold fails here too
            raise UserError("--dev-fold and --dev-per-task: give one (the fold is the dev split)")
        if self.refit and not self.has_dev:
            raise UserError("--refit: needs --dev-per-task or --dev-fold (the epochs to train are "
                            "chosen on dev)")  # fmt: skip

    def _check_task_lists(self) -> None:
        """--augment and --head-only name trained tasks (--augment: ones with an augmentation)."""
        for name in self.augment:
            task = official_name(name)
            if task not in self.tasks or task not in AUGMENTABLE:
                can = ", ".join(t for t in self.tasks if t in AUGMENTABLE) or "none of --tasks"
                raise UserError(f"--augment: {name!r} is not a trained task with an augmentation "
                                f"(these have one: {can})")  # fmt: skip
        for name in self.head_only:
            if official_name(name) not in self.tasks:
                raise UserError(f"--head-only: {name!r} is not one of the trained tasks "
                                f"({', '.join(self.tasks)})")  # fmt: skip

    @property
    def has_dev(self) -> bool:
        """Whether a dev split is carved out of train (--dev-per-task or --dev-fold)."""
        return bool(self.dev_per_task or self.dev_fold)

    def folds(self) -> tuple[int, int] | None:
        """--dev-fold as (K, N) with 1 <= K <= N and N >= 2; None without it; one-line errors."""
        if self.dev_fold is None:
            return None
        k, slash, n = str(self.dev_fold).partition("/")
        if not (slash and k.strip().isdigit() and n.strip().isdigit()):
            raise UserError(f"--dev-fold: {self.dev_fold!r} is not K/N (e.g. 2/5)")
        k, n = int(k), int(n)
        if n < 2 or not 1 <= k <= n:
            raise UserError(f"--dev-fold: {self.dev_fold!r}: needs N >= 2 and 1 <= K <= N")
        return k, n

    def augments(self, task: str) -> bool:
        """Whether --augment names `task` (in any case)."""
        return task in {official_name(name) for name in self.augment}

    def head_only_tasks(self) -> frozenset[str]:
        """The official names of the tasks --head-only names."""
        return frozenset(official_name(name) for name in self.head_only)

    def train_budget(self, task: str) -> int | None:
        """~How many training examples `task` gets: its --task-max-train entry, else
        --max-train-per-task (None or 0: every record)."""
        budget = parse_task_budgets(self.task_max_train).get(task, self.max_train_per_task)
        return budget or None


def parse_task_budgets(spec: tuple[str, ...]) -> dict[str, int | None]:
    """{task: N, or None for all} from --task-max-train's entries; one-line errors."""
    out: dict[str, int | None] = {}
    for entry in spec:
        for part in entry.split(","):  # TERRa=all,RUSSE=4000 as one argument too
            name, eq, value = part.strip().partition("=")
            task, value = official_name(name), value.strip().lower()
            number = value == "all" or value.isdigit() and int(value) > 0
            if not eq or task not in TRAIN_TASKS or not number:
                raise UserError(f"--task-max-train: {part.strip()!r} is not TASK=N (N >= 1) "
                                "or TASK=all")  # fmt: skip
            out[task] = None if value == "all" else int(value)
    return out


def classifier_config(cfg: TrainConfig, num_layers: int):
    """The model's config from the training flags, for a model of `num_layers` blocks;
    freeze_layers counts within the blocks the classifier keeps (--feature-layer) and defaults to
    the reference's frozen fraction of them (12 of 26 layers -> 8 of 18 for Gemma-3-270M)."""
    if cfg.feature_layer is not None:
        if cfg.feature_layer > num_layers:
            raise UserError(f"--feature-layer: {cfg.feature_layer} > the model's {num_layers} "
                            "layers")  # fmt: skip
        num_layers = cfg.feature_layer
    freeze = cfg.freeze_layers
    if freeze is None:
        freeze = round(REFERENCE_FROZEN_FRACTION * num_layers)
    if freeze > num_layers:
        raise UserError(f"--freeze-layers: {freeze} > the model's {num_layers} layers")
    # Every model setting is a training flag of the same name (TrainConfig holds them all).
    shared = {f.name: getattr(cfg, f.name) for f in fields(ClassifierConfig)}
    shared["lora_targets"] = tuple(cfg.lora_targets)
    return ClassifierConfig(**{**shared, "freeze_layers": freeze})


def heads_for(tasks: tuple[str, ...]) -> dict[str, int]:
    """Head name -> outputs: one score per unit for choice tasks, one logit per label otherwise."""
    heads: dict[str, int] = {}
    for t in tasks:
        spec = REGISTRY[t]
        heads[spec.head] = 1 if spec.choice else len(spec.labels)
    return heads
