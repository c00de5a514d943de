"""Records -> units -> token ids -> predictions, for every task, with toy tokenizers."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

import mlx_rsg  # noqa: F401
from mlx_rsg import data
from mlx_rsg import tasks as T
from mlx_rsg.errors import UserError
from mlx_rsg.tasks import (
    DaNetQARecord,
    MuSeRCAnswer,
    MuSeRCQuestion,
    MuSeRCRecord,
    NLIRecord,
    PARusRecord,
    RuCoSRecord,
    RUSSERecord,
    RWSDRecord,
    units,
)


class WordTokenizer:
    """Each word with its leading whitespace is one token (like "▁word" in SentencePiece)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.words: dict[int, str] = {}

    def encode(self, s: str) -> list[int]:
        ids = []
        for w in re.findall(r"\s*\S+|\s+", s):
            if w not in self.vocab:
                self.vocab[w] = len(self.vocab) + 10
                self.words[self.vocab[w]] = w
            ids.append(self.vocab[w])
        return ids

    def decode(self, ids) -> str:
        return "".join(self.words[i] for i in ids)


def chars(s: str) -> list[int]:
    return [ord(c) for c in s]


def unchars(ids) -> str:
    return "".join(chr(i) for i in ids)


def text_of(unit: T.Unit) -> str:
    return "".join(t for t, _ in unit.pieces)


def marked_of(unit: T.Unit) -> list[str]:
    return [t for t, m in unit.pieces if m]


# ------------------------------------------------------------------------------ specs


def test_specs_cover_the_nine_tasks_consistently():
    assert set(T.REGISTRY) == set(T.TASKS)
    for name, spec in T.REGISTRY.items():
        assert spec.name == name
        assert spec.pooling == ("span" if spec.spans else "last")
        assert spec.head in T.REGISTRY
        # a shared head must agree on the label set
        assert T.REGISTRY[spec.head].labels == spec.labels
    assert T.REGISTRY["LiDiRus"].head == "TERRa" and not T.REGISTRY["LiDiRus"].has_train
    assert {t for t, s in T.REGISTRY.items() if s.choice} == {"PARus", "RuCoS"}
    # the two words, and the last token of a question after the text
    assert {t for t, s in T.REGISTRY.items() if s.spans == 3} == {"RUSSE", "RWSD"}
    assert T.REGISTRY["RCB"].metrics == ("f1", "accuracy")
    assert T.REGISTRY["MuSeRC"].metrics == ("f1a", "em")


# ------------------------------------------------------------------------------ units


def test_nli_units_and_lidirus_uses_terra_labels():
    recs = [NLIRecord(3, "Кошка сидела.", "Кошка не сидела.", "not_entailment")]
    (u,) = T.make_units("LiDiRus", recs)
    assert u.key == (3,) and u.group is None and u.label == 1
    assert text_of(u) == "Посылка: Кошка сидела.\nГипотеза: Кошка не сидела."
    (u,) = T.make_units("RCB", [NLIRecord(0, "а", "б", "neutral")])
    assert u.label == 2
    (u,) = T.make_units("TERRa", [NLIRecord(0, "а", "б", None)])
    assert u.label is None


def test_parus_two_choices_in_one_group():
    r = PARusRecord(7, "Мужчина открыл кран.", "Пол намок.", "Вода потекла.", "effect", 1)
    units = T.make_units("PARus", [r])
    assert [u.key for u in units] == [(7, 0), (7, 1)]
    assert {u.group for u in units} == {(7,)}
    assert [u.label for u in units] == [0, 1]
    assert text_of(units[1]) == "Мужчина открыл кран.\nСледствие: Вода потекла."
    r2 = PARusRecord(8, "Пол намок.", "Дождь.", "Солнце.", "cause", None)
    assert "\nПричина: " in text_of(T.make_units("PARus", [r2])[0])
    assert [u.label for u in T.make_units("PARus", [r2])] == [None, None]


def test_parus_mirrored_makes_the_right_choice_the_premise_and_turns_the_question():
    r = PARusRecord(7, "Мужчина открыл кран.", "Пол намок.", "Вода потекла.", "effect", 1)
    (m,) = T.REGISTRY["PARus"].augmented(r)
    assert m == PARusRecord(-8, "Вода потекла.", "Пол намок.", "Мужчина открыл кран.", "cause", 1)
    units = T.make_units("PARus", [m])
    assert [u.key for u in units] == [(-8, 0), (-8, 1)] and [u.label for u in units] == [0, 1]
    assert text_of(units[1]) == "Вода потекла.\nПричина: Мужчина открыл кран."
    r0 = PARusRecord(3, "Пол намок.", "Дождь.", "Солнце.", "cause", 0)
    (m0,) = T.REGISTRY["PARus"].augmented(r0)
    assert (m0.premise, m0.choice1, m0.choice2, m0.question, m0.label) == (
        "Дождь.", "Пол намок.", "Солнце.", "effect", 0)  # fmt: skip
    assert T.REGISTRY["PARus"].augmented(replace(r0, label=None)) == []
    assert T.REGISTRY["TERRa"].augmented(NLIRecord(0, "а", "б", "entailment")) == []


def muserc_record(idx=0):
    q0 = MuSeRCQuestion(0, "Кто пришёл?", (MuSeRCAnswer(0, "Иван", 1), MuSeRCAnswer(1, "Пётр", 0)))
    q1 = MuSeRCQuestion(1, "Когда?", (MuSeRCAnswer(2, "Утром", 0), MuSeRCAnswer(3, "Вечером", 1)))
    return MuSeRCRecord(idx, "(1) Вечером пришёл Иван.", (q0, q1))


def test_muserc_one_label_unit_per_answer():
    units = T.make_units("MuSeRC", [muserc_record(5)])
    assert [u.key for u in units] == [(5, 0, 0), (5, 0, 1), (5, 1, 2), (5, 1, 3)]
    assert [u.label for u in units] == [1, 0, 0, 1]
    assert all(u.group is None for u in units)
    assert text_of(units[3]).endswith("Вопрос: Когда?\nОтвет: Вечером")


def test_russe_marks_the_target_word_in_both_sentences():
    # The official offsets (this is the shape of RUSSE val idx 0) take one character too many.
    r = RUSSERecord(0, "здоровье", "На здоровье не жалуюсь", "Как здоровье?", 3, 12, 4, 13, True)
    (u,) = T.make_units("RUSSE", [r])
    assert marked_of(u) == [" здоровье", " здоровье", "?"]
    assert text_of(u) == ("Слово: здоровье\n1: На здоровье не жалуюсь\n2: Как здоровье?"
                          "\nВопрос: слово «здоровье» в 1 и 2 значит одно и то же?")  # fmt: skip
    tok = WordTokenizer()
    ids, spans = T.encode_unit(u, tok.encode, 64, bos=2)
    assert ids[0] == 2 and len(spans) == 3
    assert [tok.decode(ids[s:e]) for s, e in spans] == [" здоровье", " здоровье", "?"]
    assert spans[2] == (len(ids) - 1, len(ids))  # the last token: it sees the whole text
    ids, spans = T.encode_unit(u, chars, 200, bos=None)
    assert [unchars(ids[s:e]) for s, e in spans] == [" здоровье", " здоровье", "?"]


def test_russe_spans_are_snapped_to_whole_words():
    """Train/val ends run one character past the word, test ends one character short of it
    ("доск" for "доска"): both mark the whole word."""
    from mlx_rsg.tasks.russe import word_span

    text = " На доске мелом, доска стоит."
    assert text[slice(*word_span(text, 4, 8))] == "доске"  # one short
    assert text[slice(*word_span(text, 4, 10))] == "доске"  # one past: the space dropped
    assert text[slice(*word_span(text, 17, 23))] == "доска"  # one past: the space dropped
    assert text[slice(*word_span(text, 17, 21))] == "доска"
    r = RUSSERecord(0, "доска", "На доске мелом", "Доска стоит", 3, 7, 0, 4, None)
    (u,) = T.make_units("RUSSE", [r])
    assert marked_of(u)[:2] == [" доске", " Доска"]


def test_russe_real_test_spans_mark_whole_words(real_rsg_root):
    """Every span of the real RUSSE test file, snapped, is a whole word holding the official
    span's letters; for almost all of them the official span was one letter short."""
    from mlx_rsg.data import load_split
    from mlx_rsg.tasks.russe import word_span

    short = total = 0
    for r in load_split(real_rsg_root, "RUSSE", "test"):
        for text, start, end in ((r.sentence1, r.start1, r.end1), (r.sentence2, r.start2, r.end2)):
            s, e = word_span(text, start, end)
            word = text[s:e]
            assert word.isalnum() or "-" in word, (r.idx, word)
            assert s == 0 or not text[s - 1].isalnum()
            assert e == len(text) or not text[e].isalnum()
            official = text[start:end].rstrip(" ,.;:!?»\")")
            assert official and word.startswith(official.lstrip()), (r.idx, official, word)
            short += e == end + 1
            total += 1
    assert total == 37_784 and short >= 37_000


def test_rwsd_spans_found_by_text_even_with_wrong_word_index():
    text = "Я положил книгу на стол, и на нем осталась пыль."
    # span2's official index points at the first "на" (word 3); the text is at word 6
    r = RWSDRecord(1, text, 4, "стол", 3, "на нем", False)
    (u,) = T.make_units("RWSD", [r])
    assert marked_of(u) == [" стол", " на нем", "?"]  # punctuation after "стол" moved out
    assert u.span_order == (0, 1, 2)
    assert text_of(u).endswith("осталась пыль.\nВопрос: «на нем» — это «стол»?")
    tok = WordTokenizer()
    ids, spans = T.encode_unit(u, tok.encode, 64, bos=2)
    assert [tok.decode(ids[s:e]) for s, e in spans] == [" стол", " на нем", "?"]


def test_rwsd_spans_end_where_a_word_ends():
    """A span text that begins a longer word nearer the official index ("его работа" in "его
    работать", a val record whose index is 17 words off) is not the span."""
    from mlx_rsg.tasks.rwsd import rwsd_spans, substituted

    text = "Марк заставлял его работать, потому что его работа была прекрасной."
    r = RWSDRecord(3, text, 0, "Марк", 2, "его работа", False)
    (_, _), (s2, e2) = rwsd_spans(r)
    assert (text[s2:e2], s2) == ("его работа", text.index("его работа был"))
    assert substituted(r) == ("Марк заставлял его работать, потому что Марк",
                              "работа была прекрасной.")  # fmt: skip
    cut = RWSDRecord(4, "Он сказал, что чемодан, мал.", 3, "чемодан,", 0, "Он", True)
    assert rwsd_spans(cut)[0] == (15, 23)  # a span ending in punctuation ends a word too


def test_rwsd_spans_reported_span1_first_when_span2_comes_first():
    text = "Когда он вошёл, Иван снял шляпу."
    r = RWSDRecord(2, text, 3, "Иван", 1, "он", True)
    (u,) = T.make_units("RWSD", [r])
    assert marked_of(u) == [" он", " Иван", "?"]  # text order
    ids, spans = T.encode_unit(u, chars, 100, bos=None)
    assert [unchars(ids[s:e]) for s, e in spans] == [" Иван", " он", "?"]  # span1, span2
    assert u.label == 1


def test_danetqa_units():
    (u,) = T.make_units("DaNetQA", [DaNetQARecord(4, "Есть ли вода на Марсе?", "Лёд есть.", True)])
    assert text_of(u) == "Текст: Лёд есть.\nВопрос: Есть ли вода на Марсе?"
    assert u.label == 1 and u.key == (4,)


def rucos_record(answers=("Россия",), idx=0):
    text = "Россия и ЕС подписали договор.\n@highlight\nЕС, Россия, Китай.\nКитай промолчал."
    ents = []
    for word in ("Россия", "ЕС", "ЕС,", "Россия", "Китай", "Китай"):
        start = text.find(word, ents[-1][0] + 1 if ents else 0)
        ents.append((start, start + len(word)))
    return RuCoSRecord(idx, text, tuple(ents), "Договор подписала @placeholder.", answers)


def test_rucos_candidates_deduplicated_and_placeholder_filled():
    r = rucos_record()
    assert T.rucos_candidates(r) == ["Россия", "ЕС", "Китай"]
    units = T.make_units("RuCoS", [r])
    assert [u.key for u in units] == [(0, 0), (0, 1), (0, 2)]
    assert {u.group for u in units} == {(0,)}
    assert [u.label for u in units] == [1, 0, 0]
    assert text_of(units[1]).endswith("\nЗапрос: Договор подписала ЕС.")
    assert "@highlight" not in text_of(units[0]) and "@placeholder" not in text_of(units[0])
    assert [u.label for u in T.make_units("RuCoS", [rucos_record(None)])] == [None] * 3


def test_rucos_training_keeps_the_gold_and_samples_negatives():
    recs = [rucos_record(("Китай",), idx=i) for i in range(20)]
    rng = np.random.default_rng(0)
    units = T.make_units("RuCoS", recs, train=True, rng=rng, max_negatives=1)
    assert len(units) == 40
    for i in range(20):
        group = [u for u in units if u.group == (i,)]
        assert [u.label for u in group].count(1) == 1 and len(group) == 2
        assert (i, 2) in [u.key for u in group]  # Китай is candidate 2
    negatives = {u.key[1] for u in units if u.label == 0}
    assert negatives == {0, 1}  # both negatives get sampled across records
    all_neg = T.make_units("RuCoS", recs[:1], train=True, rng=rng)
    assert len(all_neg) == 3
    # no gold among the candidates: nothing to learn, the record is skipped in training only
    lost = rucos_record(("Германия",))
    assert T.make_units("RuCoS", [lost], train=True, rng=rng) == []
    assert len(T.make_units("RuCoS", [lost])) == 3


# --------------------------------------------------------------------------- truncation


def test_water_fill_cuts_the_longest_first():
    assert units._water_fill([10, 4, 7], 5) == ([6, 4, 6], 0)
    assert units._water_fill([3, 3], 10) == ([0, 0], 4)


def test_truncation_cuts_the_passage_keeps_the_question():
    passage = "абвгд" * 40
    (u,) = T.make_units("DaNetQA", [DaNetQARecord(0, "Правда ли?", passage, True)])
    ids, spans = T.encode_unit(u, chars, 60, bos=1)
    assert len(ids) == 60 and spans == []
    text = unchars(ids[1:])
    assert text.endswith("\nВопрос: Правда ли?") and text.startswith("Текст: абвгд")


def test_truncation_never_cuts_a_marked_span():
    left = " ".join(f"слово{i}" for i in range(30))
    right = " ".join(f"после{i}" for i in range(30))
    s1 = f"{left} цель {right}"
    start = s1.index("цель")
    r = RUSSERecord(0, "цель", s1, "цель", start, start + 4, 0, 4, False)
    (u,) = T.make_units("RUSSE", [r])
    tok = WordTokenizer()
    for max_len in (80, 40, 20, 12):
        ids, spans = T.encode_unit(u, tok.encode, max_len, bos=2)
        assert len(ids) <= max_len
        # the word at the start of sentence 2 is tokenised with its space, like mid-sentence
        assert [tok.decode(ids[s:e]) for s, e in spans] == [" цель", " цель", "?"]
    # the words right before the span are the ones kept
    ids, spans = T.encode_unit(u, tok.encode, 20, bos=2)
    before = tok.decode(ids[1 : spans[0][0]])
    assert before.endswith(" слово29") and "слово0 " not in before
    with pytest.raises(UserError, match="^RUSSE record idx 0: its marked words alone need 4 "
                       "tokens, more than its max length 2 "):
        T.encode_unit(u, tok.encode, 2, bos=2)


def test_a_long_premise_loses_its_start():
    """The hypothesis restates the premise's last sentence (RCB: 171 of 220 val records): a
    premise too long for max_len keeps its end."""
    premise = " ".join(f"п{i}." for i in range(60))
    (u,) = T.make_units("RCB", [NLIRecord(0, premise, "Гипотеза тут.", "neutral")])
    ids, _ = T.encode_unit(u, chars, 80, bos=None)
    text = unchars(ids)
    assert len(ids) == 80 and text.startswith("Посылка:") and "п59." in text and "п0." not in text
    assert text.endswith("\nГипотеза: Гипотеза тут.")


def test_encode_without_truncation_is_the_concatenation():
    r = NLIRecord(0, "Кошка сидела.", "Кошка не сидела.", "entailment")
    (u,) = T.make_units("TERRa", [r])
    ids, spans = T.encode_unit(u, chars, 1000, bos=None)
    assert unchars(ids) == text_of(u) and spans == []


# ----------------------------------------------------------------------------- decoding


def test_decode_each_kind_of_task():
    recs = [NLIRecord(0, "a", "b", None), NLIRecord(1, "a", "b", None)]
    keys = [(1,), (0,)]
    scores = np.array([[0.1, 0.9], [2.0, -1.0]])
    assert T.decode("LiDiRus", recs, keys, scores) == ["entailment", "not_entailment"]

    r = RUSSERecord(0, "w", "w", "w", 0, 1, 0, 1, None)
    assert T.decode("RUSSE", [r], [(0,)], np.array([[0.0, 1.0]])) == [True]

    p = [PARusRecord(0, "п", "a", "b", "cause", None), PARusRecord(1, "п", "a", "b", "cause", None)]
    keys = [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert T.decode("PARus", p, keys, np.array([[0.3], [0.1], [-1.0], [2.0]])) == [0, 1]

    m = muserc_record()
    keys = [u.key for u in T.make_units("MuSeRC", [m])]
    got = T.decode("MuSeRC", [m], keys, np.array([[0, 1], [1, 0], [1, 0], [0, 1.0]]))
    assert got == [{0: 1, 1: 0, 2: 0, 3: 1}]
    # every question has a correct answer: one with none said gets its largest margin
    got = T.decode("MuSeRC", [m], keys, np.array([[0, 1], [1, 0], [1, -2], [3, 1.0]]))
    assert got == [{0: 1, 1: 0, 2: 0, 3: 1}]  # question 1: margins -3 and -2
    got = T.decode("MuSeRC", [m], keys, np.array([[2, 1], [5, 0], [1, 0], [0, 1.0]]))
    assert got == [{0: 1, 1: 0, 2: 0, 3: 1}]  # question 0: margins -1 and -5

    rc = rucos_record()
    keys = [(0, 2), (0, 0), (0, 1)]  # any unit order
    assert T.decode("RuCoS", [rc], keys, np.array([[0.5], [0.2], [-3.0]])) == ["Китай"]
    empty = RuCoSRecord(1, "нет сущностей", (), "@placeholder", None)
    assert T.make_units("RuCoS", [empty]) == []
    assert T.decode("RuCoS", [empty], [], np.zeros((0, 1))) == [""]


def test_gold_units_decode_to_gold_predictions():
    """Scores that favour each unit's own label decode back to the gold labels."""
    cases = {
        "TERRa": [NLIRecord(0, "a", "b", "entailment"), NLIRecord(1, "a", "b", "not_entailment")],
        "PARus": [PARusRecord(0, "п", "a", "b", "cause", 1)],
        "MuSeRC": [muserc_record()],
        "RuCoS": [rucos_record(("ЕС",))],
        "RWSD": [RWSDRecord(0, "Иван сказал, что он устал.", 0, "Иван", 3, "он", True)],
    }
    for task, recs in cases.items():
        spec = T.REGISTRY[task]
        units = T.make_units(task, recs)
        n_out = 1 if spec.choice else len(spec.labels)
        scores = np.zeros((len(units), n_out))
        for i, u in enumerate(units):
            scores[i, 0 if spec.choice else u.label] = 1.0 if not spec.choice else u.label
        got = T.decode(task, recs, [u.key for u in units], scores)
        assert got == T.gold_predictions(task, recs), task


# ----------------------------------------------------------------------- on stored data


def _records(root, task, split):
    if split not in data.available_splits(root, task):
        pytest.skip(f"{task}/{split} not in {root}")
    return data.load_split(root, task, split)


@pytest.mark.parametrize("task", T.TASKS)
def test_units_of_every_fixture_split(task, request):
    root = request.getfixturevalue("fixture_root")
    tok = WordTokenizer()
    for split in ("train", "val", "test"):
        if hasattr(data, "available_splits") and split not in data.available_splits(root, task):
            continue
        recs = _records(root, task, split)
        units = T.make_units(task, recs)
        assert len({u.key for u in units}) == len(units)
        # contiguous per record, in record order
        order = [u.key[0] for u in units]
        firsts = list(dict.fromkeys(order))
        assert order == sorted(order, key=firsts.index)
        assert all(u.pieces and all(isinstance(t, str) for t, _ in u.pieces) for u in units)
        for u in units:
            ids, spans = T.encode_unit(u, tok.encode, 48, bos=2)
            assert len(ids) <= 48 and len(spans) == T.REGISTRY[task].spans
            got = [tok.decode(ids[s:e]).strip() for s, e in spans]
            want = [t.strip() for t, m in u.pieces if m]
            assert sorted(got) == sorted(want)


def test_rwsd_spans_on_the_real_data(request):
    root = request.getfixturevalue("real_rsg_root")
    recs = _records(root, "RWSD", "train") + _records(root, "RWSD", "val")
    found = 0
    for r in recs:
        (s1, e1), (s2, e2) = T.rwsd_spans(r)
        assert e1 <= s2 or e2 <= s1, r.idx  # never overlapping
        found += r.text[s1:e1] == r.span1_text.strip() and r.text[s2:e2] == r.span2_text.strip()
    # the few misses are records whose span text is not verbatim in the text
    assert found / len(recs) > 0.97, found
