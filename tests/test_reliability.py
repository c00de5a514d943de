"""Regressions of the hostile tester's catalogue (issue "Reliability"): each test failed before
its fix. Bad input ends in one line naming file, line and field, never in a silent wrong answer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from error_lines import error_line
from tiny_model import tiny_model_dir, tiny_rsg_dir, tiny_train_config  # noqa: F401

from mlx_rsg import train as T
from mlx_rsg.data import DataError, load_split
from mlx_rsg.errors import UserError


def _cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    code = "import sys; from mlx_rsg.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tiny_rsg_dir, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("rel") / "run"
    T.train(tiny_model_dir, tiny_rsg_dir, run, tiny_train_config(epochs=1), log=lambda m: None)
    return run


def test_duplicate_idx_in_a_split_names_both_lines(tiny_rsg_dir, tmp_path):  # noqa: F811
    shutil.copytree(tiny_rsg_dir, tmp_path / "rsg")
    f = tmp_path / "rsg" / "TERRa" / "val.jsonl"
    lines = f.read_text(encoding="utf-8").splitlines()
    second = json.loads(lines[4])
    second["idx"] = json.loads(lines[1])["idx"]
    lines[4] = json.dumps(second, ensure_ascii=False)
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{f}:5: field 'idx': 1 is also line 2's"):
        load_split(tmp_path / "rsg", "TERRa", "val")


def test_duplicate_idx_in_predict_input_is_refused(run_dir, tmp_path):
    rows = [{"idx": 7, "premise": "Кошка спит.", "hypothesis": "Кошка спит верно"},
            {"premise": "Собака спит.", "hypothesis": "Собака ложно"},  # numbered by line: 1
            {"idx": 7, "premise": "Дождь.", "hypothesis": "Дождь верно"}]  # fmt: skip
    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    res = _cli("predict", run_dir, "--task", "terra", "--input", f)
    assert res.returncode == 2, res.stderr
    assert error_line(res.stderr) == f"error: {f}:3: field 'idx': 7 is also line 1's"
    # The Python API: records are matched to predictions by idx, so two may not share one.
    from mlx_rsg.predict import load

    with pytest.raises(UserError, match="records 0 and 2 have the same idx 7"):
        load(run_dir).predict("TERRa", rows)
    assert len(load(run_dir).predict("TERRa", rows[:2])) == 2


def test_a_tokenizer_larger_than_the_embedding_is_refused(tiny_model_dir, tiny_rsg_dir,  # noqa: F811
                                                          run_dir, tmp_path):  # fmt: skip
    small = tmp_path / "small-vocab"
    shutil.copytree(tiny_model_dir, small)
    weights = mx.load(str(small / "model.safetensors"))
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"][:300]
    mx.save_safetensors(str(small / "model.safetensors"), weights)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 300}))
    want = rf"{small}: the tokenizer has \d+ tokens but the embedding only 300 rows"
    res = _cli("convert", small, "-o", tmp_path / "converted")
    assert res.returncode == 2 and "the embedding only 300 rows" in res.stderr, res.stderr
    assert not (tmp_path / "converted").exists()
    with pytest.raises(UserError, match=want):
        T.train(small, tiny_rsg_dir, tmp_path / "run", tiny_train_config(epochs=1),
                log=lambda m: None)  # fmt: skip
    assert not (tmp_path / "run").exists()
    from mlx_rsg.predict import load

    info = json.loads((run_dir / "run.json").read_text())
    moved = tmp_path / "run-small"
    shutil.copytree(run_dir, moved)
    info["backbone"]["path"] = str(small)
    (moved / "run.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=want):
        load(moved, verify=False)


def test_two_caches_in_one_cache_dir_keep_their_own_rows(tiny_model_dir, tmp_path):  # noqa: F811
    """Two trains sharing --cache-dir used to write one prefix.f32 and read each other's rows."""
    import numpy as np

    from mlx_rsg.model.backbone import load_backbone
    from mlx_rsg.model.batching import Batch
    from mlx_rsg.model.classifier import RSGClassifier
    from mlx_rsg.model.config import ClassifierConfig
    from mlx_rsg.model.features import PrefixCache

    bb = load_backbone(tiny_model_dir)
    model = RSGClassifier(bb, ClassifierConfig(method="freeze", freeze_layers=1), {"TERRa": 2})

    def batch(seed: int) -> Batch:
        tokens = mx.array(np.random.default_rng(seed).integers(3, 300, (2, 6)), dtype=mx.int32)
        return Batch(tokens=tokens, lengths=mx.array([6, 6]), head="TERRa", task="TERRa",
                     labels=mx.array([0, 1]), keys=[(0,), (1,)],
                     ids=[("TERRa", (0,)), ("TERRa", (1,))])  # fmt: skip

    a, b = PrefixCache(model, tmp_path), PrefixCache(model, tmp_path)  # the same ids, other rows
    want_a, want_b = a.prefix(batch(1)), b.prefix(batch(2))
    assert a.path != b.path and len(list(tmp_path.iterdir())) == 2
    assert mx.array_equal(a.prefix(batch(1)), want_a) and mx.array_equal(b.prefix(batch(2)), want_b)
    assert not mx.allclose(want_a, want_b)
    del a, b
    import gc

    gc.collect()
    assert list(tmp_path.iterdir()) == []  # each cache removes its file


def test_one_writer_per_run_directory(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    from mlx_rsg.run import run_lock

    run = tmp_path / "run"
    with run_lock(run):  # as a first `train -o run` holds it
        with pytest.raises(UserError, match=rf"^{run}: another process \(pid \d+\) is writing"):
            T.train(tiny_model_dir, tiny_rsg_dir, run, tiny_train_config(epochs=1),
                    log=lambda m: None)  # fmt: skip
        assert not run.exists()
        held = subprocess.run(
            [sys.executable, "-c", "import sys; from mlx_rsg.run import run_lock\n"
             "with run_lock(sys.argv[1]): pass", str(run)], capture_output=True, text=True,
        )  # fmt: skip
        assert held.returncode == 1 and "is writing to this run directory" in held.stderr
    T.train(tiny_model_dir, tiny_rsg_dir, run, tiny_train_config(epochs=1), log=lambda m: None)
    assert (run / "run.json").is_file() and not any(p.name == ".lock" for p in run.iterdir())


def test_predict_input_errors_name_the_file_and_line(run_dir, fixture_root, tmp_path):
    """They said `<input>:0`: PARus records given as TERRa ones."""
    f = tmp_path / "p.jsonl"
    f.write_text("".join((fixture_root / "PARus" / "test.jsonl").read_text("utf-8")
                         .splitlines(keepends=True)[:2]), "utf-8")  # fmt: skip
    res = _cli("predict", run_dir, "--task", "terra", "--input", f)
    assert res.returncode == 2
    assert error_line(res.stderr) == f"error: {f}:1: field 'hypothesis': missing"
    res = _cli("predict", run_dir, "--task", "nosuch", "--input", f)
    assert res.returncode == 2 and "--task: 'nosuch' is not one of LiDiRus, RCB" in res.stderr


def test_a_split_that_is_a_directory_is_an_error(fixture_root, tmp_path):
    shutil.copytree(fixture_root / "TERRa", tmp_path / "TERRa")
    (tmp_path / "TERRa" / "val.jsonl").unlink()
    (tmp_path / "TERRa" / "val.jsonl").mkdir()
    with pytest.raises(DataError, match=r"TERRa/val\.jsonl: a directory where a data file is"):
        load_split(tmp_path, "TERRa", "train")


def test_bench_refuses_unknown_splits_and_negative_counts(run_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    for flags, want in [
        (["--split", "validation"], "Invalid value for '--split'"),
        (["--latency-samples", "-3"], "'--latency-samples': must be in [0, 2147483647], got -3"),
        (["--warmup", "-1"], "'--warmup': must be in [0, 2147483647], got -1"),
    ]:
        res = _cli("bench", run_dir, "--data", tiny_rsg_dir, "-o", tmp_path / "b", *flags)
        assert res.returncode == 2 and want in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and not (tmp_path / "b").exists()


def test_metrics_json_is_strict_json_without_a_val_split(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    data = tmp_path / "rsg"
    shutil.copytree(tiny_rsg_dir, data)
    for task in ("TERRa", "RCB", "PARus"):
        (data / task / "val.jsonl").unlink()
    T.train(tiny_model_dir, data, tmp_path / "run", tiny_train_config(epochs=1, tasks=("RCB",)),
            log=lambda m: None)  # fmt: skip
    text = (tmp_path / "run" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert metrics["history"][0]["score"] is None


def test_force_replaces_only_what_the_command_wrote(run_dir, tiny_model_dir, tiny_rsg_dir,  # noqa: F811
                                                    tmp_path):  # fmt: skip
    """`-o X --force` of convert, quantize and bench used to delete any X: a user's folder, the
    model, the data."""
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("years of work")
    cases = [
        (["convert", tiny_model_dir, "-o", foreign, "--force"], "no mlx_rsg.json"),
        (["quantize", run_dir, "--bits", "8", "-o", foreign, "--force"], "no mlx_rsg.json"),
        (["quantize", run_dir, "--bits", "8", "-o", run_dir.parent, "--force"], "holds the input"),
        (["bench", run_dir, "--data", tiny_rsg_dir, "-o", foreign, "--force"], "no bench.json"),
        (["bench", run_dir, "--data", tiny_rsg_dir, "-o", tiny_rsg_dir, "--force"],
         "holds the input"),
    ]
    for args, want in cases:
        res = _cli(*args)
        assert res.returncode == 2 and want in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr
    assert (foreign / "thesis.txt").read_text() == "years of work"
    assert (run_dir / "run.json").is_file() and (Path(tiny_rsg_dir) / "TERRa").is_dir()
    # what the command wrote itself it replaces
    out = tmp_path / "q8"
    assert _cli("quantize", run_dir, "--bits", "8", "-o", out).returncode == 0
    assert _cli("quantize", run_dir, "--bits", "8", "-o", out, "--force").returncode == 0


def _copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


def test_damaged_run_files_are_one_line(run_dir, tmp_path):
    # a truncated trainable.safetensors: its header whole, half of its data
    bad = _copy_run(run_dir, tmp_path / "trunc")
    w = bad / "trainable.safetensors"
    data = w.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    w.write_bytes(data[: header_end + (len(data) - header_end) // 2])
    res = _cli("predict", bad, "--task", "terra", "--input", "-")
    assert res.returncode == 2
    assert error_line(res.stderr).startswith(f"error: {w}: truncated or corrupt safetensors file (")
    # run.json with fields of the wrong type
    cases = [("heads", "TERRa", "heads"), ("heads", {"TERRa": "2"}, "heads.TERRa"),
             ("classifier", [], "classifier"), ("version", "1", "version"),
             ("version", 1, "version"), ("calibration", [], "calibration"),
             ("calibration", {"TERRa": {"offsets": [0.5]}}, "calibration.TERRa"),
             ("calibration", {"RWSD": {"offsets": [0, 1]}}, "calibration.RWSD"),
             ("calibration", {"LiDiRus": {"offsets": [0, "x"]}},
              "calibration.LiDiRus")]  # fmt: skip
    for i, (key, value, field) in enumerate(cases):
        bad = _copy_run(run_dir, tmp_path / f"types-{i}")
        info = json.loads((bad / "run.json").read_text())
        (bad / "run.json").write_text(json.dumps({**info, key: value}))
        res = _cli("predict", bad, "--task", "terra", "--input", "-")
        assert res.returncode == 2 and f"run.json: field '{field}'" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_hostile_input_files_are_one_line(run_dir, tmp_path):
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 200_000 + "]" * 200_000 + "\n")
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"premise": "caf\xe9", "hypothesis": "x"}\n'.encode("latin-1"))
    for f, want in [(deep, f"{deep}:1: invalid JSON: nested too deeply"),
                    (latin, f"{latin}:1: not UTF-8")]:  # fmt: skip
        res = _cli("predict", run_dir, "--task", "terra", "--input", f)
        assert res.returncode == 2 and want in res.stderr and "Traceback" not in res.stderr
    closed = subprocess.run([sys.executable, "-c", "import sys; from mlx_rsg.cli import main; "
                             "main(sys.argv[1:])", "predict", str(run_dir), "--task", "terra",
                             "--input", "-"], stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, close_fds=True)  # fmt: skip
    assert closed.returncode == 0 and closed.stdout == ""  # empty stdin: nothing to predict
    res = subprocess.run(f"{sys.executable} -c 'import sys; from mlx_rsg.cli import main; "
                         f"main(sys.argv[1:])' predict {run_dir} --task terra --input - <&-",
                         shell=True, capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "--input -: standard input is closed" in res.stderr


def test_a_torn_last_losses_line_does_not_stop_resume(tiny_model_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    cfg = tiny_train_config(epochs=2, checkpoint_every=2)
    run = tmp_path / "run"
    T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, stop_after_batches=5, log=lambda m: None)
    with open(run / "losses.jsonl", "a") as f:
        f.write('{"batch": 5, "step": 2, "ep')  # the power went off mid-line
    orphan = run / "checkpoints" / "step-00000001-batch-00000002"  # a kill during its removal
    orphan.mkdir()
    metrics = T.train(tiny_model_dir, tiny_rsg_dir, run, cfg, resume=True, log=lambda m: None)
    assert metrics["best"] is not None
    ckpts = [p.name for p in (run / "checkpoints").iterdir() if p.is_dir()]
    assert ckpts == [(run / "checkpoints" / "LAST").read_text().strip()]
    rows = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in rows] == list(range(len(rows)))


def test_convert_names_a_config_field_of_the_wrong_type(tiny_model_dir, tmp_path):  # noqa: F811
    for key, value in [("model_type", ["gemma3_text"]), ("hidden_size", "32")]:
        src = tmp_path / f"src-{key}"
        shutil.copytree(tiny_model_dir, src)
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, key: value}))
        res = _cli("convert", src, "-o", tmp_path / f"out-{key}")
        assert res.returncode == 2 and f"config.json: field '{key}': expected" in res.stderr, (
            res.stderr
        )
        assert not (tmp_path / f"out-{key}").exists()


def test_a_read_only_output_is_one_line(run_dir, tmp_path):
    """Writing into a directory this process may not write to: one line naming the output.
    Root writes through permissions, so as root the directory is made read-only by a bind
    mount in a mount namespace of the command's own (`unshare -m`)."""
    import os
    import shlex

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    argv = ["quantize", run_dir, "--bits", "8", "-o", ro / "q8"]
    try:
        if not os.access(ro, os.W_OK):
            res, reason = _cli(*argv), "Permission denied"
        elif shutil.which("unshare") and _can_bind_read_only(tmp_path):
            code = "import sys; from mlx_rsg.cli import main; main(sys.argv[1:])"
            line = shlex.join([sys.executable, "-c", code, *map(str, argv)])
            mount = f"mount --bind -o ro {shlex.quote(str(ro))} {shlex.quote(str(ro))}"
            res = subprocess.run(["unshare", "-m", "sh", "-c", f"{mount} && exec {line}"],
                                 capture_output=True, text=True)  # fmt: skip
            reason = "Read-only file system"
        else:
            pytest.skip("root, and no mount namespace to make a directory read-only in")
        assert res.returncode == 2, res.stderr
        assert res.stderr.splitlines()[-1] == f"error: {ro / 'q8'}: {reason}", res.stderr
        assert "Traceback" not in res.stderr and not (ro / "q8").exists()
    finally:
        ro.chmod(0o755)


def _can_bind_read_only(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    out = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {probe} {probe}"],
                         capture_output=True)  # fmt: skip
    return out.returncode == 0


# (command line with D = an existing directory, what the command calls first that may meet the
# disk: module, attribute) -- every command of the CLI
OS_ERROR_SITES = [
    (["data", "info", "D"], "mlx_rsg.data.info", "summary"),
    (["data", "download", "D/rsg"], "mlx_rsg.data.info", "download"),
    (["info"], "mlx_rsg.accel.blas", "describe"),
    (["convert", "D", "-o", "D/out"], "mlx_rsg.convert.hf", "convert"),
    (["train", "D", "--data", "D", "-o", "D/run"], "mlx_rsg.train.loop", "train"),
    (["predict", "D", "--task", "terra", "--input", "-"], "mlx_rsg.predict", "read_records"),
    (["quantize", "D", "--bits", "8", "-o", "D/q8"], "mlx_rsg.quant.quantize", "quantize"),
    (["bench", "D", "--data", "D"], "mlx_rsg.bench.measure", "bench"),
    (["quickstart", "--data", "D"], "mlx_rsg.quickstart", "quickstart"),
    (["serve", "D"], "mlx_rsg.serve.server", "serve"),
    (["launch", "-n", "1", "--", "true"], "mlx_rsg.launch", "launch"),
]


@pytest.mark.parametrize("argv, module, name", OS_ERROR_SITES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)  # fmt: skip
def test_an_os_error_anywhere_is_one_line(argv, module, name, monkeypatch, tmp_path):
    """A full or read-only disk (also as root, where permissions cannot be tested): every
    command's OSError ends as `error: FILE: reason`, exit 2."""
    import errno
    import importlib

    from click.testing import CliRunner

    from mlx_rsg.accel import memory
    from mlx_rsg.cli import main

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.json"))

    monkeypatch.setattr(importlib.import_module(module), name, full)
    monkeypatch.setattr(memory, "keep_freed_buffers", lambda: None)  # no process-wide setting
    res = CliRunner().invoke(main, [a.replace("D", str(tmp_path)) for a in argv])
    assert res.exit_code == 2, res.output
    assert res.output.splitlines()[-1] == (
        f"error: {tmp_path / 'out' / 'x.json'}: No space left on device"
    )


def test_every_command_meets_a_full_disk():
    from mlx_rsg.cli import data_group, main

    tested = {tuple(argv[:2]) if argv[0] == "data" else argv[0] for argv, _, _ in OS_ERROR_SITES}
    assert tested == set(main.commands) - {"data"} | {("data", c) for c in data_group.commands}


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)  # fmt: skip
    return int(done.stdout)


KILL_BETWEEN_RENAMES = """
import os, pathlib, signal, sys
from mlx_rsg.io import atomic_dir
real = pathlib.Path.rename
def rename(self, target):
    out = real(self, target)
    if ".old-" in str(target):  # OUT moved aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
    return out
pathlib.Path.rename = rename
with atomic_dir(sys.argv[1], force=True) as tmp:
    (tmp / "mlx_rsg.json").write_text("new")
"""


def test_a_kill_during_the_force_swap_is_recovered(tmp_path):
    from mlx_rsg.io import atomic_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "mlx_rsg.json").write_text("old")
    child = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(out)])
    assert child.returncode == -9
    assert not out.exists() and len(list(tmp_path.glob(".out.old-*"))) == 1  # both hidden
    with atomic_dir(out, force=True) as tmp:  # the next run of the command
        assert (out / "mlx_rsg.json").read_text() == "old"  # OUT is back before anything else
        (tmp / "mlx_rsg.json").write_text("newer")
    assert (out / "mlx_rsg.json").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no stray temporaries


def test_kill_9_leftovers_are_removed_by_the_next_run(run_dir, tiny_model_dir, tmp_path):  # noqa: F811
    """What a kill -9 left (hidden temporaries of quantize / convert, prefix cache files) goes
    with the next run of the same command; a temporary of a process that still runs stays."""
    import os

    import numpy as np
    from test_gguf import tiny_weights, write_tiny_gguf

    dead = _dead_pid()
    stray = [tmp_path / f".q8.tmp-{dead}-x1", tmp_path / f".model.gguf-{dead}-x2"]
    for p in stray:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"\0" * 1000)
    alive = tmp_path / f".q8.tmp-{os.getpid()}-inuse"
    alive.mkdir()
    assert _cli("quantize", run_dir, "--bits", "8", "-o", tmp_path / "q8").returncode == 0
    gguf = tmp_path / "src" / "tiny.gguf"
    gguf.parent.mkdir()
    write_tiny_gguf(gguf, tiny_weights(np.random.default_rng(0)))
    assert _cli("convert", gguf, "-o", tmp_path / "model").returncode == 0
    assert not any(p.exists() for p in stray) and alive.exists()

    from mlx_rsg.model.backbone import load_backbone
    from mlx_rsg.model.classifier import RSGClassifier
    from mlx_rsg.model.config import ClassifierConfig
    from mlx_rsg.model.features import PrefixCache

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"prefix-{dead}-abc.f32").write_bytes(b"\0" * 64)
    model = RSGClassifier(load_backbone(tiny_model_dir), ClassifierConfig(freeze_layers=1),
                          {"TERRa": 2})  # fmt: skip
    kept = PrefixCache(model, cache)
    assert [p.name for p in cache.iterdir()] == [kept.path.name]
    assert kept.path.name.startswith(f"prefix-{os.getpid()}-")


def test_bench_refuses_a_variant_of_another_model(run_dir, tiny_rsg_dir, tmp_path):  # noqa: F811
    from tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "wider", hidden=64)
    run = tmp_path / "other-run"
    T.train(other, tiny_rsg_dir, run, tiny_train_config(epochs=1), log=lambda m: None)
    res = _cli("bench", run_dir, run, "--data", tiny_rsg_dir, "-o", tmp_path / "b")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{run}: its backbone (model_type gemma3_text, hidden_size 64," in res.stderr
    assert "not a variant of the same model" in res.stderr and not (tmp_path / "b").exists()


KILL_QUANTIZE = """
import os, signal, sys
import mlx_rsg.quant.quantize as Q
def killed(*a, **k):  # the weights are written, the command is not done
    os.kill(os.getpid(), signal.SIGKILL)
Q.write_manifest = killed
Q.quantize(sys.argv[1], sys.argv[2], bits=8, force=True, log=lambda m: None)
"""


def test_quantize_killed_mid_write_then_rerun(run_dir, tmp_path):
    out = tmp_path / "q8"
    assert _cli("quantize", run_dir, "--bits", "8", "-o", out).returncode == 0
    before = sorted(p.name for p in out.iterdir())
    child = subprocess.run([sys.executable, "-c", KILL_QUANTIZE, str(run_dir), str(out)])
    assert child.returncode == -9
    assert len(list(tmp_path.glob(".q8.tmp-*"))) == 1  # the killed run's half-written copy
    assert sorted(p.name for p in out.iterdir()) == before  # OUT untouched
    assert _cli("quantize", run_dir, "--bits", "8", "-o", out, "--force").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8"]  # nothing stray


# The catalogue as a table: (command line, error substring). {run}, {model}, {data}, {tmp} are
# filled in; every case must exit 2 with one `error:` line, no traceback, and leave nothing.
CATALOGUE = [
    ("train {model} --data {data} -o {tmp}/r --checkpoint-every 0", "'--checkpoint-every': must"),
    ("train {model} --data {data} -o {tmp}/r --seed -1", "'--seed': must be in [0, 2147483647]"),
    ("train {model} --data {data} -o {tmp}/r --max-negatives -1", "'--max-negatives': must be"),
    ("train {model} --data {data} -o {tmp}/r --head-lr inf",
     "Invalid value for '--head-lr': 'inf' is not a finite number (see mlx-rsg train --help)"),
    ("train {model} --data {data} -o {tmp}/r --head-lr 0", "'--head-lr': must be > 0, got 0"),
    ("train {model} --data {data} -o {tmp}/r --task-max-len terra=0", "--task-max-len:"),
    ("train {model} --data {data} -o {data} --tasks terra --force", "holds the input"),
    ("train {model} --data {data} -o {model} --tasks terra --force", "holds the input"),
    ("bench {run} --data {data} -o {tmp}/b --latency-samples -3", "'--latency-samples': must"),
    ("bench {run} --data {data} -o {tmp}/b --seed -1", "'--seed': must be in [0, 2147483647]"),
    ("bench {run} --data {data} -o {data} --force", "holds the input"),
    ("predict {run} --task terra --input {tmp}/missing.jsonl", "missing.jsonl: no such file"),
    ("predict {run} --task nosuch --input {tmp}/missing.jsonl", "--task: 'nosuch' is not one"),
    ("quantize {run} --bits 8 -o {run}", "OUT must differ from the source"),
    ("quantize {run} --recipe q4-gptq -o {tmp}/q", "give --calib-data"),
    ("convert {tmp}/nowhere -o {tmp}/c",
     "nowhere: no such file or directory (SOURCE is gemma-3-270m, a .gguf file, a Hugging Face"),
    # issue 27, item 2: a lone surrogate escaped in JSON is no text a tokenizer can encode
    ("predict {run} --task terra --input {tmp}/surrogate.jsonl",
     "surrogate.jsonl:1: field 'premise': a lone surrogate U+D800 at character 1 is not text"),
    # item 3: spans that need more than --max-len tokens
    ("train {model} --data {fixtures} -o {tmp}/r --tasks russe,rwsd --max-len 4",
     "record idx 0: its marked words alone need"),
    # item 5: train shares the model checks of convert and quantize
    ("train {tmp}/layers-two --data {data} -o {tmp}/r",
     "config.json: field 'num_hidden_layers': expected a positive integer, got \"two\""),
    ("train {tmp}/truncated --data {data} -o {tmp}/r --tasks terra",
     "model.safetensors: truncated or corrupt safetensors file"),
    ("train {tmp}/model-file --data {data} -o {tmp}/r --tasks terra",
     "model-file: cannot load the model:"),
    # item 9: a task name bench does not know
    ("bench {run} --data {data} -o {tmp}/b --fixture-tasks bogus",
     "--fixture-tasks: 'bogus' is not a task"),
    # item 6: run.json with a field of the wrong type
    ("predict {tmp}/badrun --task terra --input {tmp}/good.jsonl",
     "run.json: field 'classifier.freeze_layers': expected an integer or null, got \"x\""),
]


def _hostile_inputs(tmp: Path, run: Path) -> None:
    """The files the catalogue's cases read: a record with a lone surrogate (escaped, as JSON
    allows), a copy of the run whose run.json has a mistyped field."""
    (tmp / "surrogate.jsonl").write_text('{"idx": 0, "premise": "a\\ud800b", "hypothesis": "c"}\n')
    (tmp / "good.jsonl").write_text('{"idx": 0, "premise": "a", "hypothesis": "b"}\n')
    shutil.copytree(run, tmp / "badrun")
    model = Path(json.loads((run / "run.json").read_text())["backbone"]["path"])
    for name in ("layers-two", "truncated", "model-file"):
        shutil.copytree(model, tmp / name)
    config = json.loads((model / "config.json").read_text())
    (tmp / "layers-two" / "config.json").write_text(json.dumps({**config,
                                                                "num_hidden_layers": "two"}))
    (tmp / "model-file" / "config.json").write_text(json.dumps({**config,
                                                                "model_file": "evil.py"}))
    (tmp / "model-file" / "evil.py").write_text("raise SystemExit('ran')\n")
    weights = tmp / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    info = json.loads((tmp / "badrun" / "run.json").read_text())
    info["classifier"]["freeze_layers"] = "x"
    (tmp / "badrun" / "run.json").write_text(json.dumps(info))


@pytest.mark.parametrize("line, want", CATALOGUE)
def test_the_catalogue_holds(line, want, run_dir, tiny_model_dir, tiny_rsg_dir,  # noqa: F811
                             fixture_root, tmp_path):  # fmt: skip
    _hostile_inputs(tmp_path, run_dir)
    args = line.format(run=run_dir, model=tiny_model_dir, data=tiny_rsg_dir, tmp=tmp_path,
                       fixtures=fixture_root).split()  # fmt: skip
    watched = [tmp_path, Path(tiny_rsg_dir), Path(tiny_model_dir), run_dir]
    before = {d: sorted(p.name for p in d.iterdir()) for d in watched}
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    assert want in error_line(res.stderr), res.stderr
    assert {d: sorted(p.name for p in d.iterdir()) for d in watched} == before


KILL_CONVERT = """
import os, signal, sys
from pathlib import Path
import mlx_rsg.convert.hf as C
def killed(path, model, **k):  # half the weights written
    (Path(path) / "model.safetensors").write_bytes(b"partial")
    os.kill(os.getpid(), signal.SIGKILL)
C.save_model = killed
C.convert(sys.argv[1], sys.argv[2])
"""


def test_convert_killed_mid_write_then_rerun(tiny_model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "model"
    child = subprocess.run([sys.executable, "-c", KILL_CONVERT, str(tiny_model_dir), str(out)])
    assert child.returncode == -9
    assert not out.exists() and len(list(tmp_path.glob(".model.tmp-*"))) == 1
    assert _cli("convert", tiny_model_dir, "-o", out).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_data_download_force_replaces_only_data(tmp_path, monkeypatch, fixture_root):
    import huggingface_hub
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def fake_snapshot(repo_id, **kw):
        shutil.copytree(fixture_root / "TERRa", Path(kw["local_dir"]) / "TERRa")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    res = CliRunner().invoke(main, ["data", "download", str(mine), "--force"])
    assert res.exit_code == 2 and "holds no Russian SuperGLUE data" in res.output
    assert (mine / "notes.txt").read_text() == "keep"
    out = tmp_path / "rsg"
    assert CliRunner().invoke(main, ["data", "download", str(out)]).exit_code == 0
    assert CliRunner().invoke(main, ["data", "download", str(out), "--force"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["TERRa"]


def _number_options():
    """(command path, option, kind, bounds) for every int and float option of every command,
    subcommands of groups (`data info`) included; an option with another type fails here."""
    import click

    from mlx_rsg.cli import main

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    found = []
    for path, cmd in walk(main, []):
        for p in cmd.params:
            if isinstance(p, click.Option) and p.type.name in ("integer", "float", "integer range",
                                                                "float range"):  # fmt: skip
                assert hasattr(p.type, "number_bounds"), (path, p.opts[0], p.type)  # bounded
                found.append((path, p.opts[0], p.type.number_kind, p.type.number_bounds))
    return found


def _outside(kind, bounds):
    """Values just outside `bounds`, and the ones no number option can mean."""
    from mlx_rsg.options import INT_MAX

    values = ["x"]
    if kind is float:
        values += ["inf", "-inf", "nan", "1e999"]
    else:
        values += ["1.5", str(INT_MAX + 1), str(2**70)]
    if bounds.low is not None:
        values.append(str(bounds.low if bounds.low_open else
                          (bounds.low - 1 if kind is int else bounds.low - 0.5)))  # fmt: skip
    if bounds.high is not None:
        values.append(str(bounds.high if bounds.high_open else bounds.high + 1))
    return values


def test_every_number_option_refuses_what_it_cannot_mean(tmp_path, monkeypatch):
    """Issue 27: the standing catalogue of numbers. Every int and float option of every command
    declares its bounds; a value outside them, inf, nan, a non-number or an integer past 32 bits
    is one `error:` line naming the option, exit 2, before any work (nothing written)."""
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    monkeypatch.chdir(tmp_path)
    cases = _number_options()
    names = {(" ".join(c[0]), c[1]) for c in cases}
    assert {("serve", "--batch-window-ms"), ("train", "--lr"), ("train", "--seed"),
            ("predict", "--batch-size"), ("data info", "--max-len"), ("bench", "--warmup"),
            ("serve", "--port")} <= names  # fmt: skip
    count = 0
    for path, option, kind, bounds in cases:
        for value in _outside(kind, bounds):
            res = CliRunner().invoke(main, [*path, option, value])
            assert res.exit_code == 2, (path, option, value, res.output)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: Invalid value for "
                                                           f"'{option}': "), res.stderr
            assert lines[0].endswith(f"(see mlx-rsg {' '.join(path)} --help)"), lines
            count += 1
    assert list(tmp_path.iterdir()) == []
    assert count >= 201  # docs/layout.md counts these cases


def test_the_number_errors_say_what_is_wrong():
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    for args, want in [
        (["train", "--head-lr", "inf"], "'inf' is not a finite number"),
        (["train", "--head-lr", "x"], "'x' is not a number"),
        (["train", "--epochs", "1.5"], "'1.5' is not an integer"),
        (["train", "--seed", str(2**70)], f"must be in [0, 2147483647], got {2**70}"),
        (["train", "--dropout", "1"], "must be in [0, 1), got 1"),
        (["serve", "--batch-window-ms", "1e300"], "must be in [0, 60000], got 1e300"),
        (["serve", "--port", "65536"], "must be in [0, 65535], got 65536"),
        (["predict", "--batch-size", "0"], "must be in [1, 2147483647], got 0"),
    ]:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2
        assert res.stderr.strip() == (f"error: Invalid value for '{args[1]}': {want} (see "
                                      f"mlx-rsg {args[0]} --help)"), res.stderr  # fmt: skip


def test_configs_made_in_python_are_held_to_the_same_bounds():
    """The library applies the bounds the CLI parses with (TrainConfig.validate, bench, serve)."""
    import dataclasses

    from mlx_rsg.bench.config import BenchConfig
    from mlx_rsg.options import check_bounds
    from mlx_rsg.serve.config import ServeConfig
    from mlx_rsg.train import TrainConfig

    checked = 0
    for cls in (TrainConfig, BenchConfig, ServeConfig):
        for f in dataclasses.fields(cls):
            bounds = f.metadata.get("bounds")
            if bounds is None:
                continue
            bad = float("nan") if bounds.low is None else bounds.low - 1
            with pytest.raises(UserError) as e:
                check_bounds(cls(**{f.name: bad}))
            assert str(e.value).startswith(f"--{f.name.replace('_', '-')}: "), e.value
            checked += 1
    assert checked >= 30


def test_the_python_api_names_what_it_expected(run_dir):
    """Issue 27, item 8: records of the wrong shape, or no task name, are one clear UserError
    (they were AttributeError / TypeError from deep inside)."""
    from mlx_rsg.errors import UserError
    from mlx_rsg.predict import load

    clf = load(run_dir)
    good = {"premise": "Мама мыла раму.", "hypothesis": "Рама чистая."}
    cases = [
        ("terra", good, "records: expected a list of records, got dict (one record: wrap it in "
                        "a list)"),
        ("terra", "text", "records: expected a list of records, got str"),
        ("terra", None, "records: expected a list of records, got NoneType"),
        ("terra", [good, "text"], "record 1: expected a dict in the official JSON format (or a "
                                  "record object), got str"),
        ("terra", [[good]], "record 0: expected a dict in the official JSON format (or a record "
                            "object), got list"),
        (None, [good], "task: expected a task name such as 'TERRa', got NoneType"),
    ]
    for task, records, want in cases:
        with pytest.raises(UserError) as e:
            clf.predict(task, records)
        assert str(e.value) == want
    assert [r["idx"] for r in clf.predict("terra", (good, good))] == [0, 1]  # a tuple is fine


def test_a_full_disk_names_what_could_not_be_written(tmp_path, monkeypatch):
    """Issue 27, item 7: shutil names the *source* of a failed copy (filename) and the
    destination second (filename2); a write on an open file names nothing. The error line names
    what could not be written."""
    import errno
    import os as _os

    from mlx_rsg.cli import os_error_line
    from mlx_rsg.io import atomic_file

    full = OSError(errno.ENOSPC, "No space left on device", "/src/model.safetensors", None,
                   "/out/model.safetensors")  # fmt: skip
    assert os_error_line(full) == "/out/model.safetensors: No space left on device"
    denied = OSError(errno.EACCES, "Permission denied", "/src/a", None, "/out/a")
    assert os_error_line(denied) == "/src/a -> /out/a: Permission denied"

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_os, "fsync", no_space)
    out = tmp_path / "run.json"
    with pytest.raises(OSError) as e, atomic_file(out) as f:
        f.write("{}")
    assert os_error_line(e.value) == f"{out}: No space left on device"
    assert list(tmp_path.iterdir()) == []  # nothing half-written left


def test_quantize_times_its_paths_on_a_model_of_odd_widths(tiny_model_dir, tmp_path):  # noqa: F811
    """Issue 27, item 4: with the fast paths decided by timing (not the tests' forced `all`),
    4-bit on the tiny model (hidden 32, group 64: only the MLP's down projection is quantized)
    timed its quantized path at hidden and died in MLX; now it finishes, no traceback."""
    import os

    env = {**os.environ, "MLX_RSG_FAST_PATHS": "auto", "MLX_RSG_CACHE": str(tmp_path / "cache")}
    res = _cli("quantize", tiny_model_dir, "--bits", "4", "-o", tmp_path / "q4", env=env)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "quantized 2 modules (q4: 4-bit, group 64;" in res.stderr
    assert (tmp_path / "q4" / "config.json").is_file()


# The standing catalogue of text (issue 27): each option below gets each of these values; "\udcff"
# is what Python makes of a byte of argv that is not UTF-8 (a NUL cannot be in argv: records
# carry it, in test_serve's catalogue).
HOSTILE_TEXT = ["", " , ,", "\u2028", "\udcff", "x" * 100_000]
TEXT_OPTIONS = [
    ("train {model} --data {data} -o {out}", "--tasks"),
    ("train {model} --data {data} -o {out}", "--task-max-len"),
    ("train {model} --data {data} -o {out}", "--task-max-train"),
    ("train {model} --data {data} -o {out} --method lora", "--lora-targets"),
    ("train {model} --data {data} -o {out}", "--cache-dir"),
    ("train {model} -o {out}", "--data"),
    ("predict {run} --input {good}", "--task"),
    ("predict {run} --task terra", "--input"),
    ("predict {run} --split val", "--data"),
    ("predict {run} --data {data} --split val", "--tasks"),
    ("bench {run} --data {data} -o {out}", "--fixture-tasks"),
    ("bench {run} -o {out}", "--data"),
    ("quantize {run} -o {out}", "--recipe"),
    ("quantize {run} --recipe q4-gptq -o {out}", "--calib-data"),
    ("data info", "--model"),
]


def test_every_text_option_survives_hostile_text(run_dir, tiny_model_dir, tiny_rsg_dir,  # noqa: F811
                                                 tmp_path, monkeypatch):  # fmt: skip
    """Each case ends in exit 2 with exactly one `error:` line (the value refused, or, where it
    is a fine value, the existing OUT refused: no case starts work), no traceback, and no input
    or output touched."""
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    good = tmp_path / "good.jsonl"
    good.write_text('{"idx": 0, "premise": "a", "hypothesis": "b"}\n')
    monkeypatch.chdir(tmp_path)
    watched = [tmp_path, out, Path(tiny_rsg_dir), Path(tiny_model_dir), run_dir]
    before = {d: sorted(p.name for p in d.iterdir()) for d in watched}
    count = 0
    for line, option in TEXT_OPTIONS:
        args = line.format(model=tiny_model_dir, data=tiny_rsg_dir, run=run_dir, out=out,
                           good=good).split()  # fmt: skip
        for value in HOSTILE_TEXT:
            res = CliRunner().invoke(main, [*args, option, value])
            case = (line, option, value[:10])
            assert res.exception is None or isinstance(res.exception, SystemExit), (
                case, res.exception)  # fmt: skip
            assert res.exit_code == 2, (case, res.output[-3000:])
            line = error_line(res.stderr)  # notices may come first ("skipped")
            assert len(line) < 1200, (case, line[:300])
            count += 1
    assert {d: sorted(p.name for p in d.iterdir()) for d in watched} == before
    assert (out / "mine.txt").read_text() == "keep"
    assert count == len(TEXT_OPTIONS) * len(HOSTILE_TEXT)  # docs/layout.md counts these cases


# The standing catalogue of files (issue 27): every file of a run, a model and a data directory,
# damaged each of these ways, read by the command that needs it.
def _damage(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    elif how == "not UTF-8":
        path.write_bytes(b"\xff\xfe" + path.read_bytes()[2:])
    elif how == "a directory":
        path.unlink()
        path.mkdir()


DAMAGES = ("missing", "empty", "truncated", "not UTF-8", "a directory")


def test_every_input_file_damaged_is_one_line(run_dir, tiny_model_dir, tiny_rsg_dir,  # noqa: F811
                                              tmp_path, monkeypatch):  # fmt: skip
    """Each case exits 2 with exactly one `error:` line as the last (or 0 where the file is one
    the command can do without), never a traceback; the damaged copy is all that changed."""
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good.jsonl"
    good.write_text('{"idx": 0, "premise": "a", "hypothesis": "b"}\n')
    sources = {
        "run": (run_dir, "predict {copy} --task terra --input {good}"),
        "model": (Path(tiny_model_dir), "quantize {copy} --bits 8 -o {tmp}/q"),
        "tokenizer": (Path(tiny_model_dir), "train {copy} --data {data} -o {tmp}/r --tasks terra "
                                            "--epochs 1 --max-train-per-task 8 --freeze-layers 1"),
        "data": (Path(tiny_rsg_dir), "train {model} --data {copy} -o {tmp}/r --tasks terra "
                                     "--epochs 1 --max-train-per-task 8 --freeze-layers 1"),
    }  # fmt: skip
    count, outcomes = 0, {}
    for kind, (source, line) in sources.items():
        files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file()
                       and "checkpoints" not in p.parts)  # fmt: skip
        if kind == "data":
            files = [f for f in files if f.parts[0] == "TERRa"]
        if kind == "tokenizer":
            files = [f for f in files if f.name.startswith("tokenizer")]
        for rel in files:
            for how in DAMAGES:
                copy = tmp_path / "copy"
                shutil.copytree(source, copy)
                _damage(copy / rel, how)
                args = line.format(copy=copy, good=good, tmp=tmp_path, data=tiny_rsg_dir,
                                   model=tiny_model_dir).split()  # fmt: skip
                res = CliRunner().invoke(main, args)
                case = (kind, str(rel), how)
                assert res.exception is None or isinstance(res.exception, SystemExit), (
                    case, repr(res.exception))  # fmt: skip
                assert res.exit_code in (0, 2) and "Traceback" not in res.output, case
                if res.exit_code:
                    error_line(res.stderr)
                else:
                    assert not [x for x in res.stderr.splitlines() if x.startswith("error: ")], case
                outcomes[case] = res.exit_code
                count += 1
                for p in ("copy", "q", "r"):
                    shutil.rmtree(tmp_path / p, ignore_errors=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl"]
    assert outcomes[("run", "run.json", "missing")] == 2  # nothing damaged was let through
    assert outcomes[("model", "model.safetensors", "truncated")] == 2
    assert count >= 65  # docs/layout.md counts these cases
