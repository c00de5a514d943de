"""One example record per task for the page at /, in the official JSON format without its gold
labels: hand-written here (our own sentences), or each task's first val record from a data
directory (`mlx-rsg serve --data RSG_DIR`; LiDiRus: its diagnostic file; RuCoS: the first query).
Character offsets are computed from the text, so the examples cannot drift from it."""

from __future__ import annotations

from typing import Any

from mlx_rsg.data.files import available_splits, read_objects
from mlx_rsg.errors import UserError
from mlx_rsg.tasks import TASKS, parse_record


def _span(text: str, word: str) -> tuple[int, int]:
    start = text.index(word)
    return start, start + len(word)


def _russe() -> dict[str, Any]:
    s1, s2 = "Ключ от сарая висел на гвозде.", "В овраге бил холодный ключ."
    (a, b), (c, d) = _span(s1, "Ключ"), _span(s2, "ключ")
    return {"idx": 0, "word": "ключ", "sentence1": s1, "sentence2": s2,
            "start1": a, "end1": b, "start2": c, "end2": d}  # fmt: skip


def _rwsd() -> dict[str, Any]:
    text = "Кубок не поместился в чемодан, потому что он был слишком большой."
    words = text.split(" ")
    return {"idx": 0, "text": text, "target": {
        "span1_text": "Кубок", "span1_index": words.index("Кубок"),
        "span2_text": "он", "span2_index": words.index("он")}}  # fmt: skip


def _rucos() -> dict[str, Any]:
    text = ("Сборная Бразилии обыграла команду Аргентины в финале турнира в Рио-де-Жанейро.\n"
            "@highlight\nБразилия выиграла турнир")  # fmt: skip
    names = ("Бразилии", "Аргентины", "Рио-де-Жанейро", "Бразилия")
    entities = [dict(zip(("start", "end"), _span(text, n), strict=True)) for n in names]
    query = "Болельщики @placeholder праздновали победу всю ночь."
    return {"idx": 0, "passage": {"text": text, "entities": entities},
            "qas": [{"idx": 0, "query": query}]}  # fmt: skip


BUILTIN: dict[str, dict[str, Any]] = {
    "LiDiRus": {"idx": 0, "sentence1": "Мальчик прочитал все книги на полке.",
                "sentence2": "Мальчик не прочитал ни одной книги."},
    "RCB": {"idx": 0, "premise": "Учитель сказал, что экзамен перенесли на пятницу.",
            "hypothesis": "Экзамен перенесли.", "verb": "сказать", "negation": "no_negation"},
    "PARus": {"idx": 0, "premise": "Девочка уронила стакан на пол.",
              "choice1": "Стакан разбился.", "choice2": "Стакан наполнился водой.",
              "question": "effect"},
    "MuSeRC": {"idx": 0, "passage": {
        "text": "(1) Весной Пётр посадил в саду три яблони. (2) Через пять лет они дали первый "
                "урожай. (3) Яблоки оказались кислыми, и Пётр сварил из них варенье.",
        "questions": [{"idx": 0, "question": "Что Пётр сделал с яблоками?", "answers": [
            {"idx": 0, "text": "Сварил варенье."}, {"idx": 1, "text": "Продал на рынке."},
            {"idx": 2, "text": "Сделал из них варенье."}]}]}},
    "TERRa": {"idx": 0, "premise": "Вчера в городе открылся новый мост через реку.",
              "hypothesis": "В городе есть мост через реку."},
    "RUSSE": _russe(),
    "RWSD": _rwsd(),
    "DaNetQA": {"idx": 0, "question": "Растёт ли бамбук быстрее всех растений?",
                "passage": "Некоторые виды бамбука вырастают почти на метр в сутки: это самые "
                           "быстрорастущие растения на Земле."},
    "RuCoS": _rucos(),
}  # fmt: skip


def without_labels(task: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The record as a user would send it: no gold label anywhere in it."""
    obj = {k: v for k, v in obj.items() if k not in ("label", "gold_sense1", "gold_sense2")}
    if task == "MuSeRC":
        passage = obj["passage"]
        questions = [
            {**q, "answers": [{k: v for k, v in a.items() if k != "label"} for a in q["answers"]]}
            for q in passage["questions"]
        ]
        obj["passage"] = {**passage, "questions": questions}
    if task == "RuCoS":
        qas = [{k: v for k, v in q.items() if k != "answers"} for q in obj["qas"][:1]]
        obj = {**obj, "qas": qas}
    return obj


def examples(data_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """An example per task: the data's first val record where `data_dir` has one, else ours."""
    out = dict(BUILTIN)
    if data_dir is None:
        return out
    for task in TASKS:
        split = "test" if task == "LiDiRus" else "val"
        if split not in available_splits(data_dir, task):
            continue
        display, values = read_objects(data_dir, task, split)
        if not values:
            continue
        line, obj = values[0]
        record = without_labels(task, obj)
        try:
            parse_record(task, record, display, line)
        except UserError as e:
            raise UserError(f"--data: {e}") from None
        out[task] = record
    return out
