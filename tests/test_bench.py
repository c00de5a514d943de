"""`mlx-rsg bench` on a tiny trained run, a copy of it and a perturbed copy (fixture data)."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from tiny_model import tiny_model_dir, tiny_rsg_dir, tiny_train_config  # noqa: F401

import mlx_rsg  # noqa: F401
from mlx_rsg.cli import main
from mlx_rsg.metrics import class_report
from mlx_rsg.submission import read_submission
from mlx_rsg.tasks import score_task, total_score

MAX = 12


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_rsg_dir, tmp_path_factory):  # noqa: F811
    from mlx_rsg import train as T

    root = tmp_path_factory.mktemp("bench-runs")
    base = root / "fp32"
    T.train(tiny_model_dir, tiny_rsg_dir, base, tiny_train_config(epochs=2), log=lambda m: None)
    same = root / "same"
    shutil.copytree(base, same)
    # A variant whose heads are nudged: some predictions flip, the heads/tasks still match.
    noisy = root / "noisy"
    shutil.copytree(base, noisy)
    w = mx.load(str(noisy / "trainable.safetensors"))
    mx.random.seed(1)
    w = {
        k: v + 0.5 * mx.random.normal(v.shape) if k.startswith("heads.") else v
        for k, v in w.items()
    }
    mx.save_safetensors(str(noisy / "trainable.safetensors"), w)
    return base, same, noisy


def invoke(*args):
    return CliRunner().invoke(main, ["bench", *map(str, args)])


@pytest.fixture(scope="module")
def benched(runs, tiny_rsg_dir, tmp_path_factory):  # noqa: F811
    base, same, noisy = runs
    out = tmp_path_factory.mktemp("bench-out") / "out"
    res = invoke(
        base, same, noisy, "--data", tiny_rsg_dir, "--max-per-task", MAX, "-o", out,
        "--latency-samples", 4, "--batch-size", 8, "--fixture-tasks", "RCB",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "bench.json").read_text()), res.output


def records(data_dir, task):
    from mlx_rsg.data import load_split
    from mlx_rsg.data.sample import diagnostic_records, sample_examples

    recs = diagnostic_records(data_dir) if task == "LiDiRus" else load_split(data_dir, task, "val")
    return sample_examples(task, recs, MAX, seed=0, split="val")


def test_bench_json_schema(benched):
    out, result, _ = benched
    assert result["format"] == "mlx-rsg-bench" and result["version"] == 1
    assert result["baseline"] == "fp32"
    assert [v["name"] for v in result["variants"]] == ["fp32", "same", "noisy"]
    assert set(result["tasks"]) == {"TERRa", "RCB", "PARus", "LiDiRus"}
    assert {t for t, d in result["tasks"].items() if d["fixture"]} == {"RCB"}
    # --max-per-task counts examples: a PARus record is two units (one per choice).
    assert result["tasks"]["PARus"] == {
        "records": MAX // 2, "units": MAX, "fixture": False, "metrics": ["accuracy"],
    }  # fmt: skip
    # Tasks absent from the data (or the run) are listed with a reason, never silently dropped.
    assert set(result["skipped"]) == {"MuSeRC", "RUSSE", "RWSD", "DaNetQA", "RuCoS"}
    keys = {
        "name", "path", "quantization", "scores", "total", "total_fixture", "delta",
        "delta_fixture", "delta_tasks", "flips", "flip_rate", "flip_directions", "delta_se",
        "flips_by_margin", "class_report", "size_bytes", "memory", "latency_ms", "throughput",
        "submission",
    }  # fmt: skip
    for v in result["variants"]:
        assert set(v) == keys
        assert v["quantization"] is None
        assert v["latency_ms"]["samples"] == 4 and v["latency_ms"]["batch_size"] == 1
        assert 0 < v["latency_ms"]["p50"] <= v["latency_ms"]["p95"]
        assert v["throughput"]["examples_per_s"] > 0 and v["throughput"]["batch_size"] == 8
        assert v["memory"]["mlx_peak_bytes"] > 0 and v["memory"]["rss_peak_bytes"] > 0
        assert (out / v["submission"]).is_file()
        # The real total leaves the fixture task out; the fixture total is RCB alone.
        real = {t: {k: x for k, x in s.items() if k != "score"} for t, s in v["scores"].items()}
        assert v["total"] == pytest.approx(
            total_score({t: m for t, m in real.items() if t != "RCB"}), abs=0
        )
        assert v["total_fixture"] == pytest.approx(np.mean(list(real["RCB"].values())), abs=1e-12)


def test_size_on_disk_is_backbone_plus_trainable(benched, runs, tiny_model_dir):  # noqa: F811
    _, result, _ = benched
    size = result["variants"][0]["size_bytes"]
    assert size["backbone"] == (tiny_model_dir / "model.safetensors").stat().st_size
    assert size["trainable"] == (runs[0] / "trainable.safetensors").stat().st_size
    assert size["total"] == size["backbone"] + size["trainable"]


def test_scores_equal_the_submission_zip_scores(benched, tiny_rsg_dir):  # noqa: F811
    out, result, _ = benched
    for v in result["variants"]:
        sub = read_submission(out / v["submission"])
        assert set(sub) == set(result["tasks"])
        for task in result["tasks"]:
            recs = records(tiny_rsg_dir, task)
            scores = score_task(task, recs, [sub[task][r.idx] for r in recs])
            want = {k: x for k, x in v["scores"][task].items() if k != "score"}
            assert {k: float(x) for k, x in scores.items()} == want


def test_scores_match_predict(benched, runs, tiny_rsg_dir):  # noqa: F811
    """bench's scores are mlx-rsg predict's (the Predictor path), not a re-implementation."""
    from mlx_rsg.predict import load

    _, result, _ = benched
    p = load(runs[0])
    assert "LiDiRus" in p.tasks  # a run with a TERRa head predicts the diagnostic with it
    got = p.evaluate({t: records(tiny_rsg_dir, t) for t in result["tasks"]})
    for task, s in got["tasks"].items():
        assert s == result["variants"][0]["scores"][task]


def test_flip_rate_zero_against_itself_and_counted_from_predictions(benched, tiny_rsg_dir):  # noqa: F811
    out, result, _ = benched
    base, same, noisy = result["variants"]
    for v in (base, same):
        assert v["flip_rate"] == 0 and set(v["flips"].values()) == {0}
        assert v["delta"] == 0 and v["delta_fixture"] == 0
        assert set(v["delta_tasks"].values()) == {0}
    assert same["scores"] == base["scores"]
    # The noisy variant's flips, recounted from the two submission zips.
    a, b = read_submission(out / base["submission"]), read_submission(out / noisy["submission"])
    flipped = total = 0
    for task in result["tasks"]:
        k = sum(a[task][i] != b[task][i] for i in a[task])
        assert noisy["flips"][task] == k / len(a[task])
        flipped, total = flipped + k, total + len(a[task])
    assert flipped > 0, "the perturbed heads should change some predictions"
    assert noisy["flip_rate"] == flipped / total
    assert noisy["delta"] == pytest.approx(noisy["total"] - base["total"], abs=0)


def test_flip_directions_and_delta_errors(benched):
    """Flips by direction recounted from the two submission zips; the baseline has no delta
    error, an identical copy a zero one, the perturbed heads a positive one per task that
    flipped and on the total."""
    out, result, _ = benched
    base, same, noisy = result["variants"]
    a, b = read_submission(out / base["submission"]), read_submission(out / noisy["submission"])
    for task in ("TERRa", "PARus", "LiDiRus", "RCB"):
        want: dict[str, int] = {}
        for i in a[task]:
            if a[task][i] != b[task][i]:
                key = f"{a[task][i]}->{b[task][i]}"
                want[key] = want.get(key, 0) + 1
        assert noisy["flip_directions"][task] == want, task
        assert same["flip_directions"][task] == {}
        assert (noisy["delta_se"]["tasks"][task] > 0) == bool(want), task
    assert base["delta_se"] is None
    assert same["delta_se"]["total"] == 0 and set(same["delta_se"]["tasks"].values()) == {0}
    assert noisy["delta_se"]["total"] > 0
    assert "± " in (out / "bench.md").read_text()


def test_flips_by_margin_count_every_label_decision(benched):
    """Every decision of the label tasks (PARus chooses between units: left out) lands in one
    margin bin, and the flipped ones add up to the flips bench counted for those tasks."""
    _, result, _ = benched
    base, same, noisy = result["variants"]
    assert base["flips_by_margin"] is None
    label_tasks = ["RCB", "TERRa", "LiDiRus"]
    for v in (same, noisy):
        m = v["flips_by_margin"]
        assert sorted(m["tasks"]) == sorted(label_tasks)
        assert len(m["decisions"]) == len(m["flipped"]) == len(m["edges"])
        assert sum(m["decisions"]) == sum(result["tasks"][t]["units"] for t in label_tasks)
        flips = sum(v["flips"][t] * result["tasks"][t]["units"] for t in label_tasks)
        assert sum(m["flipped"]) == pytest.approx(flips)
    assert sum(same["flips_by_margin"]["flipped"]) == 0
    assert sum(noisy["flips_by_margin"]["flipped"]) > 0


def test_paired_bootstrap_matches_the_accuracy_formula():
    """For accuracy the paired difference is a mean of per-record differences d_i in {-1, 0, 1}:
    its standard error is std(d) / sqrt(n). The bootstrap (1,000 rounds) must agree within 5 %."""
    from mlx_rsg.bench.compare import paired_bootstrap
    from mlx_rsg.tasks import NLIRecord

    rng = np.random.default_rng(7)
    n = 400
    gold = rng.choice(["entailment", "not_entailment"], n)
    recs = [NLIRecord(idx=i, premise="p", hypothesis="h", label=g) for i, g in enumerate(gold)]
    base = [g if rng.random() < 0.7 else ("entailment" if g != "entailment" else "not_entailment")
            for g in gold]  # fmt: skip
    flip = rng.random(n) < 0.15
    variant = [("entailment" if p != "entailment" else "not_entailment") if f else p
               for p, f in zip(base, flip, strict=True)]  # fmt: skip
    d = np.array([(v == g) - (b == g) for v, b, g in zip(variant, base, gold, strict=True)])
    want = d.std(ddof=1) / np.sqrt(n)
    got = paired_bootstrap({"TERRa": recs}, {"TERRa": variant}, {"TERRa": base}, ["TERRa"],
                           rounds=1000, seed=0)  # fmt: skip
    assert got["tasks"]["TERRa"] == pytest.approx(want, rel=0.05)
    assert got["total"] == pytest.approx(want, rel=0.05)


def test_class_report_from_predictions(benched, tiny_rsg_dir):  # noqa: F811
    out, result, _ = benched
    v = result["variants"][2]
    sub = read_submission(out / v["submission"])
    recs = records(tiny_rsg_dir, "TERRa")
    want = class_report(
        [r.label for r in recs], [sub["TERRa"][r.idx] for r in recs],
        ("entailment", "not_entailment"),
    )  # fmt: skip
    assert v["class_report"]["TERRa"] == {k: dict(r) for k, r in want.items()}
    assert sum(r["support"] for r in v["class_report"]["PARus"].values()) == MAX // 2


def test_markdown_and_png(benched):
    out, result, printed = benched
    md = (out / "bench.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| run | weights | LiDiRus | RCB* |")
    rows = table[1 : 1 + len(result["variants"])]
    assert [r.split("|")[1].strip() for r in rows] == ["fp32", "same", "noisy"]
    assert "fixture data" in md and "RuCoS (" in md
    assert md.splitlines()[0] in printed
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    w, h = struct.unpack(">II", png[16:24])
    n = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT"
    raw = zlib.decompress(png[41 : 41 + n])
    assert len(raw) == h * (1 + 3 * w)
    assert zlib.crc32(png[37 : 41 + n]) == struct.unpack(">I", png[41 + n : 45 + n])[0]
    pixels = np.frombuffer(raw, np.uint8).reshape(h, 1 + 3 * w)[:, 1:].reshape(h, w, 3)
    assert (pixels == (31, 119, 180)).all(axis=2).sum() > 100  # the first run's bars


def test_chart_labels_metrics_and_draws_zero_scores(monkeypatch):
    from mlx_rsg.bench import report as bench_report

    result = {
        "config": {"split": "val"},
        "tasks": {"LiDiRus": {"fixture": False, "metrics": ["mcc"]},
                  "TERRa": {"fixture": False, "metrics": ["accuracy"]}},
        "variants": [{"name": "fp32", "total": 0.25,
                      "scores": {"LiDiRus": {"score": 0.0}, "TERRa": {"score": 0.5}}}],
    }  # fmt: skip
    seen = {}
    real = bench_report.bar_chart

    def capture(*args):
        seen["args"], seen["img"] = args, real(*args)
        return seen["img"]

    monkeypatch.setattr(bench_report, "bar_chart", capture)
    bench_report.write_chart(result, "/dev/null")
    groups, series, title, sublabels, y_title = seen["args"]
    assert "fixture" not in title  # no fixture task: no fixture legend
    assert sublabels == ["MCC", "ACC", "MEAN"] and "MCC -1..1" in y_title
    img, blue = seen["img"], (31, 119, 180)
    assert series == [("fp32", [0.0, 0.5, 0.25])]
    # The LiDiRus bar (MCC exactly 0) is still drawn: a line in the run's colour.
    columns = np.where((img == blue).all(axis=2).any(axis=0))[0]
    first_bar = columns[columns > 40][:3]
    assert len(first_bar) and (img[:, first_bar[0]] == blue).all(axis=1).sum() >= 2
    result["tasks"]["TERRa"]["fixture"] = True
    bench_report.write_chart(result, "/dev/null")
    assert seen["args"][2].endswith("(* fixture)")


# --------------------------------------------------------------------------- bad input


def _err(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def _variant(runs, tmp_path, name="variant"):
    dst = tmp_path / name
    shutil.copytree(runs[0], dst)
    return dst


def test_variant_with_different_heads(runs, tiny_rsg_dir, tmp_path):  # noqa: F811
    bad = _variant(runs, tmp_path)
    info = json.loads((bad / "run.json").read_text())
    del info["heads"]["RCB"]
    (bad / "run.json").write_text(json.dumps(info))
    out = tmp_path / "out"
    msg = _err(invoke(runs[0], bad, "--data", tiny_rsg_dir, "-o", out))
    assert str(bad) in msg and "'heads'" in msg and "baseline" in msg
    assert not out.exists()


def test_variant_with_different_labels(runs, tiny_rsg_dir, tmp_path):  # noqa: F811
    bad = _variant(runs, tmp_path)
    info = json.loads((bad / "run.json").read_text())
    info["tasks"]["TERRa"]["labels"] = ["not_entailment", "entailment"]
    (bad / "run.json").write_text(json.dumps(info))
    msg = _err(invoke(runs[0], bad, "--data", tiny_rsg_dir, "-o", tmp_path / "out"))
    assert "tasks.TERRa.labels" in msg


@pytest.mark.parametrize(
    "damage, expect",
    [
        (lambda d: (d / "run.json").unlink(), "not a run directory"),
        (lambda d: (d / "run.json").write_text("{oops"), "invalid JSON"),
        (lambda d: (d / "trainable.safetensors").unlink(), "no trainable.safetensors"),
        (lambda d: _truncate(d / "trainable.safetensors"), "truncated or corrupt"),
        (lambda d: (d / "trainable.safetensors").write_bytes(b"garbage"), "not a readable"),
        (lambda d: shutil.rmtree(d), "no such run directory"),
    ],
)
def test_corrupt_or_missing_variant_files(runs, tiny_rsg_dir, tmp_path, damage, expect):  # noqa: F811
    bad = _variant(runs, tmp_path)
    damage(bad)
    out = tmp_path / "out"
    msg = _err(invoke(runs[0], bad, "--data", tiny_rsg_dir, "-o", out))
    assert expect in msg and str(bad) in msg
    assert not out.exists()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def test_missing_backbone_and_bad_options(runs, tiny_rsg_dir, tmp_path):  # noqa: F811
    bad = _variant(runs, tmp_path)
    info = json.loads((bad / "run.json").read_text())
    info["backbone"]["path"] = str(tmp_path / "gone")
    (bad / "run.json").write_text(json.dumps(info))
    o = ("-o", tmp_path / "out")
    assert "does not exist" in _err(invoke(runs[0], bad, "--data", tiny_rsg_dir, *o))
    assert "--data" in _err(invoke(runs[0], "--data", tmp_path / "nope", *o))
    assert "test labels" in _err(invoke(runs[0], "--data", tiny_rsg_dir, "--split", "test", *o))
    assert "--batch-size" in _err(invoke(runs[0], "--data", tiny_rsg_dir, "--batch-size", 0, *o))
    assert not (tmp_path / "out").exists()
    (tmp_path / "exists").mkdir()
    assert "--force" in _err(invoke(runs[0], "--data", tiny_rsg_dir, "-o", tmp_path / "exists"))


def test_model_rows_equals_one_call(runs, tiny_rsg_dir):  # noqa: F811
    """The row-parallel CPU path gives the logits of one model call (up to GEMM rounding)."""
    from mlx_rsg.accel.cpu_parallel import model_rows
    from mlx_rsg.model import batching
    from mlx_rsg.predict import load
    from mlx_rsg.tasks import make_units

    p = load(runs[0])
    for task in ("TERRa", "PARus"):
        units = make_units(task, records(tiny_rsg_dir, task), train=False)
        encoded = batching.encode_units(units, p.tokenizer, p.model.cfg.max_len_for(task))
        for batch in batching.make_batches(encoded, 8):
            want = p.model(batch)
            got = model_rows(p.model, batch, parts=3)
            assert got.shape == want.shape
            assert mx.allclose(got, want, rtol=1e-4, atol=1e-5).item()


def test_bench_options_come_from_bench_config():
    """Each bench setting is spelled once, on BenchConfig's fields."""
    from dataclasses import fields

    from mlx_rsg.bench.measure import BenchConfig
    from mlx_rsg.cli import bench_command

    options = {p.name: p for p in bench_command.params}
    for f in fields(BenchConfig):
        default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        assert options[f.name].default == default, f.name
