"""benchmarks/quality.py: val predictions in the official format re-scored against gold, next to
the best constant answer.

What these tests prove is the scoring: that each committed zip of predictions re-scores to the
numbers committed beside it, with the official metrics. They do not prove the model: no model
runs here, and a zip written by any other means would pass. The model's side is the training
run that wrote the zip (its command and rule in quality.json), and
`tests/test_dev_split.py::test_val_predictions_rescore_to_the_reported_scores`: a run's own val
scores are those of the predictions it writes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mlx_rsg.data import load_split
from mlx_rsg.data.sample import diagnostic_records
from mlx_rsg.submission import write_submission
from mlx_rsg.tasks import gold_predictions

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

from quality import majority_score, paired_difference, rescore  # noqa: E402


def test_gold_predictions_rescore_perfectly(fixture_root, tmp_path):
    by_task = {}
    for task in ("TERRa", "RCB", "PARus", "MuSeRC", "DaNetQA"):
        records = load_split(fixture_root, task, "val")
        by_task[task] = (records, gold_predictions(task, records))
    zip_path = write_submission(tmp_path / "val.zip", by_task)
    result = rescore(zip_path, fixture_root)
    assert set(result["tasks"]) == set(by_task)
    for task, v in result["tasks"].items():
        assert v["score"] == pytest.approx(1.0), task
        assert v["records"] == len(by_task[task][0])
    assert result["total"] == pytest.approx(1.0)


def test_a_missing_prediction_is_refused(fixture_root, tmp_path):
    records = load_split(fixture_root, "TERRa", "val")
    zip_path = write_submission(tmp_path / "val.zip",
                                {"TERRa": (records[1:], gold_predictions("TERRa", records[1:]))})
    with pytest.raises(SystemExit, match=f"TERRa has no prediction for idx {records[0].idx}"):
        rescore(zip_path, fixture_root)


def test_the_paired_difference_is_the_score_difference_with_its_error(fixture_root, tmp_path):
    by_task, flipped = {}, {}
    for task in ("TERRa", "RCB"):
        records = load_split(fixture_root, task, "val")
        gold = gold_predictions(task, records)
        by_task[task] = (records, gold)
        flipped[task] = (records, gold)
    records, gold = by_task["TERRa"]
    other = "entailment" if gold[0] == "not_entailment" else "not_entailment"
    flipped["TERRa"] = (records, [other, *gold[1:]])
    right = write_submission(tmp_path / "right.zip", by_task)
    wrong = write_submission(tmp_path / "wrong.zip", flipped)
    d = paired_difference(right, wrong, fixture_root, reps=200)
    assert d["tasks"]["TERRa"]["difference"] == pytest.approx(1 / len(records))
    assert d["tasks"]["TERRa"]["se"] > 0
    assert d["tasks"]["RCB"] == {"difference": 0.0, "se": 0.0}
    assert d["total"] == pytest.approx(1 / len(records) / 2)
    same = paired_difference(right, right, fixture_root, reps=20)
    assert same["total"] == 0.0 and same["total_se"] == 0.0


def test_an_unreadable_zip_is_one_line(fixture_root, tmp_path):
    import subprocess

    script = Path(__file__).parents[1] / "benchmarks" / "quality.py"
    for flags in (["--predictions", tmp_path / "nope.zip"],
                  ["--predictions", tmp_path / "nope.zip", "--against", tmp_path / "x.zip"]):
        res = subprocess.run([sys.executable, script, *map(str, flags), "--data",
                              str(fixture_root), "--out", str(tmp_path / "q.json")],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().splitlines() == [
            f"error: {tmp_path / 'nope.zip'}: not a readable zip ([Errno 2] No such file or "
            f"directory: '{tmp_path / 'nope.zip'}')"]  # fmt: skip
        assert not (tmp_path / "q.json").exists()


def test_majority_scores_of_the_real_val_splits(real_rsg_root):
    """The baselines the issue computed by hand: 0.428 over the 8 real tasks."""
    want = {"RCB": 0.379, "PARus": 0.550, "MuSeRC": 0.309, "TERRa": 0.502, "RUSSE": 0.631,
            "RWSD": 0.554, "DaNetQA": 0.502}  # fmt: skip
    got = {t: majority_score(t, load_split(real_rsg_root, t, "val")) for t in want}
    got["LiDiRus"] = majority_score("LiDiRus", diagnostic_records(real_rsg_root))
    assert {t: round(v, 3) for t, v in got.items()} == {**want, "LiDiRus": 0.0}
    assert round(sum(got.values()) / 8, 3) == 0.428


RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"
EARLIER = RESULTS / "quality" / "earlier"
# (scores, predictions): the real run (README, Results), and the earlier runs of its recipe
COMMITTED = [(RESULTS / "quality.json", RESULTS / "quality" / "val_predictions.zip")] + [
    (p, p.with_suffix(".zip")) for p in sorted(EARLIER.glob("*.json"))
]


@pytest.mark.parametrize("scores, zip_path", COMMITTED, ids=[p.stem for p, _ in COMMITTED])
def test_the_committed_predictions_rescore_to_the_committed_scores(real_rsg_root, scores,
                                                                   zip_path):  # fmt: skip
    """Each committed quality JSON is what its zip of val predictions scores."""
    import json

    want = json.loads(scores.read_text())
    got = rescore(zip_path, real_rsg_root)
    assert got["total"] == pytest.approx(want["total"], abs=1e-12)
    for task, v in want["tasks"].items():
        assert got["tasks"][task]["score"] == pytest.approx(v["score"], abs=1e-12), task
        assert got["tasks"][task]["records"] == v["records"]


# (bench directory, the fp32 run's own committed predictions): the README's and
# docs/quantization.md's tables, on the real run (`--head-only PARus`), on the run before it
# (`earlier/block12`: four benches; the fourth ran on its weights trained again bit for bit, so
# its float pass must decide as that run did), on a copy
# of it trained again with other kernels (`quantize-e3`, and its bench of RWSD alone: their val
# pass is bench's own, so there is no zip of the run's to compare; `direct`, the shipped copy
# benched whole: its float pass is the first bench's), on the same run before its RWSD decision
# by substitution (`earlier/block12-head`), the 1,000-example run and the 640-example run
QUANTIZED = [(RESULTS / "quality" / "quantize-parus-head",
              RESULTS / "quality" / "val_predictions.zip"),
             (RESULTS / "quality" / "quantize", EARLIER / "block12.zip"),
             (RESULTS / "quality" / "quantize-q8gptq-mixed", EARLIER / "block12.zip"),
             (RESULTS / "quality" / "quantize-rows", EARLIER / "block12.zip"),
             (RESULTS / "quality" / "quantize-committed", EARLIER / "block12.zip"),
             (RESULTS / "quality" / "quantize-e3", None),
             (RESULTS / "quality" / "quantize-e3" / "rwsd-lm4", None),
             (RESULTS / "quality" / "quantize-e3" / "direct",
              RESULTS / "quality" / "quantize-e3" / "submissions"
              / "g270m-block12-rwsd-retrained.zip"),
             (EARLIER / "quantize-block12-head", EARLIER / "block12-head.zip"),
             (EARLIER / "quantize-1000", EARLIER / "1000.zip"),
             (EARLIER / "quantize-640", EARLIER / "640.zip")]  # fmt: skip


@pytest.mark.parametrize("bench_dir, run_zip", QUANTIZED, ids=[d.name for d, _ in QUANTIZED])
def test_the_committed_quantized_predictions_rescore_to_their_bench(real_rsg_root, bench_dir,
                                                                    run_zip):  # fmt: skip
    """Every variant's zip scores what bench.json says, and the fp32 zip holds the same
    predictions as the run's own committed zip, where there is one (bench scored the run that
    was committed)."""
    import json

    from mlx_rsg.submission import read_submission

    bench = json.loads((bench_dir / "bench.json").read_text())
    names = [v["name"] for v in bench["variants"]]
    assert names[0] == bench["baseline"] and len(names) >= 2  # fp32 and at least one recipe
    for v in bench["variants"]:
        got = rescore(bench_dir / v["submission"], real_rsg_root)
        assert got["total"] == pytest.approx(v["total"], abs=1e-12), v["name"]
        for task, s in v["scores"].items():
            assert got["tasks"][task]["score"] == pytest.approx(s["score"], abs=1e-12)
    if run_zip is not None:
        fp32 = read_submission(bench_dir / bench["variants"][0]["submission"])
        assert fp32 == read_submission(run_zip)


def test_the_composed_copy_is_its_two_benches(real_rsg_root):
    """benchmarks/compose_copy.py's copy (`q8-gptq-long-e3-rows-bc` with its RWSD language
    model's blocks at 4 bits): its zip holds the benched copy's decisions on every task but RWSD
    and the RWSD bench's on RWSD, whose float run decided RWSD as the full bench's did; it
    scores what its JSON says, with as many decisions changed as it counts."""
    import json

    from mlx_rsg.submission import read_submission

    bench_dir = RESULTS / "quality" / "quantize-e3"
    composed = json.loads((bench_dir / "q8-gptq-long-e3-rows-bc-lm4.json").read_text())
    full = json.loads((bench_dir / "bench.json").read_text())
    alone = json.loads((bench_dir / "rwsd-lm4" / "bench.json").read_text())
    kept_row = next(v for v in full["variants"] if v["name"] == composed["composed"]["variant"])
    got, kept, base = (read_submission(bench_dir / v["submission"])
                       for v in (composed, kept_row, full["variants"][0]))  # fmt: skip
    alone_base, alone_copy = (read_submission(bench_dir / "rwsd-lm4" / v["submission"])
                              for v in alone["variants"])  # fmt: skip
    assert got["RWSD"] == alone_copy["RWSD"] and alone_base["RWSD"] == base["RWSD"]
    assert {t: p for t, p in got.items() if t != "RWSD"} == {
        t: p for t, p in kept.items() if t != "RWSD"}
    assert rescore(bench_dir / composed["submission"], real_rsg_root)["total"] == pytest.approx(
        composed["total"], abs=1e-12)
    changed = sum(got[t][i] != base[t][i] for t in base if t != "MuSeRC" for i in base[t])
    changed += sum(got["MuSeRC"][i][a] != base["MuSeRC"][i][a]
                   for i in base["MuSeRC"] for a in base["MuSeRC"][i])  # fmt: skip
    decisions = sum(len(p) for t, p in base.items() if t != "MuSeRC")
    decisions += sum(len(answers) for answers in base["MuSeRC"].values())
    assert changed / decisions == pytest.approx(composed["flip_rate"], abs=1e-12)


def test_the_shipped_copy_benched_whole_decides_as_composed():
    """The shipped copy (`q8-gptq-long-e3-rows-bc` with `[substitution]` at 4 bits), quantized
    again and benched whole, decided every val record as compose_copy.py's composition of the
    two earlier benches said it would, so the composed flips and Δ are the copy's own."""
    import json

    from mlx_rsg.submission import read_submission

    bench_dir = RESULTS / "quality" / "quantize-e3"
    composed = json.loads((bench_dir / "q8-gptq-long-e3-rows-bc-lm4.json").read_text())
    direct = json.loads((bench_dir / "direct" / "bench.json").read_text())
    whole = direct["variants"][1]
    assert read_submission(bench_dir / "direct" / whole["submission"]) == read_submission(
        bench_dir / composed["submission"])  # fmt: skip
    assert whole["flip_rate"] == pytest.approx(composed["flip_rate"], abs=1e-12)
    assert whole["delta"] == pytest.approx(composed["delta"], abs=1e-12)


def _drawn_bench_rescores(bench_dir: Path, real_rsg_root: Path) -> dict:
    """bench.json of a bench on drawn val records (--max-per-task), after checking that every
    variant's zip holds predictions for the drawn records only and that they score what
    bench.json says."""
    import json

    from quality import val_records

    from mlx_rsg.submission import read_submission
    from mlx_rsg.tasks import score_task, task_score, total_score

    bench = json.loads((bench_dir / "bench.json").read_text())
    for v in bench["variants"]:
        back = read_submission(bench_dir / v["submission"])
        per_task = {}
        for task, preds in back.items():
            records = [r for r in val_records(real_rsg_root, task) if r.idx in preds]
            assert len(records) == bench["tasks"][task]["records"] == len(preds), task
            per_task[task] = score_task(task, records, preds)
            assert task_score(task, per_task[task]) == pytest.approx(
                v["scores"][task]["score"], abs=1e-12), (v["name"], task)
        assert total_score(per_task) == pytest.approx(v["total"], abs=1e-12)
    return bench


@pytest.mark.parametrize("name,variants", [("quantize-1ep", 9), ("quantize-1ep-dwq", 2),
                                                ("quantize-1ep-gptq-dwq", 2),
                                                ("quantize-1ep-gptq-dwq-lr3e-8", 2),
                                                ("quantize-1ep-sens", 3),
                                                ("quantize-1ep-sens64", 2),
                                                ("quantize-1ep-t025", 2)])
def test_the_committed_quantize_levers_rescore_to_their_bench(real_rsg_root, name, variants):
    """docs/quantization.md's levers tables (bench --max-per-task 250): every variant's zip holds
    predictions for the drawn val records only, and those records score what bench.json says;
    the fp32 zip agrees with the run's own full-val zip on every record it holds."""
    from mlx_rsg.submission import read_submission

    bench_dir = RESULTS / "quality" / name
    bench = _drawn_bench_rescores(bench_dir, real_rsg_root)
    assert len(bench["variants"]) == variants
    fp32 = read_submission(bench_dir / bench["variants"][0]["submission"])
    run = read_submission(EARLIER / "1ep.zip")
    assert all(fp32[t][i] == run[t][i] for t in fp32 for i in fp32[t])


def test_the_run_trained_on_4_bits_decides_in_bench_as_its_training_scored(real_rsg_root):
    """docs/quantization.md's QLoRA table (bench --max-per-task 200 of the runs
    benchmarks/ablation.py trained, scored on the same draw as their --max-eval-per-task 200):
    every zip scores what bench.json says, and bench's predictions of the float freeze run and
    of the run trained on the 4-bit base are the val predictions their training wrote."""
    from mlx_rsg.submission import read_submission

    bench_dir = RESULTS / "quality" / "qlora-240"
    bench = _drawn_bench_rescores(bench_dir, real_rsg_root)
    by_name = {Path(v["name"]).name: v for v in bench["variants"]}
    assert list(by_name) == ["freeze-top4", "freeze-top4-q4", "lora-top4-r8-lr1e-3",
                             "lora-top4-q4", "qlora-top4-r8-lr1e-3"]  # fmt: skip
    for name in ("freeze-top4", "qlora-top4-r8-lr1e-3"):
        trained = read_submission(bench_dir / "trained" / f"{name}.zip")
        assert read_submission(bench_dir / by_name[name]["submission"]) == trained, name
    # the float LoRA run against its own rounding: the same two models, the same predictions
    own = _drawn_bench_rescores(bench_dir / "lora", real_rsg_root)
    for v in own["variants"]:
        assert read_submission(bench_dir / "lora" / v["submission"]) == read_submission(
            bench_dir / by_name[v["name"]]["submission"]), v["name"]
