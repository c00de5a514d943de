"""Readers for the official RSG layout: fixtures, archives, quirks, located errors, real data."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest

from mlx_rsg import data, tasks
from mlx_rsg.data import DataError

ALL_SPLITS = [(t, s) for t in tasks.TASKS for s in (("test",) if t == "LiDiRus" else data.SPLITS)]


def _load_all(root) -> dict:
    return {(t, s): data.load_split(root, t, s) for t, s in ALL_SPLITS}


# ------------------------------------------------------------------------------ fixtures


def test_fixture_has_every_task_and_split(fixture_root):
    for task in tasks.TASKS:
        want = ["test"] if task == "LiDiRus" else ["train", "val", "test"]
        assert data.available_splits(fixture_root, task) == want


@pytest.mark.parametrize(("task", "split"), ALL_SPLITS)
def test_fixture_labels_normalised(task, split, fixture_root):
    recs = data.load_split(fixture_root, task, split)
    assert recs and len({r.idx for r in recs}) == len(recs)
    labelled = split != "test" or task == "LiDiRus"
    if task == "MuSeRC":
        labels = [a.label for r in recs for q in r.questions for a in q.answers]
    elif task == "RuCoS":
        labels = [r.answers for r in recs]
    else:
        labels = [r.label for r in recs]
    if not labelled:
        assert labels == [None] * len(labels)
        return
    allowed = {
        "TERRa": {"entailment", "not_entailment"},
        "LiDiRus": {"entailment", "not_entailment"},
        "RCB": {"entailment", "contradiction", "neutral"},
        "PARus": {0, 1},
        "MuSeRC": {0, 1},
    }.get(task, {False, True})
    if task == "RuCoS":
        assert all(isinstance(a, tuple) and a for a in labels)
        return
    assert set(labels) == allowed  # both/all classes present in every labelled fixture split
    # exact types: a bool must not pose as PARus's int, nor 1 as RUSSE's True
    want_type = {"PARus": int, "MuSeRC": int}.get(task, str if task in ("TERRa", "LiDiRus", "RCB")
                                                  else bool)  # fmt: skip
    assert {type(v) for v in labels} == {want_type}


def test_fixture_records_by_hand(fixture_root):
    terra = data.load_split(fixture_root, "TERRa", "val")
    assert terra[1] == tasks.NLIRecord(
        1, "Музей будет закрыт на реставрацию до весны.", "Музей работает всю зиму.",
        "not_entailment",
    )  # fmt: skip
    lid = data.load_split(fixture_root, "LiDiRus", "test")
    assert [r.idx for r in lid] == [0, 1, 2, 3, 4]  # the official file spells idx as "0", "1"...
    assert lid[0] == tasks.NLIRecord(
        0, "Кот спал на диване.", "Кот не спал на диване.", "not_entailment"
    )
    parus = data.load_split(fixture_root, "PARus", "train")[1]
    assert (parus.question, parus.label, parus.choice2) == ("cause", 1, "Ночью прошёл дождь.")
    rwsd = data.load_split(fixture_root, "RWSD", "train")[1]
    assert (rwsd.span1_index, rwsd.span1_text, rwsd.span2_index, rwsd.span2_text, rwsd.label) == (
        4, "чемодан,", 7, "он был", False,
    )  # fmt: skip
    mus = data.load_split(fixture_root, "MuSeRC", "train")[0]
    assert [q.question for q in mus.questions] == [
        "Куда переехал Пётр?", "Чем Пётр занимался по вечерам?",
    ]  # fmt: skip
    assert mus.questions[0].answers == (
        tasks.MuSeRCAnswer(0, "В Новгород.", 1),
        tasks.MuSeRCAnswer(1, "В Тверь.", 0),
        tasks.MuSeRCAnswer(2, "В Москву.", 0),
    )
    assert mus.text.startswith("(1) Весной")


def test_fixture_russe_spans(fixture_root):
    """CRLF is gone from the text; the end one past the sentence (as in the official train
    files) is kept as written, and the span still starts on the word."""
    recs = data.load_split(fixture_root, "RUSSE", "train")
    r = recs[0]
    assert r.sentence2 == "Из-под камня бил холодный ключ"
    assert (r.start2, r.end2) == (26, 31) and len(r.sentence2) == 30
    assert r.sentence1[r.start1 : r.end1] == "ключ" and r.label is False
    for r in recs + data.load_split(fixture_root, "RUSSE", "val"):
        for text, s in ((r.sentence1, r.start1), (r.sentence2, r.start2)):
            assert not text.endswith("\r")
            assert text[s : s + 3].lower() == r.word[:3].lower()


def test_fixture_rucos_entities(fixture_root):
    """Official entity ends are inclusive; records hold half-open spans."""
    r = data.load_split(fixture_root, "RuCoS", "val")[0]
    assert [r.text[s:e] for s, e in r.entities] == ["Франции", "Германии", "Берлине", "Берлине"]
    assert r.query == "Лидеры обсудили отношения @placeholder и Германии."
    assert r.answers == ("Франции",)
    train = data.load_split(fixture_root, "RuCoS", "train")[0]
    assert train.answers == ("России", "Россия")
    test = data.load_split(fixture_root, "RuCoS", "test")[0]
    assert test.answers is None and test.text.count("@highlight") == 1


# ------------------------------------------------------------------------------ layouts


def _zip_dir(src: Path, out: Path, prefix: str = "", gz: bool = False) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(src.rglob("*.jsonl")):
            body = gzip.compress(f.read_bytes()) if gz else f.read_bytes()
            z.writestr(prefix + f.relative_to(src).as_posix() + (".gz" if gz else ""), body)
    return out


def test_official_zip_with_top_folder(fixture_root, tmp_path):
    want = _load_all(fixture_root)
    z = _zip_dir(fixture_root, tmp_path / "combined.zip", prefix="combined/")
    assert _load_all(z) == want
    assert data.available_splits(z, "LiDiRus") == ["test"]
    # and the same zip unpacked: the task folders one level down
    with zipfile.ZipFile(z) as f:
        f.extractall(tmp_path / "unpacked")
    assert _load_all(tmp_path / "unpacked") == want


def test_zip_without_top_folder_and_per_task_zips(fixture_root, tmp_path):
    want = _load_all(fixture_root)
    assert _load_all(_zip_dir(fixture_root, tmp_path / "flat.zip")) == want
    # russiansuperglue.com's per-task downloads (Terra.zip spelled its own way) inside one folder
    per_task = tmp_path / "per_task"
    per_task.mkdir()
    for task_dir in fixture_root.iterdir():
        name = {"TERRa": "Terra", "PARus": "Parus"}.get(task_dir.name, task_dir.name)
        _zip_dir(task_dir, per_task / f"{name}.zip")
    assert _load_all(per_task) == want
    # a single per-task zip passed directly
    assert data.load_split(per_task / "Terra.zip", "TERRa", "val") == want[("TERRa", "val")]


def test_linked_task_folders_are_read(fixture_root, tmp_path):
    """A data directory of links to task folders (one way to pick tasks) reads as the folders
    themselves, and a link back to the directory does not loop."""
    want = _load_all(fixture_root)
    linked = tmp_path / "linked"
    linked.mkdir()
    for task_dir in fixture_root.iterdir():
        (linked / task_dir.name).symlink_to(task_dir.resolve(), target_is_directory=True)
    (linked / "again").symlink_to(linked, target_is_directory=True)
    assert _load_all(linked) == want


def test_jsonl_gz_directory_and_zip(fixture_root, tmp_path):
    want = _load_all(fixture_root)
    gz = tmp_path / "gz"
    for f in fixture_root.rglob("*.jsonl"):
        out = gz / f.relative_to(fixture_root).with_suffix(".jsonl.gz")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(gzip.compress(f.read_bytes()))
    assert not list(gz.rglob("*.jsonl"))
    assert _load_all(gz) == want
    assert _load_all(_zip_dir(fixture_root, tmp_path / "gz.zip", "combined/", gz=True)) == want


def test_plain_files_win_over_archives_and_deeper_copies(fixture_root, tmp_path):
    shutil.copytree(fixture_root / "TERRa", tmp_path / "TERRa")
    # a different TERRa in an archive, a gzipped copy and one folder deeper: all lose
    other = tmp_path / "other"
    one = (json.dumps(TERRA[0], ensure_ascii=False) + "\n").encode()
    _write(other / "TERRa" / "val.jsonl", one)
    _zip_dir(other, tmp_path / "combined.zip", prefix="combined/")
    _write(tmp_path / "TERRa" / "test.jsonl.gz", gzip.compress(one))
    for split in ("val", "test"):
        want = data.load_split(fixture_root, "TERRa", split)
        assert data.load_split(tmp_path, "TERRa", split) == want
    shutil.rmtree(tmp_path / "TERRa")
    # the deeper plain copy (other/TERRa) now beats the archive
    assert [r.premise for r in data.load_split(tmp_path, "TERRa", "val")] == [TERRA[0]["premise"]]
    shutil.rmtree(other)
    assert [r.premise for r in data.load_split(tmp_path, "TERRa", "val")] == [TERRA[0]["premise"]]
    assert data.available_splits(tmp_path, "TERRa") == ["val"]


def test_missing_task_split_root(fixture_root, tmp_path):
    shutil.copytree(fixture_root / "TERRa", tmp_path / "TERRa")
    (tmp_path / "TERRa" / "val.jsonl").unlink()
    assert data.available_splits(tmp_path, "TERRa") == ["train", "test"]
    assert data.available_splits(tmp_path, "RCB") == []
    found = r"no TERRa/val\.jsonl \(splits found for TERRa: train, test\)"
    with pytest.raises(DataError, match=found):
        data.load_split(tmp_path, "TERRa", "val")
    with pytest.raises(DataError, match="unknown task 'Terra'"):
        data.load_split(tmp_path, "Terra", "val")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        data.load_split(tmp_path, "TERRa", "dev")
    with pytest.raises(DataError, match="no such file or directory"):
        data.load_split(tmp_path / "nope", "TERRa", "val")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="expected a directory or a .zip"):
        data.available_splits(tmp_path / "x.txt", "TERRa")
    with pytest.raises(DataError, match=r"LiDiRus/LiDiRus\.jsonl"):
        data.load_split(fixture_root, "LiDiRus", "val")  # LiDiRus is the split "test" only


# ------------------------------------------------------------------------------ quirks


def _write(path: Path, raw: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


TERRA = [
    {"premise": "Дождь шёл весь день.", "hypothesis": "Было сухо.", "label": "not_entailment",
     "idx": 0},
    {"premise": "Он купил хлеб.", "hypothesis": "Он был в магазине.", "label": "entailment",
     "idx": 1},
]  # fmt: skip


@pytest.mark.parametrize(
    ("bom", "newline", "final", "blank"),
    [(True, "\n", True, False), (False, "\r\n", True, False), (False, "\n", False, False),
     (True, "\r\n", False, True)],
)  # fmt: skip
def test_quirks_bom_crlf_no_final_newline(tmp_path, bom, newline, final, blank):
    lines = [json.dumps(o, ensure_ascii=False) for o in TERRA]
    if blank:
        lines.insert(1, "   ")
    text = newline.join(lines) + (newline if final else "")
    _write(tmp_path / "TERRa" / "train.jsonl", (b"\xef\xbb\xbf" if bom else b"") + text.encode())
    recs = data.load_split(tmp_path, "TERRa", "train")
    want = [tasks.NLIRecord(o["idx"], o["premise"], o["hypothesis"], o["label"]) for o in TERRA]
    assert recs == want


def test_u2028_inside_a_string_is_not_a_line_break(tmp_path):
    o = dict(TERRA[0], premise="Первая часть\u2028вторая часть.")
    _write(tmp_path / "TERRa" / "train.jsonl", (json.dumps(o, ensure_ascii=False) + "\n").encode())
    assert data.load_split(tmp_path, "TERRa", "train")[0].premise == o["premise"]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x1c"])
def test_every_jsonl_reader_keeps_line_separators_inside_strings(tmp_path, separator):
    """data files, `predict --input` and submission zips share one reader (issue: --input failed
    with "Unterminated string" on a record load_split read fine)."""
    import zipfile

    from mlx_rsg.predict import read_records
    from mlx_rsg.submission import read_submission

    o = dict(TERRA[0], premise=f"Первая часть{separator}вторая часть.")
    line = json.dumps(o, ensure_ascii=False) + "\r\n"
    _write(tmp_path / "TERRa" / "train.jsonl", line.encode())
    assert data.load_split(tmp_path, "TERRa", "train")[0].premise == o["premise"]
    (tmp_path / "input.jsonl").write_bytes(line.encode())
    assert read_records(str(tmp_path / "input.jsonl"), "terra")[0].premise == o["premise"]
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as z:
        z.writestr("RuCoS.jsonl", json.dumps({"idx": 0, "label": f"Анна{separator}Мария"},
                                             ensure_ascii=False) + "\n")  # fmt: skip
    assert read_submission(tmp_path / "s.zip")["RuCoS"][0] == f"Анна{separator}Мария"


@pytest.mark.parametrize(
    ("raw", "want"),
    [(True, True), (False, False), ("True", True), ("False", False), ("true", True), (1, True)],
)
def test_bool_labels(raw, want):
    o = {"idx": 3, "question": "Есть ли?", "passage": "Есть.", "label": raw}
    assert tasks.parse_record("DaNetQA", o).label is want


def test_parus_label_is_int_and_rcb_extra_fields_ignored():
    p = {"premise": "П.", "choice1": "А.", "choice2": "Б.", "question": "effect", "idx": 0}
    assert tasks.parse_record("PARus", {**p, "label": True}).label == 1
    assert type(tasks.parse_record("PARus", {**p, "label": True}).label) is int
    rcb = {"premise": "П.", "hypothesis": "Г.", "label": "neutral", "idx": 7, "verb": "знать",
           "no_negation": "no_negation", "genre": "kp"}  # fmt: skip
    assert tasks.parse_record("RCB", rcb) == tasks.NLIRecord(7, "П.", "Г.", "neutral")


# ------------------------------------------------------------------------------ errors


def _set(obj: dict, path: str, value) -> dict:
    """Copy of obj with the dotted/indexed field set (value ... = delete)."""
    obj = json.loads(json.dumps(obj))
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    target = obj
    for k in keys[:-1]:
        target = target[k]
    if value is ...:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return obj


# (task, split, field path to change, new value or ... to delete, field named, message regex)
BAD = [
    ("TERRa", "train", "hypothesis", ..., "hypothesis", "missing"),
    ("TERRa", "train", "label", "maybe", "label",
     r'unknown label "maybe" \(expected one of "entailment", "not_entailment"\)'),
    ("TERRa", "val", "label", ..., "label", "missing in the labelled split 'val'"),
    ("RCB", "train", "label", "not_entailment", "label", "unknown label"),
    ("LiDiRus", "test", "sentence2", ..., "sentence2", "missing"),
    ("LiDiRus", "test", "label", ..., "label", "missing in the labelled split 'test'"),
    ("LiDiRus", "test", "idx", "один", "idx", "expected an integer, got string"),
    ("PARus", "train", "premise", 5, "premise", "expected a string, got integer"),
    ("PARus", "train", "label", 2, "label", "unknown label 2"),
    ("PARus", "val", "question", "reason", "question", 'expected "cause" or "effect"'),
    ("DaNetQA", "train", "label", "yes", "label", 'unknown label "yes"'),
    ("DaNetQA", "train", "idx", 1.5, "idx", "expected an integer, got number"),
    ("RUSSE", "train", "start1", 99, "start1", r"99 is outside sentence1 \(\d+ characters\)"),
    ("RUSSE", "train", "end2", 40, "end2", "does not fit start2"),
    ("RUSSE", "val", "end1", 0, "end1", "does not fit start1"),
    ("RUSSE", "train", "label", "1", "label", 'unknown label "1"'),
    ("RWSD", "train", "target.span2_index", 50, "target.span2_index",
     r"word 50 is outside the text \(\d+ words\)"),
    ("RWSD", "train", "target.span1_text", ..., "target.span1_text", "missing"),
    ("RWSD", "val", "target", "Кубок", "target", "expected an object, got string"),
    ("MuSeRC", "train", "passage.questions.0.answers.2.label", 2,
     "passage.questions[0].answers[2].label", "unknown label 2"),
    ("MuSeRC", "val", "passage.questions.0.answers.1.label", ...,
     "passage.questions[0].answers[1].label", "missing in the labelled split 'val'"),
    ("MuSeRC", "train", "passage.questions.0.question", ..., "passage.questions[0].question",
     "missing"),
    ("MuSeRC", "train", "passage.questions", {}, "passage.questions",
     "expected a list, got object"),
    ("RuCoS", "train", "passage.entities.2.end", 10_000, "passage.entities[2]",
     r"span \d+\.\.10000 is outside the passage \(\d+ characters\)"),
    ("RuCoS", "train", "passage.entities.0.start", -1, "passage.entities[0]",
     "outside the passage"),
    ("RuCoS", "val", "qas.0.query", "Без заполнителя.", "qas[0].query", "has no @placeholder"),
    ("RuCoS", "val", "qas.0.answers", ..., "qas[].answers", "missing in the labelled split"),
    ("RuCoS", "train", "qas.0.answers.0.text", None, "qas[0].answers[0].text",
     "expected a string, got null"),
]  # fmt: skip


@pytest.mark.parametrize(("task", "split", "path", "value", "field", "msg"), BAD)
def test_bad_field_gives_one_located_line(task, split, path, value, field, msg, fixture_root,
                                          tmp_path):  # fmt: skip
    src = shutil.copytree(fixture_root / task, tmp_path / task)
    name = "LiDiRus.jsonl" if task == "LiDiRus" else f"{split}.jsonl"
    f = src / name
    raw = f.read_bytes()
    nl = b"\r\n" if b"\r\n" in raw else b"\n"
    lines = raw.split(nl)
    lines[1] = json.dumps(_set(json.loads(lines[1]), path, value), ensure_ascii=False).encode()
    f.write_bytes(nl.join(lines))
    with pytest.raises(DataError) as e:
        data.load_split(tmp_path, task, split)
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith(f"{f}:2: field '{field}': "), text
    assert re.search(msg, text), text


@pytest.mark.parametrize(
    ("line2", "msg"),
    [(b"{\"premise\": \"x\",", r":2: invalid JSON: .* \(column \d+\)$"),
     (b"[1, 2]", r":2: expected a JSON object, got list$"),
     (b"{\"premise\": \"\xff\xfe\"}", r":2: not UTF-8 \(invalid start byte\)$")],
)  # fmt: skip
def test_bad_line_gives_one_located_line(line2, msg, tmp_path):
    good = json.dumps(TERRA[0], ensure_ascii=False).encode()
    f = _write(tmp_path / "TERRa" / "train.jsonl", good + b"\n" + line2 + b"\n" + good + b"\n")
    with pytest.raises(DataError) as e:
        data.load_split(tmp_path, "TERRa", "train")
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{f}:2: ")
    assert re.search(msg, str(e.value)), str(e.value)


def test_errors_inside_archives_name_the_member(fixture_root, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(fixture_root / "PARus", src / "PARus")
    f = src / "PARus" / "val.jsonl"
    lines = f.read_text(encoding="utf-8").splitlines()
    lines[2] = json.dumps(_set(json.loads(lines[2]), "choice1", ...), ensure_ascii=False)
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    z = _zip_dir(src, tmp_path / "c.zip", prefix="combined/")
    where = r"c\.zip/combined/PARus/val\.jsonl:3: field 'choice1': missing$"
    with pytest.raises(DataError, match=where):
        data.load_split(z, "PARus", "val")
    gz = _write(tmp_path / "gz" / "PARus" / "val.jsonl.gz", gzip.compress(f.read_bytes()))
    with pytest.raises(DataError, match=r"val\.jsonl\.gz:3: field 'choice1': missing$"):
        data.load_split(tmp_path / "gz", "PARus", "val")
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"val\.jsonl\.gz: cannot read"):
        data.load_split(tmp_path / "gz", "PARus", "val")


def test_parse_record_default_location():
    with pytest.raises(DataError, match=r"^<input>: field 'premise': missing$"):
        tasks.parse_record("TERRa", {"hypothesis": "Г.", "idx": 0})
    with pytest.raises(DataError, match=r"^a\.jsonl:9: field 'label': unknown label"):
        tasks.parse_record("TERRa", dict(TERRA[0], label="yes"), "a.jsonl", 9)
    assert tasks.parse_record("TERRa", dict(TERRA[0])).label == "not_entailment"


# ------------------------------------------------------------------------------ real data


def _official_counts(root: Path) -> dict[tuple[str, str], int]:
    """`| Task/split.jsonl | records |` rows of the data's SOURCES.md."""
    text = (root / "SOURCES.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\w+)/(\w+)\.jsonl \| (\d+) \|", text, re.M)
    counts = {(t, "test" if t == "LiDiRus" else s): int(n) for t, s, n in rows}
    assert len(counts) == 22, counts  # 7 tasks x 3 splits + LiDiRus
    return counts


# The official split sizes (russiansuperglue.com), independent of SOURCES.md
OFFICIAL = {
    ("LiDiRus", "test"): 1104, ("RCB", "train"): 438, ("RCB", "val"): 220, ("RCB", "test"): 438,
    ("PARus", "train"): 400, ("PARus", "val"): 100, ("PARus", "test"): 500,
    ("MuSeRC", "train"): 500, ("MuSeRC", "val"): 100, ("MuSeRC", "test"): 322,
    ("TERRa", "train"): 2616, ("TERRa", "val"): 307, ("TERRa", "test"): 3198,
    ("RUSSE", "train"): 19845, ("RUSSE", "val"): 8505, ("RUSSE", "test"): 18892,
    ("RWSD", "train"): 606, ("RWSD", "val"): 204, ("RWSD", "test"): 154,
    ("DaNetQA", "train"): 1749, ("DaNetQA", "val"): 821, ("DaNetQA", "test"): 805,
}  # fmt: skip


@pytest.mark.parametrize("task", tasks.TASKS)
def test_real_data_counts(task, real_rsg_root):
    splits = data.available_splits(real_rsg_root, task)
    if not splits:
        pytest.skip(f"{task} is not in {real_rsg_root} (SOURCES.md: no copy of it was found)")
    counts = _official_counts(real_rsg_root)
    assert splits == sorted({s for t, s in OFFICIAL if t == task}, key=data.SPLITS.index)
    for split in splits:
        recs = data.load_split(real_rsg_root, task, split)
        assert len(recs) == counts[task, split] == OFFICIAL[task, split], split
        if split == "test" and task != "LiDiRus":
            assert all(getattr(r, "label", None) is None for r in recs)
        if task == "MuSeRC":
            n_q = sum(len(r.questions) for r in recs)
            n_a = sum(len(q.answers) for r in recs for q in r.questions)
            assert (n_q, n_a) == {"train": (2897, 11950), "val": (529, 2235),
                                  "test": (1813, 7614)}[split]  # fmt: skip


def test_real_data_quirks(real_rsg_root):
    if not data.available_splits(real_rsg_root, "RUSSE"):
        pytest.skip("RUSSE not present")
    raw = next((real_rsg_root / "RUSSE").glob("train.jsonl")).read_bytes()
    assert b"\r\n" in raw  # the CRLF quirk is really there...
    recs = data.load_split(real_rsg_root, "RUSSE", "train")
    # ...and so are end offsets one past the sentence, which the reader keeps
    assert sum(r.end2 == len(r.sentence2) + 1 for r in recs) > 1000
    assert {type(r.label) for r in recs} == {bool}
    lid = data.load_split(real_rsg_root, "LiDiRus", "test")
    assert {r.label for r in lid} == {"entailment", "not_entailment"}
    assert [r.idx for r in lid] == list(range(len(lid)))


# ------------------------------------------------------------------------------ CLI


def _run(*args, env=None):
    from click.testing import CliRunner

    from mlx_rsg.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def test_cli_data_info_table(fixture_root):
    res = _run("data", "info", fixture_root)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == str(fixture_root)
    assert lines[1].split() == ["task", "split", "examples", "mean", "chars", "labels"]
    rows = {tuple(s.split()[:2]): s for s in lines[3:]}
    assert len(rows) == 25  # 8 tasks x 3 splits + LiDiRus
    # column starts line up with the header (a readable aligned table)
    assert all(s.index(s.split()[2]) + len(s.split()[2]) == lines[1].index("examples") + 8
               for s in lines[3:])  # fmt: skip
    # hand-counted from the fixture files
    terra = data.load_split(fixture_root, "TERRa", "train")
    mean = sum(len(r.premise) + len(r.hypothesis) for r in terra) / len(terra)
    assert rows["TERRa", "train"].split()[2:] == [
        "4", f"{mean:.0f}", "entailment", "2", "(50%),", "not_entailment", "2", "(50%)",
    ]  # fmt: skip
    assert rows["RCB", "test"].split()[2] == "2" and rows["RCB", "test"].endswith("unlabelled")
    assert rows["MuSeRC", "train"].split()[2:4] == ["2", "244"]
    assert "answers: 1 4 (50%), 0 4 (50%)" in rows["MuSeRC", "train"]
    assert rows["RuCoS", "train"].endswith("1.50 gold answers per query")
    assert rows["LiDiRus", "test"].endswith("not_entailment 3 (60%), entailment 2 (40%)")


def test_cli_data_info_missing_task_and_errors(fixture_root, tmp_path):
    shutil.copytree(fixture_root / "PARus", tmp_path / "PARus")
    res = _run("data", "info", tmp_path)
    assert res.exit_code == 0
    assert [s.split()[:3] for s in res.output.splitlines()[3:] if "not found" in s] == [
        [t, "-", "0"] for t in tasks.TASKS if t != "PARus"
    ]
    (tmp_path / "PARus" / "val.jsonl").write_text('{"idx": 0}\n', encoding="utf-8")
    res = _run("data", "info", tmp_path)
    assert res.exit_code == 2
    assert res.output == f"error: {tmp_path}/PARus/val.jsonl:1: field 'question': missing\n"


def test_cli_data_download_offline(tmp_path):
    out = tmp_path / "rsg"
    res = _run("data", "download", out, env={"HF_HUB_OFFLINE": "1"})
    assert res.exit_code == 2
    assert res.output == (
        "error: cannot reach the Hugging Face Hub to download RussianNLP/russian_super_glue "
        "(offline?): HF_HUB_OFFLINE is set\n"
    )
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        # what huggingface_hub raises when DNS fails (its first line names the network error)
        ("hub", "(offline?): ConnectError: [Errno -3] Temporary failure in name resolution"),
        (ConnectionError("Connection refused"), "(offline?): Connection refused"),
        (RuntimeError("disk quota"), "failed: RuntimeError: disk quota"),
    ],
)
def test_cli_data_download_failures_leave_nothing(exc, said, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    if exc == "hub":
        exc = LocalEntryNotFoundError(
            "Got: ConnectError: [Errno -3] Temporary failure in name resolution\n"
            "An error happened while trying to locate the files on the Hub."
        )
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def failing(repo_id, **kw):
        calls.append((repo_id, kw["repo_type"]))
        (Path(kw["local_dir"]) / "partial.jsonl").write_text("{")  # must not survive
        raise exc

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    res = _run("data", "download", tmp_path / "rsg")
    assert res.exit_code == 2 and calls == [("RussianNLP/russian_super_glue", "dataset")]
    assert res.output.count("\n") == 1
    assert res.output.startswith("error: ") and res.output.endswith(said + "\n"), res.output
    assert "RussianNLP/russian_super_glue" in res.output
    assert list(tmp_path.iterdir()) == []


def test_cli_data_download_success(tmp_path, monkeypatch, fixture_root):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "rsg"

    def fake_snapshot(repo_id, **kw):  # the Hub copy as the official zip
        _zip_dir(fixture_root, Path(kw["local_dir"]) / "combined.zip", prefix="combined/")
        (Path(kw["local_dir"]) / ".cache").mkdir()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    res = _run("data", "download", out)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["combined.zip"]
    assert res.output.splitlines()[-1] == (
        "tasks readable in the official layout: " + ", ".join(tasks.TASKS)
    )
    assert _load_all(out) == _load_all(fixture_root)
    res = _run("data", "download", out)
    assert res.exit_code == 2 and "already exists (use --force" in res.output


def test_length_report_by_hand():
    from mlx_rsg.data.info import fitting_max_len, length_report

    lengths = [10, 40, 20, 30, 100, 50, 60, 70, 80, 90] * 2  # 20 units, sorted: 10,10,20,...,100
    rep = length_report(lengths, max_len=64)
    assert (rep["units"], rep["p50"], rep["p95"], rep["max"]) == (20, 50, 100, 100)
    assert rep["truncated"] == 8 / 20  # 70, 80, 90, 100 twice
    assert fitting_max_len(lengths) == 128  # the 19th of 20 is 100 -> 4 x 32
    assert fitting_max_len(lengths, coverage=0.5) == 64  # the 10th is 50
    assert fitting_max_len([]) == 32 and length_report([], 64) == {"units": 0}


def test_cli_data_info_token_lengths(fixture_root, tiny_model_dir):
    from mlx_rsg.model.backbone import load_tokenizer

    res = _run("data", "info", fixture_root, "--model", tiny_model_dir, "--max-len", "40")
    assert res.exit_code == 0, res.output
    header, _, *lines = res.output.splitlines()[1:]
    assert header.split()[5:10] == ["tokens", "p50/p95/max", "over", "40", "95%"]
    row = next(s.split() for s in lines if s.startswith("TERRa") and " train " in s)
    # by hand: BOS + each piece of the TERRa prompt tokenised on its own
    tok = load_tokenizer(tiny_model_dir)
    want = sorted(
        1 + sum(len(tok.encode(p, add_special_tokens=False))
                for p in ("Посылка:", " " + r.premise, "\nГипотеза:", " " + r.hypothesis))
        for r in data.load_split(fixture_root, "TERRa", "train")
    )  # fmt: skip
    p50, p95, top = want[(len(want) - 1) // 2], want[-1], want[-1]
    over = sum(n > 40 for n in want) / len(want)
    assert row[4:7] == [f"{p50}/{p95}/{top}", f"{over:.0%}", str(32 * -(-p95 // 32))]
    # one pass at --max-len 40: every unit cut to 40; a TERRa unit shares nothing
    cost = f"{sum(min(n, 40) for n in want):,}"
    assert row[7:9] == [cost, cost]


def test_token_cost_counts_a_records_shared_passage_once(tiny_model_dir):
    """data info's cost: a MuSeRC passage's answers run it once (what predict does)."""
    from test_shared_prefix import record

    from mlx_rsg.data.info import token_cost
    from mlx_rsg.model import shared_prefix
    from mlx_rsg.model.backbone import load_tokenizer
    from mlx_rsg.model.batching import encode_units

    tok = load_tokenizer(tiny_model_dir)
    records = [record(0), record(1, "Коротко.")]
    encoded = encode_units(tasks.make_units("MuSeRC", records), tok, 200)
    lengths = [len(e.ids) for e in encoded]
    prefix = shared_prefix.common_prefix_len([e.ids for e in encoded[:3]])  # record 0's passage
    assert prefix > shared_prefix.MIN_SHARED
    cost = token_cost("MuSeRC", records, tok, 200)
    assert cost == {"tokens": sum(lengths), "once": sum(lengths) - 2 * prefix}
