"""Submission zip: official spelling, read back to decode's form, gold round trip scores perfect."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import mlx_rsg  # noqa: F401
from mlx_rsg import data
from mlx_rsg.errors import UserError
from mlx_rsg.submission import read_submission, write_submission
from mlx_rsg.tasks import (
    REGISTRY,
    TASKS,
    DaNetQARecord,
    MuSeRCAnswer,
    MuSeRCQuestion,
    MuSeRCRecord,
    NLIRecord,
    PARusRecord,
    RuCoSRecord,
    RUSSERecord,
    RWSDRecord,
    gold_predictions,
    score_task,
)

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "rsg" / "sample_submission"


def _muserc(idx: int, labels: list[list[int]]) -> MuSeRCRecord:
    qs, k = [], 10 * idx
    for qi, labs in enumerate(labels):
        answers = []
        for lab in labs:
            answers.append(MuSeRCAnswer(k, f"ответ {k}", lab))
            k += 1
        qs.append(MuSeRCQuestion(qi, "вопрос?", tuple(answers)))
    return MuSeRCRecord(idx, "текст", tuple(qs))


def handmade() -> dict[str, list]:
    """Two or three labelled records per task, every label value present."""
    e, ne = "entailment", "not_entailment"
    return {
        "TERRa": [NLIRecord(0, "п", "г", e), NLIRecord(1, "п", "г", ne)],
        "LiDiRus": [NLIRecord(0, "п", "г", ne), NLIRecord(1, "п", "г", e)],
        "RCB": [
            NLIRecord(i, "п", "г", lab) for i, lab in enumerate([e, "contradiction", "neutral"])
        ],
        "PARus": [
            PARusRecord(0, "п", "а", "б", "cause", 0),
            PARusRecord(1, "п", "а", "б", "effect", 1),
        ],
        "MuSeRC": [_muserc(0, [[1, 0], [0, 1, 1]]), _muserc(1, [[0, 0, 1]])],
        "RUSSE": [
            RUSSERecord(0, "лук", "Зелёный лук.", "Лук и стрелы.", 8, 11, 0, 3, False),
            RUSSERecord(1, "лук", "Купил лук.", "Резал лук.", 6, 9, 6, 9, True),
        ],
        "RWSD": [
            RWSDRecord(0, "Иван сказал, что он устал.", 0, "Иван", 3, "он", True),
            RWSDRecord(1, "Иван сказал Петру, что он устал.", 2, "Петру", 4, "он", False),
        ],
        "DaNetQA": [
            DaNetQARecord(0, "Правда?", "Да.", True),
            DaNetQARecord(1, "Ли?", "Нет.", False),
        ],
        "RuCoS": [
            RuCoSRecord(0, "Москва и Россия.", ((0, 6), (9, 15)), "@placeholder", ("Россия",)),
            RuCoSRecord(1, "ЕС, США.", ((0, 3), (4, 7)), "@placeholder", ("ЕС,", "Евросоюз")),
        ],
    }


def perfect(task: str) -> dict[str, float]:
    return {m: 1.0 for m in REGISTRY[task].metrics}


def roundtrip(tmp_path: Path, by_task: dict[str, list]) -> dict[str, dict]:
    out = tmp_path / "sub.zip"
    write_submission(out, {t: (recs, gold_predictions(t, recs)) for t, recs in by_task.items()})
    back = read_submission(out)
    assert set(back) == set(by_task)
    return {t: score_task(t, recs, back[t]) for t, recs in by_task.items()}


def test_gold_round_trip_is_perfect_for_every_task(tmp_path):
    scores = roundtrip(tmp_path, handmade())
    for task, got in scores.items():
        assert got == perfect(task), task


def test_read_back_gives_decode_form(tmp_path):
    recs = handmade()
    out = tmp_path / "s.zip"
    write_submission(out, {t: (r, gold_predictions(t, r)) for t, r in recs.items()})
    back = read_submission(out)
    assert back["RUSSE"] == {0: False, 1: True}
    assert back["RWSD"] == {0: True, 1: False}
    assert back["PARus"] == {0: 0, 1: 1}
    assert back["MuSeRC"][0] == {0: 1, 1: 0, 2: 0, 3: 1, 4: 1}
    assert back["RuCoS"] == {0: "Россия", 1: "ЕС,"}
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == sorted(f"{t}.jsonl" for t in recs)
        lines = z.read("RWSD.jsonl").decode().splitlines()
        assert lines[0] == '{"idx": 0, "label": "True"}'
        assert z.read("DaNetQA.jsonl").decode().splitlines()[1] == '{"idx": 1, "label": "false"}'
        muserc = json.loads(z.read("MuSeRC.jsonl").decode().splitlines()[1])
        assert muserc == {
            "idx": 1,
            "passage": {
                "questions": [
                    {
                        "idx": 0,
                        "answers": [
                            {"idx": 10, "label": 0},
                            {"idx": 11, "label": 0},
                            {"idx": 12, "label": 1},
                        ],
                    }
                ]
            },
        }


def test_wrong_predictions_score_below_perfect_after_round_trip(tmp_path):
    recs = handmade()["RCB"]
    out = tmp_path / "s.zip"
    write_submission(out, {"RCB": (recs, ["neutral", "contradiction", "neutral"])})
    got = score_task("RCB", recs, read_submission(out)["RCB"])
    # E: 0; C: 1; N: tp1 fp1 -> 2/3
    assert got == {"f1": pytest.approx((0 + 1 + 2 / 3) / 3), "accuracy": pytest.approx(2 / 3)}


def test_invalid_prediction_leaves_no_file(tmp_path):
    out = tmp_path / "s.zip"
    recs = handmade()
    with pytest.raises(ValueError, match="not a bool"):
        write_submission(
            out,
            {
                "TERRa": (recs["TERRa"], ["entailment"] * 2),
                "RUSSE": (recs["RUSSE"], ["true", "false"]),
            },
        )
    assert list(tmp_path.iterdir()) == []
    write_submission(out, {"TERRa": (recs["TERRa"], ["entailment"] * 2)})
    before = out.read_bytes()
    with pytest.raises(ValueError, match="unknown label"):
        write_submission(out, {"TERRa": (recs["TERRa"], ["yes", "no"])})
    assert out.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    return path


def test_read_errors_name_file_line_and_field(tmp_path):
    bad = _zip(tmp_path / "a.zip", {"TERRa.jsonl": '{"idx": 0, "label": "entailment"}\n{oops\n'})
    with pytest.raises(UserError, match=r"a\.zip:TERRa\.jsonl:2: invalid JSON"):
        read_submission(bad)
    bad = _zip(tmp_path / "b.zip", {"RWSD.jsonl": '{"idx": 0, "label": "true"}\n'})
    with pytest.raises(UserError, match=r"RWSD\.jsonl:1: field 'label': 'true' is not one of"):
        read_submission(bad)
    bad = _zip(tmp_path / "c.zip", {"PARus.jsonl": '{"label": 1}\n'})
    with pytest.raises(UserError, match=r"PARus\.jsonl:1: field 'idx': missing"):
        read_submission(bad)
    bad = _zip(tmp_path / "d.zip", {"Foo.jsonl": "{}\n"})
    with pytest.raises(UserError, match="unknown task 'Foo'"):
        read_submission(bad)
    (tmp_path / "e.zip").write_text("not a zip")
    with pytest.raises(UserError, match="not a readable zip"):
        read_submission(tmp_path / "e.zip")


# ------------------------------------------------------------ against the official sample


def _shape(obj):
    """Keys and value types, recursively (lists by their first element)."""
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(obj[0])] if obj else []
    return type(obj).__name__


def _sample_lines(task: str) -> list[dict]:
    path = SAMPLE / f"{task}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return [json.loads(s) for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


@pytest.mark.parametrize("task", TASKS)
def test_format_matches_the_official_sample(task, tmp_path):
    sample = _sample_lines(task)
    recs = handmade()[task]
    out = tmp_path / "s.zip"
    write_submission(out, {task: (recs, gold_predictions(task, recs))})
    with zipfile.ZipFile(out) as z:
        ours = [json.loads(s) for s in z.read(f"{task}.jsonl").decode().splitlines()]
    assert all(_shape(o) == _shape(sample[0]) for o in ours)
    # every label value we write is one the sample uses (RuCoS: free text)
    if task == "MuSeRC":
        spelled = {
            a["label"] for o in sample for q in o["passage"]["questions"] for a in q["answers"]
        }
        ours_l = {a["label"] for o in ours for q in o["passage"]["questions"] for a in q["answers"]}
    elif task != "RuCoS":
        spelled = {o["label"] for o in sample}
        ours_l = {o["label"] for o in ours}
    if task != "RuCoS":
        assert ours_l <= spelled and len(ours_l) == len(spelled)


@pytest.mark.parametrize("task", [t for t in TASKS if t != "RuCoS"])
def test_sample_labels_rewritten_byte_for_byte(task, tmp_path, request):
    """Read the official sample, write it again for the real test records: identical bytes."""
    root = request.getfixturevalue("real_rsg_root")
    _sample_lines(task)
    records = _records(root, task, "test")
    sample_zip = _zip(
        tmp_path / "sample.zip",
        {f"{task}.jsonl": (SAMPLE / f"{task}.jsonl").read_text(encoding="utf-8")},
    )
    labels = read_submission(sample_zip)[task]
    out = write_submission(tmp_path / "out.zip", {task: (records, labels)})
    with zipfile.ZipFile(out) as z:
        assert z.read(f"{task}.jsonl") == (SAMPLE / f"{task}.jsonl").read_bytes()


# ------------------------------------------------------------------- on stored val data


def _records(root, task, split):
    if split not in data.available_splits(root, task):
        pytest.skip(f"{task}/{split} not in {root}")
    return data.load_split(root, task, split)


def _labelled_split(root, task):
    return "test" if task == "LiDiRus" else "val"


@pytest.mark.parametrize("source", ["fixture_root", "real_rsg_root"])
@pytest.mark.parametrize("task", TASKS)
def test_val_gold_round_trip_is_perfect(task, source, request, tmp_path):
    root = request.getfixturevalue(source)
    recs = _records(root, task, _labelled_split(root, task))
    got = roundtrip(tmp_path, {task: recs})[task]
    if task == "LiDiRus" and len({r.label for r in recs}) < 2:
        pytest.skip("MCC needs both classes in the gold labels")
    assert got == perfect(task)
