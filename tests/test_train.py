"""The training loop on a tiny random Gemma 3 and a learnable synthetic RSG fixture."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from error_lines import error_line
from tiny_model import tiny_model_dir, tiny_rsg_dir, tiny_train_config  # noqa: F401

import mlx_rsg  # noqa: F401
from mlx_rsg import train as T
from mlx_rsg.data.sample import sample_records
from mlx_rsg.errors import UserError
from mlx_rsg.train import checkpoint, optim


def losses(run_dir: Path) -> list[dict]:
    return [json.loads(s) for s in (run_dir / "losses.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_rsg_dir, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("runs") / "run"
    metrics = T.train(tiny_model_dir, tiny_rsg_dir, run, tiny_train_config(), log=lambda m: None)
    return run, metrics


def test_loss_falls_and_val_improves(trained):
    run, metrics = trained
    rows = losses(run)
    by_epoch = [np.mean([r["loss"] for r in rows if r["epoch"] == e]) for e in range(3)]
    assert by_epoch[2] < 0.6 * by_epoch[0], by_epoch
    hist = metrics["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    # Chance is ~0.5 (TERRa, PARus) / ~0.33 (RCB): the cue words must have been learnt.
    assert max(h["score"] for h in hist) > 0.7
    assert metrics["best"]["score"] == max(h["score"] for h in hist)


def test_every_batch_is_one_task_and_epoch_covers_each_record_once(trained):
    run, _ = trained
    rows = losses(run)
    n_batches = {e: sum(r["epoch"] == e for r in rows) for e in range(3)}
    # 48 records per task; TERRa/RCB 8 per batch -> 6 batches; PARus 4 groups per batch -> 12.
    assert n_batches == {0: 24, 1: 24, 2: 24}
    tasks_e0 = [r["task"] for r in rows if r["epoch"] == 0]
    assert sorted(set(tasks_e0)) == ["PARus", "RCB", "TERRa"]
    assert tasks_e0.count("PARus") == 12 and tasks_e0.count("TERRa") == 6
    assert tasks_e0 != sorted(tasks_e0)  # tasks are interleaved, not run one after another


def test_run_dir_contents(trained, tiny_model_dir):  # noqa: F811
    run, metrics = trained
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["best_epoch"] == metrics["best"]["epoch"]
    assert info["train"]["lr"] == 1e-3 and info["train"]["tasks"] == ["TERRa", "RCB", "PARus"]
    assert info["heads"] == {"TERRa": 2, "RCB": 3, "PARus": 1}
    assert info["tasks"]["LiDiRus"]["head"] == "TERRa"
    from mlx_rsg.model_files import sha256_file

    assert info["backbone"]["sha256"]["model.safetensors"] == sha256_file(
        tiny_model_dir / "model.safetensors"
    )
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert "LiDiRus" in metrics["final"]["tasks"]
    names = set(mx.load(str(run / "trainable.safetensors")))
    assert {"heads.TERRa.weight", "heads.RCB.weight", "heads.PARus.weight"} <= names


def test_frozen_layers_bit_identical_trained_layers_moved(trained, tiny_model_dir):  # noqa: F811
    from mlx_rsg.model.backbone import load_backbone
    from mlx_rsg.predict import load

    run, _ = trained
    base = load_backbone(tiny_model_dir)
    model = load(run).model
    k = json.loads((run / "run.json").read_text())["classifier"]["freeze_layers"]
    assert k == 1
    from mlx.utils import tree_flatten

    frozen = dict(tree_flatten(base.layers[0].parameters()))
    after = dict(tree_flatten(model.backbone.layers[0].parameters()))
    assert all(np.array_equal(np.array(frozen[n]), np.array(after[n])) for n in frozen)
    top_before = dict(tree_flatten(base.layers[1].parameters()))
    top_after = dict(tree_flatten(model.backbone.layers[1].parameters()))
    assert any(
        not np.array_equal(np.array(top_before[n]), np.array(top_after[n])) for n in top_before
    )


def test_lr_schedule_warmup_then_linear_decay():
    s = optim.lr_schedule(1e-3, warmup=10, total=110)
    got = [float(s(mx.array(t))) for t in (0, 5, 10, 60, 110, 200)]
    assert got == pytest.approx([0.0, 5e-4, 1e-3, 5e-4, 0.0, 0.0], abs=1e-9)


def test_head_params_get_head_lr():
    cfg = tiny_train_config(lr=1e-5, head_lr=1e-2, warmup=0)
    opt = optim.make_optimizer(cfg, total_steps=100)
    params = {"heads": {"TERRa": {"weight": mx.ones((2, 3))}}, "layers": [{"w": mx.ones((3,))}]}
    grads = {"heads": {"TERRa": {"weight": mx.ones((2, 3))}}, "layers": [{"w": mx.ones((3,))}]}
    new = opt.apply_gradients(grads, params)
    # Bias-corrected Adam's first step is lr * g/|g| = lr, plus decoupled decay lr * wd * w:
    # from w = 1 the weight moves by lr * (1 + wd).
    head_step = 1 - float(new["heads"]["TERRa"]["weight"][0, 0])
    body_step = 1 - float(new["layers"][0]["w"][0])
    assert head_step == pytest.approx(1e-2 * 1.01, rel=1e-4)
    assert body_step == pytest.approx(1e-5 * 1.01, rel=1e-2)  # fp32 rounding of 1 - 1e-5


def test_parse_tasks():
    assert T.parse_tasks("all") == T.TRAIN_TASKS and "LiDiRus" not in T.TRAIN_TASKS
    assert T.parse_tasks("rcb,TERRA, parus") == ("RCB", "PARus", "TERRa")
    with pytest.raises(UserError, match="unknown task 'foo'"):
        T.parse_tasks("terra,foo")
    with pytest.raises(UserError, match="LiDiRus has no train split"):
        T.parse_tasks("lidirus")


def test_cap_is_a_fixed_subset():
    items = list(range(100))
    a = sample_records(items, 10, seed=1, salt="RUSSE:train")
    assert len(a) == 10 and a == sorted(a) and a == sample_records(items, 10, 1, "RUSSE:train")
    assert a != sample_records(items, 10, 2, "RUSSE:train")
    assert sample_records(items, None, 1, "x") == items
    assert sample_records(items, 500, 1, "x") == items


def test_cap_counts_examples_not_records():
    sizes = {i: (10 if i % 2 else 1) for i in range(40)}  # odd records hold 10 examples
    kept = sample_records(list(range(40)), 50, seed=3, salt="MuSeRC:train", size=sizes.__getitem__)
    total = sum(sizes[i] for i in kept)
    assert 50 <= total < 60 and kept == sorted(kept)  # stops at the first record reaching 50


def test_default_config_matches_reference():
    cfg = T.TrainConfig()
    assert (cfg.lr, cfg.warmup, cfg.epochs, cfg.dropout) == (5e-6, 100, 3, 0.1)
    assert cfg.batch_size * cfg.grad_accum == 16  # the reference's 1 x 16
    assert cfg.method == "freeze" and cfg.head_lr > cfg.lr
    assert T.classifier_config(cfg, 26).freeze_layers == 12  # the reference's 12 of 26
    assert T.classifier_config(cfg, 18).freeze_layers == 8


def test_config_validation():
    for bad, msg in [
        (dict(method="full"), "--method"),
        (dict(lr=0.0), "--lr"),
        (dict(batch_size=0), "--batch-size"),
        (dict(tasks=("LiDiRus",)), "--tasks"),
        (dict(dropout=1.0), "--dropout"),
        (dict(head_lr=float("inf")), "--head-lr: must be > 0, got inf"),
        (dict(lr=float("nan")), "--lr: must be > 0, got nan"),
        (dict(checkpoint_every=0), "--checkpoint-every: must be in [1, 2147483647], got 0"),
        (dict(seed=-1), "--seed: must be in [0, 2147483647], got -1"),
        (dict(seed=2**70), "--seed: must be in [0, 2147483647], got 1180591620717411303424"),
        (dict(max_negatives=-1), "--max-negatives: must be in [0, 2147483647], got -1"),
        (dict(weight_decay=-0.1), "--weight-decay: must be >= 0, got -0.1"),
        (dict(dropout=0.5, adapter_dropout=1.0), "--adapter-dropout: must be in [0, 1), got 1.0"),
        (dict(epochs="3"), "--epochs: expected an integer, got '3'"),
        (dict(epochs=3.0), "--epochs: expected an integer, got 3.0"),
    ]:
        with pytest.raises(UserError) as e:
            T.TrainConfig(**bad).validate()
        assert msg in str(e.value)


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from mlx_rsg.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def test_cli_errors_are_one_line(tiny_model_dir, tiny_rsg_dir, trained, tmp_path):  # noqa: F811
    run, _ = trained
    cases = [
        (["--tasks", "terra,nope"], "--tasks: unknown task 'nope'"),
        (["--tasks", "terra", "--lr", "-1"], "Invalid value for '--lr': must be > 0, got -1"),
        (
            ["--tasks", "terra", "--freeze-layers", "99"],
            "--freeze-layers: 99 > the model's 2 layers",
        ),
    ]
    for extra, msg in cases:
        r = _cli(
            "train",
            str(tiny_model_dir),
            "--data",
            str(tiny_rsg_dir),
            "-o",
            str(tmp_path / "new"),
            *extra,
        )
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"error: {msg}") and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / "new").exists()  # no partial output
    r = _cli(
        "train",
        str(tiny_model_dir),
        "--data",
        str(tiny_rsg_dir),
        "-o",
        str(run),
        "--tasks",
        "terra,rcb,parus",
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already exists" in r.stderr
    r = _cli(
        "train", str(tiny_model_dir), "--data", str(tmp_path / "nodata"), "-o", str(tmp_path / "x")
    )
    assert r.returncode == 2 and "data not found" in r.stderr and r.stderr.count("\n") == 1
    r = _cli(
        "train",
        str(tiny_model_dir),
        "--data",
        str(tiny_rsg_dir),
        "-o",
        str(tmp_path / "x"),
        "--tasks",
        "terra",
        "--resume",
    )
    assert r.returncode == 2 and "not a run directory" in r.stderr and r.stderr.count("\n") == 1


def test_rng_state_round_trip():
    random.seed(5)
    np.random.seed(5)
    state = json.loads(json.dumps(checkpoint._rng_state()))
    a = (random.random(), np.random.rand())
    random.seed(0)
    np.random.seed(0)
    checkpoint._set_rng_state(state)
    assert (random.random(), np.random.rand()) == a


def test_train_options_come_from_train_config():
    """Each setting is spelled once: TrainConfig's fields are `mlx-rsg train`'s options (same
    names, defaults and choices) and ClassifierConfig's fields a subset of them."""
    from dataclasses import fields

    from mlx_rsg.cli import train_command
    from mlx_rsg.model.classifier import ClassifierConfig

    options = {p.name: p for p in train_command.params}
    for f in fields(T.TrainConfig):
        if f.name == "tasks":
            continue
        opt = options[f.name]
        assert f"--{f.name.replace('_', '-')}" in opt.opts
        default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        assert opt.default == default, f.name
    assert list(options["method"].type.choices) == list(T.METHODS)
    assert {f.name for f in fields(ClassifierConfig)} <= {f.name for f in fields(T.TrainConfig)}


def test_force_never_deletes_inputs_or_foreign_directories(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    """`train -o DATA --force` once deleted the data, then failed; `-o MODEL_DIR --force` the
    model. --force replaces only an mlx-rsg run directory (or an empty one) holding no input."""
    import shutil

    data = tmp_path / "rsg"
    shutil.copytree(tiny_rsg_dir, data)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = T.TrainConfig(tasks=("TERRa",), epochs=1, max_len=32)
    for out, want in [(data, "holds the input"), (model, "holds the input"),
                      (tmp_path, "holds the input")]:  # fmt: skip
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        with pytest.raises(UserError, match=want):
            T.train(model, data, out, cfg, force=True, log=lambda m: None)
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an mlx-rsg run directory"):
        T.train(model, data, notes, cfg, force=True, log=lambda m: None)
    assert (notes / "mine.txt").read_text() == "keep me"
    bad = tmp_path / "bad-flags"
    (bad / "x").mkdir(parents=True)
    with pytest.raises(UserError, match="--freeze-layers"):  # checked before anything is deleted
        T.train(model, data, bad, T.TrainConfig(tasks=("TERRa",), freeze_layers=99), force=True)
    assert (bad / "x").is_dir()


def test_predict_checks_its_flags_before_loading_anything(tmp_path):
    """A flag mistake is reported at once, not after the model has loaded (no run dir here)."""
    from mlx_rsg.cli import predict_command

    common = dict(run_dir=str(tmp_path / "no-run"), task=None, input_path=None, task_list="all",
                  batch_size=16, max_per_task=None, seed=0)  # fmt: skip
    cases = [
        (dict(data_dir=str(tmp_path), split="test", submission=None), "needs --submission"),
        (dict(data_dir=str(tmp_path), split="val", submission="x.zip"), "needs --split test"),
        (dict(data_dir=None, split=None, submission=None), "give either --task"),
    ]
    for flags, want in cases:
        with pytest.raises(UserError, match=want):
            predict_command.callback(**common, **flags)


def test_task_max_len_parsing():
    from mlx_rsg.model.config import parse_task_max_len

    assert parse_task_max_len(("auto", "terra=64", "MuSeRC=512")) == (
        True, {"TERRa": 64, "MuSeRC": 512}
    )  # fmt: skip
    assert parse_task_max_len(()) == (False, {})
    for bad in ("terra", "terra=0", "nosuch=64", "terra=x", "autox"):
        with pytest.raises(UserError, match="--task-max-len: .* is not `auto` or TASK=N"):
            T.TrainConfig(tasks=("TERRa",), task_max_len=(bad,)).validate()


def test_task_budgets_parse_and_draw_each_tasks_records(tiny_rsg_dir):  # noqa: F811
    """--task-max-train: per-task budgets beside the global --max-train-per-task (item 3 of
    "Twice the model per minute"); all = every record; one-line errors."""
    from mlx_rsg.train.config import parse_task_budgets
    from mlx_rsg.train.plan import load_task_data

    assert parse_task_budgets(("terra=all,rcb=3", "PARus=5")) == {
        "TERRa": None, "RCB": 3, "PARus": 5}  # fmt: skip
    for bad in ("terra", "terra=0", "nosuch=4", "terra=x", "lidirus=4", "terra=-1"):
        with pytest.raises(UserError, match="--task-max-train: .* is not TASK=N .* or TASK=all"):
            T.TrainConfig(tasks=("TERRa",), task_max_train=(bad,)).validate()
    cfg = tiny_train_config(max_train_per_task=4, task_max_train=("TERRa=all", "RCB=2"))
    assert [cfg.train_budget(t) for t in ("TERRa", "RCB", "PARus")] == [None, 2, 4]
    assert T.TrainConfig(max_train_per_task=0).train_budget("RCB") is None  # 0: no cap
    data = load_task_data(Path(tiny_rsg_dir), cfg, log=lambda m: None)
    everything = load_task_data(Path(tiny_rsg_dir), tiny_train_config(max_train_per_task=None),
                                log=lambda m: None)  # fmt: skip
    assert data["TERRa"].train == everything["TERRa"].train and len(data["TERRa"].train) > 4
    assert len(data["RCB"].train) == 2  # examples: one per RCB record, two per PARus record
    assert len(data["PARus"].train) == 2
    assert all(r in everything["RCB"].train for r in data["RCB"].train)


def test_task_max_len_auto_fits_each_task_and_predict_uses_it(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811, E501
    from mlx_rsg.data.info import unit_lengths
    from mlx_rsg.model.backbone import load_tokenizer
    from mlx_rsg.predict import load
    from mlx_rsg.train.plan import epoch_plan, load_task_data

    cfg = tiny_train_config(epochs=1, max_len=40, task_max_len=("auto", "terra=16"))
    T.train(tiny_model_dir, tiny_rsg_dir, tmp_path / "run", cfg, log=lambda m: None)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    got = dict(e.split("=") for e in info["classifier"]["task_max_len"])
    got = {t: int(n) for t, n in got.items()}
    assert info["train"]["task_max_len"] == ["auto", "terra=16"]  # as given: --resume compares it
    tok = load_tokenizer(tiny_model_dir)
    data = load_task_data(Path(tiny_rsg_dir), cfg, log=lambda m: None)
    want = {"TERRa": 16}
    for task in ("RCB", "PARus"):  # by hand: each split's 95th percentile, up to a multiple of
        fits = []  # 32; the longest of them, <= 40
        for records in (data[task].train, data[task].val, data[task].test):
            lengths = sorted(unit_lengths(task, records, tok))
            p95 = lengths[-(-95 * len(lengths) // 100) - 1]
            fits.append(32 * -(-p95 // 32))
        want[task] = min(40, max(fits))
    assert got == want
    batches = epoch_plan(data, tok, cfg, 0, got)
    assert max(b.tokens.shape[1] for b in batches if b.task == "TERRa") == 16  # truncated
    clf = load(tmp_path / "run")
    assert clf.model.cfg.max_len_for("LiDiRus") == 16  # the TERRa head's length
    assert clf.model.cfg.max_len_for("RCB") == want["RCB"]


def test_augment_trains_each_parus_record_mirrored_too_and_nothing_else(tiny_model_dir, tiny_rsg_dir):  # noqa: F811, E501
    from mlx_rsg.model.backbone import load_tokenizer
    from mlx_rsg.tasks import REGISTRY, make_units
    from mlx_rsg.train.plan import epoch_units, load_task_data

    tok = load_tokenizer(tiny_model_dir)
    plain = tiny_train_config(dev_per_task=1)
    data = load_task_data(Path(tiny_rsg_dir), plain, log=lambda m: None)
    lens = dict.fromkeys(plain.tasks, 64)
    before = epoch_units(data, tok, plain, 0, lens)
    after = epoch_units(data, tok, tiny_train_config(dev_per_task=1, augment=("parus",)), 0, lens)
    assert [e.unit for e in after["TERRa"]] == [e.unit for e in before["TERRa"]]
    n = len(before["PARus"])
    assert [e.unit for e in after["PARus"][:n]] == [e.unit for e in before["PARus"]]
    mirrored = [REGISTRY["PARus"].augmented(r)[0] for r in data["PARus"].train]
    assert [e.unit for e in after["PARus"][n:]] == make_units("PARus", mirrored, train=True)


def test_augment_names_a_trained_task_that_has_one():
    for bad, msg in ((("TERRa",), "'TERRa' is not a trained task with an augmentation"),
                     (("RuCoS",), "these have one: PARus")):  # fmt: skip
        with pytest.raises(UserError, match=msg):
            tiny_train_config(augment=bad).validate()
    with pytest.raises(UserError, match="these have one: none of --tasks"):
        tiny_train_config(tasks=("TERRa",), augment=("PARus",)).validate()
    tiny_train_config(augment=("parus",)).validate()


def test_auto_lengths_fit_every_split_that_is_scored(tiny_model_dir):  # noqa: F811
    """Fitted on train alone, RWSD's length cut half its (longer) val units: `auto` takes the
    longest of the splits' 95 % fits, LiDiRus counting for TERRa's head."""
    from mlx_rsg.model.backbone import load_tokenizer
    from mlx_rsg.tasks import parse_record
    from mlx_rsg.train.plan import TaskData, max_lens

    tok = load_tokenizer(tiny_model_dir)

    def terra(n_words, k=20):
        premise = " ".join(["кошка"] * n_words)
        return [parse_record("TERRa", {"premise": premise, "hypothesis": "да",
                                       "label": "entailment", "idx": i})
                for i in range(k)]  # fmt: skip

    def lidirus(n_words):
        return [parse_record("LiDiRus", {"sentence1": " ".join(["кошка"] * n_words),
                                         "sentence2": "да", "label": "entailment", "idx": i})
                for i in range(20)]  # fmt: skip

    cfg = tiny_train_config(tasks=("TERRa",), max_len=512, task_max_len=("auto",))
    short = {"TERRa": TaskData("TERRa", train=terra(10))}
    base = max_lens(cfg, short, tok)["TERRa"]
    for longer in ({"TERRa": TaskData("TERRa", train=terra(10), val=terra(100))},
                   {"TERRa": TaskData("TERRa", train=terra(10), test=terra(100))},
                   {"TERRa": TaskData("TERRa", train=terra(10), dev=terra(100))},
                   {**short, "LiDiRus": TaskData("LiDiRus", val=lidirus(100))}):  # fmt: skip
        assert max_lens(cfg, longer, tok)["TERRa"] >= base + 64
    # 1 long val unit in 20 is within the 5 % a fit may cut
    mixed = {"TERRa": TaskData("TERRa", train=terra(10), val=terra(10, 19) + terra(100, 1))}
    assert max_lens(cfg, mixed, tok)["TERRa"] == base


def test_a_non_finite_loss_stops_training_with_one_line(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    cfg = tiny_train_config(epochs=1, head_lr=1e38, warmup=0)  # finite, but it overflows
    with pytest.raises(UserError, match=r"the training loss is (nan|inf) at batch \d+ \(epoch 1"):
        T.train(tiny_model_dir, tiny_rsg_dir, tmp_path / "run", cfg, log=lambda m: None)
    res = _cli("train", str(tiny_model_dir), "--data", str(tiny_rsg_dir), "-o",
               str(tmp_path / "run2"), "--tasks", "terra", "--head-lr", "1e38", "--warmup", "0",
               "--freeze-layers", "1", "--max-len", "64")  # fmt: skip
    assert res.returncode == 2
    assert "the training loss is" in error_line(res.stderr)


@pytest.mark.parametrize(
    "cfg, trained",
    [
        (dict(method="mlp-adapter", freeze_layers=0), "adapters.block0.up.weight"),
        (dict(method="mlp-adapter", freeze_layers=1), "adapters.block1.up.weight"),
        (dict(method="lora", freeze_layers=0), "lora_b"),
    ],
)
def test_adapters_and_lora_train_through_the_loop(tiny_model_dir, tiny_rsg_dir, tmp_path,  # noqa: F811
                                                  cfg, trained):  # fmt: skip
    """The loop's two-group AdamW updates every method's own weights (MLP adapters on block 0
    once failed there: MLX rebuilt their all-digit keys as a list)."""
    run = tmp_path / "run"
    T.train(tiny_model_dir, tiny_rsg_dir, run, tiny_train_config(epochs=1, **cfg),
            log=lambda m: None)  # fmt: skip
    weights = mx.load(str(run / "trainable.safetensors"))
    names = [k for k in weights if trained in k]
    assert names, sorted(weights)
    # Zero-initialised (adapter up-projection, LoRA B): trained means no longer zero.
    assert all(float(mx.abs(weights[k]).max()) > 0 for k in names)
    assert all(np.isfinite(r["loss"]) for r in losses(run))


def test_head_only_tasks_train_their_heads_and_leave_the_blocks_alone(tiny_model_dir,  # noqa: F811
                                                                     tiny_rsg_dir, tmp_path):  # noqa: F811, E501
    """With every trained task --head-only (and no weight decay) the trainable block ends the
    run bit-identical to the base model's, while each head has learnt."""
    from mlx.utils import tree_flatten

    from mlx_rsg.model.backbone import load_backbone
    from mlx_rsg.predict import load

    run = tmp_path / "run"
    cfg = tiny_train_config(epochs=1, weight_decay=0.0, head_only=("terra", "RCB", "PARus"))
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, log=lambda m: None)
    before = dict(tree_flatten(load_backbone(tiny_model_dir).layers[1].parameters()))
    after = dict(tree_flatten(load(run).model.backbone.layers[1].parameters()))
    assert all(np.array_equal(np.array(before[n]), np.array(after[n])) for n in before)
    weights = mx.load(str(run / "trainable.safetensors"))
    assert all(float(mx.abs(weights[f"heads.{t}.weight"]).max()) > 0 for t in cfg.tasks)


def test_head_only_names_a_trained_task():
    with pytest.raises(UserError, match="--head-only: 'DaNetQA' is not one of the trained"):
        tiny_train_config(head_only=("DaNetQA",)).validate()
    assert tiny_train_config(head_only=("parus",)).head_only_tasks() == {"PARus"}


@pytest.mark.parametrize("method", ["heads", "freeze"])
def test_a_copied_backbone_keeps_only_the_blocks_a_feature_layer_run_reads(
    tiny_model_dir, tiny_rsg_dir, tmp_path, method  # noqa: F811
):
    """--copy-backbone of `heads --feature-layer 1`, or of `freeze --feature-layer 1` (block 1,
    the top block kept, trained): backbone/ holds block 1 alone (config and weights), and the
    run predicts from it exactly as from the whole model with its trained weights."""
    import shutil

    from mlx_rsg.data import load_split
    from mlx_rsg.model_files import weight_hashes
    from mlx_rsg.predict import load

    cfg = tiny_train_config(method=method, feature_layer=1, freeze_layers=0, epochs=1)
    run = tmp_path / "run"
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, copy_backbone=True, log=lambda m: None)
    config = json.loads((run / "backbone/config.json").read_text())
    assert config["num_hidden_layers"] == 1
    assert not [k for k in mx.load(str(run / "backbone/model.safetensors")) if ".layers.1." in k]
    trained = [k for k in mx.load(str(run / "trainable.safetensors")) if not k.startswith("heads")]
    assert all(".layers.0." in k or ".norm." in k for k in trained)
    assert bool(trained) == (method == "freeze")
    info = json.loads((run / "run.json").read_text())
    info["backbone"] = {"path": str(tiny_model_dir), "copied": False,
                        "sha256": weight_hashes(tiny_model_dir)}  # fmt: skip
    whole = tmp_path / "whole"
    shutil.copytree(run, whole, ignore=shutil.ignore_patterns("backbone"))
    (whole / "run.json").write_text(json.dumps(info))
    records = load_split(tiny_rsg_dir, "TERRa", "val")
    a, b = (np.asarray(load(r).predictions("TERRa", records)[2]) for r in (run, whole))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_copy_model_dir_without_weights_copies_the_rest(tmp_path):
    """`copy_model_dir(weights=False)` (quantize's and a fused backbone's directories, which
    write weights of their own): config, tokenizer and manifest copied; no shard, no index."""
    from mlx_rsg.model_files import copy_model_dir

    src = tmp_path / "src"
    src.mkdir()
    names = ["config.json", "tokenizer.json", "tokenizer.model", "mlx_rsg.json",
             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json", "notes.md"]  # fmt: skip
    for name in names:
        (src / name).write_text(name)
    copy_model_dir(src, tmp_path / "without", weights=False)
    copy_model_dir(src, tmp_path / "whole")
    assert sorted(p.name for p in (tmp_path / "without").iterdir()) == [
        "config.json", "mlx_rsg.json", "tokenizer.json", "tokenizer.model"]
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == sorted(names[:-1])
