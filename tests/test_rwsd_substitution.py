"""RWSD decided by substitution (model/substitution.py, train/decide.py): where the candidate goes,
how records are decided together, that the likelihoods are the base language model's own, that a
trained, reloaded and quantized run decides with it, and the probe (benchmarks/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from tiny_model import tiny_model_dir, tiny_train_config  # noqa: F401

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import bench_rwsd_scoring  # noqa: E402
import rwsd_substitution as probe  # noqa: E402

from mlx_rsg import predict  # noqa: E402
from mlx_rsg import train as T  # noqa: E402
from mlx_rsg.data import load_split  # noqa: E402
from mlx_rsg.errors import UserError  # noqa: E402
from mlx_rsg.model.backbone import load_backbone, load_tokenizer  # noqa: E402
from mlx_rsg.model.substitution import group_logits, tail_log_likelihoods  # noqa: E402
from mlx_rsg.quant.quantize import quantize  # noqa: E402
from mlx_rsg.tasks.rwsd import RWSDRecord, substituted  # noqa: E402


def rec(idx: int, text: str, candidate: str, at: int, pronoun: str, label: bool) -> RWSDRecord:
    return RWSDRecord(idx, text, 0, candidate, at, pronoun, label)


def test_the_candidate_takes_the_pronouns_word_and_its_glued_punctuation():
    text = "Кубок не помещается в чемодан, потому что он, видимо, слишком большой."
    # span2 is several words; only the pronoun (its first) is replaced; the index is off by one
    r = rec(0, text, "Кубок ", 8, "он, видимо", True)
    assert substituted(r) == ("Кубок не помещается в чемодан, потому что Кубок,",
                              "видимо, слишком большой.")  # fmt: skip
    last = rec(1, "Пришёл Иван, и его встретил он", "Иван", 5, "он", False)
    assert substituted(last) == ("Пришёл Иван, и его встретил Иван", "")


def test_records_sharing_a_text_and_a_pronoun_are_decided_together():
    a = "Кот смотрел на пса, потому что он устал."
    b = "Кот смотрел на пса, потому что он был голоден."
    records = [rec(0, a, "Кот", 6, "он устал", True), rec(1, a, "пса", 6, "он устал", False),
               rec(2, b, "Кот", 6, "он был", False), rec(3, b, "пса", 6, "он был", True),
               rec(4, b, "Кот", 6, "он", True)]  # fmt: skip
    logits = group_logits(records, np.array([-1.0, -2.0, -1.0, -3.0, 5.0]))
    # True leads by the margin over the best other candidate; a record alone is False
    assert logits[:, 1].tolist() == [1.0, -1.0, 2.0, -2.0, -1.0]
    assert (logits[:, 0] == 0).all()
    got = [{"partial": s} for s in (-1.0, -2.0, -1.0, -3.0, 5.0)]
    assert probe.decide(records, got, "partial") == [True, False, True, False, False]
    assert probe.pairwise(records, got, "partial") == (1, 2)


def test_the_scores_are_the_language_models_own_log_likelihoods(tiny_model_dir):  # noqa: F811
    bb, tokenizer = load_backbone(tiny_model_dir), load_tokenizer(tiny_model_dir)
    pairs = [("the cat saw the dog because the dog", "was tired ."),
             ("a b", "c d e f g h i j k l m n o p"), ("the cat", "")]  # fmt: skip
    got = tail_log_likelihoods(bb, tokenizer, pairs, batch_size=2)  # padded beside a longer one
    for (head, tail), value in zip(pairs, got, strict=True):
        ids = tokenizer.encode(f"{head} {tail}" if tail else head)
        logits = bb.model(mx.array([ids]))[0].astype(mx.float32)
        logp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        per_token = logp[np.arange(len(ids) - 1), ids[1:]]  # per_token[t - 1] is token t's
        start = len(tokenizer.encode(head))
        assert value == pytest.approx(per_token[start - 1:].sum(), rel=1e-4, abs=1e-5)


SUBJECTS = ["Кот", "Пёс", "Иван", "Мама", "Папа", "Сын", "Дед", "Брат", "Гость"]
OBJECTS = ["мяч", "стол", "дом", "сад", "лес", "чай", "суп", "хлеб", "сок"]


def write_rwsd(root: Path, n_train: int = 12, n_val: int = 4) -> Path:
    """Schemas as RWSD writes them: two texts differing after the pronoun, each asked about
    both candidates (4 records per schema)."""
    def schemas(n: int, offset: int) -> list[dict]:
        rows = []
        for k in range(n):
            s, o = SUBJECTS[(k + offset) % 9], OBJECTS[(2 * k + offset) % 9]
            for end, subject_true in (("устал", True), ("упал", False)):
                text = f"{s} смотрел на {o}, потому что он {end}."
                for cand, label in ((s, subject_true), (f"{o},", not subject_true)):
                    target = {"span1_text": cand, "span1_index": 0 if cand == s else 3,
                              "span2_text": "он", "span2_index": 6}  # fmt: skip
                    rows.append({"idx": len(rows), "text": text, "target": target,
                                 "label": label})  # fmt: skip
        return rows

    (root / "RWSD").mkdir(parents=True)
    for split, rows in (("train", schemas(n_train, 0)), ("val", schemas(n_val, 5))):
        (root / "RWSD" / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def rwsd_runs(tiny_model_dir, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("rwsd")
    data = write_rwsd(root / "data")
    runs = {}
    for rule in ("substitution", "dev", "head"):
        cfg = tiny_train_config(tasks=("RWSD",), epochs=1, dev_per_task=8, rwsd_decision=rule)
        T.train(tiny_model_dir, data, root / rule, cfg, log=lambda m: None)
        runs[rule] = root / rule
    return data, runs


def base_decisions(model_dir: Path, records: list) -> list[bool]:
    """What the untrained base model decides by substitution, computed here from scratch."""
    bb, tokenizer = load_backbone(model_dir), load_tokenizer(model_dir)
    scores = tail_log_likelihoods(bb, tokenizer, [substituted(r) for r in records])
    return [bool(row[1] > 0) for row in group_logits(records, scores)]


def test_a_run_decided_by_substitution_predicts_as_the_base_model(rwsd_runs, tiny_model_dir):  # noqa: F811
    data, runs = rwsd_runs
    info = json.loads((runs["substitution"] / "run.json").read_text())
    entry = info["decisions"]["RWSD"]
    assert entry["by"] == "substitution" and entry["shared_blocks"] == 1  # --freeze-layers 1
    assert entry["lm"]["path"] == str(Path(tiny_model_dir).resolve())
    val = load_split(data, "RWSD", "val")
    expected = base_decisions(tiny_model_dir, val)
    assert 0 < sum(expected) < len(val)  # one True per pronoun
    predictor = predict.load(runs["substitution"])
    got = [row["label"] for row in predictor.predict("RWSD", val)]
    assert got == expected
    # and val as training scored it once, with the decision: the same predictions
    metrics = json.loads((runs["substitution"] / "metrics.json").read_text())
    accuracy = np.mean([g == r.label for g, r in zip(got, val, strict=True)])
    assert metrics["final"]["tasks"]["RWSD"]["accuracy"] == pytest.approx(accuracy)
    # by its head when asked to: the same run loaded without its decisions
    heads = predict.load(runs["substitution"], decisions=False)
    assert heads.model.substitution is None


def test_dev_chooses_the_higher_of_head_and_substitution(rwsd_runs):
    _, runs = rwsd_runs
    entry = json.loads((runs["dev"] / "run.json").read_text())["decisions"]["RWSD"]
    dev = entry["dev"]
    assert dev["records"] >= 8 and set(dev) == {"head", "substitution", "records"}
    assert entry["by"] == ("substitution" if dev["substitution"] > dev["head"] else "head")
    assert (predict.load(runs["dev"]).model.substitution is not None) == (entry["by"] != "head")
    head = json.loads((runs["head"] / "run.json").read_text())["decisions"]["RWSD"]
    assert head == {"by": "head"}
    assert predict.load(runs["head"]).model.substitution is None


def test_a_quantized_run_keeps_its_language_models_own_blocks_quantized(rwsd_runs, tmp_path,
                                                                         tiny_model_dir):  # noqa: F811
    """quantize writes the blocks the decision runs above the shared ones, quantized as the
    backbone, into the run: it loads and decides without the base model directory, as the float
    base's blocks rounded the same way decide."""
    import shutil

    from mlx_rsg.model import substitution
    from mlx_rsg.run import disk_size, open_runs

    data, runs = rwsd_runs
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    run = tmp_path / "run"
    shutil.copytree(runs["substitution"], run)
    info = json.loads((run / "run.json").read_text())
    info["backbone"]["path"] = info["decisions"]["RWSD"]["lm"]["path"] = str(base)
    (run / "run.json").write_text(json.dumps(info))
    out = tmp_path / "q8"
    quantize(run, out, bits=8, group_size=32)
    entry = json.loads((out / "run.json").read_text())["decisions"]["RWSD"]
    assert entry["lm"]["path"] == "substitution" and entry["lm"]["copied"] is True
    own = mx.load(str(out / "substitution" / "model.safetensors"))
    assert sorted({k.split(".")[2] for k in own if k.startswith("model.layers.")}) == ["1"]
    assert "model.norm.weight" in own and not any("embed" in k for k in own)
    assert own["model.layers.1.mlp.down_proj.weight"].dtype == mx.uint32  # quantized
    sizes = disk_size(open_runs([str(out)])[0])
    assert sizes["substitution"] == (out / "substitution" / "model.safetensors").stat().st_size
    assert sizes["total"] == sizes["backbone"] + sizes["trainable"] + sizes["substitution"]

    val = load_split(data, "RWSD", "val")
    float_run = predict.load(run)  # its own blocks from the float base, rounded here below
    with_rounded = substitution.build(float_run.model.backbone, info["decisions"]["RWSD"],
                                      float_run.tokenizer)  # fmt: skip
    shutil.rmtree(base)  # the quantized run needs the base model no more
    predictor = predict.load(out)
    lm = predictor.model.substitution.lm
    assert lm.layers[0] is predictor.model.backbone.layers[0]  # shared, quantized there
    assert isinstance(lm.layers[1].mlp.down_proj, nn.QuantizedLinear)  # its own, quantized
    own_module = nn.Module()
    own_module.layers = with_rounded.lm.layers[1:]
    nn.quantize(own_module, group_size=32, bits=8)
    with_rounded.lm.decoder.embed_tokens = lm.decoder.embed_tokens
    with_rounded.lm.decoder.layers[0] = lm.layers[0]
    pairs = [substituted(r) for r in val]
    got = tail_log_likelihoods(lm, float_run.tokenizer, pairs)
    want = tail_log_likelihoods(with_rounded.lm, float_run.tokenizer, pairs)
    assert np.allclose(got, want, rtol=1e-5)
    labels = [row["label"] for row in predictor.predict("RWSD", val)]
    assert labels == [bool(row[1] > 0) for row in group_logits(val, got)]


def test_a_damaged_or_missing_decision_is_one_line(rwsd_runs, tmp_path):
    import shutil

    _, runs = rwsd_runs
    run = tmp_path / "run"
    shutil.copytree(runs["substitution"], run)
    info = json.loads((run / "run.json").read_text())

    def load_with(entry) -> str:
        (run / "run.json").write_text(json.dumps({**info, "decisions": {"RWSD": entry}}))
        with pytest.raises(UserError) as e:
            predict.load(run)
        assert "\n" not in str(e.value)
        return str(e.value)

    entry = info["decisions"]["RWSD"]
    assert "decisions.RWSD.by" in load_with({**entry, "by": "oracle"})
    assert "decisions.RWSD.shared_blocks" in load_with({**entry, "shared_blocks": "all"})
    assert "decisions.RWSD.lm" in load_with({**entry, "lm": "elsewhere"})
    moved = load_with({**entry, "lm": {**entry["lm"], "path": str(tmp_path / "gone")}})
    assert moved.startswith(f"{run / 'run.json'}: field 'decisions.RWSD.lm.path': ")
    assert "does not exist" in moved
    other = load_with({**entry, "lm": {**entry["lm"], "sha256": {"model.safetensors": "0"}}})
    assert "decisions.RWSD.lm.sha256" in other
    assert "decisions.RWSD.shared_blocks" in load_with({**entry, "shared_blocks": 7})


def test_bad_arguments_are_one_line_before_any_work(tiny_model_dir, tmp_path, monkeypatch,  # noqa: F811
                                                    capsys):  # fmt: skip
    def run(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["rwsd_substitution.py", *args, "--out",
                                          str(tmp_path / "out.json")])  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            probe.main()
        assert exit_.value.code != 0
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert run("--model", str(tiny_model_dir), "--data", str(tmp_path)).endswith(
        f"{tmp_path / 'RWSD' / 'train.jsonl'}: no such file")
    (tmp_path / "RWSD").mkdir()
    (tmp_path / "RWSD" / "train.jsonl").write_text("")
    assert run("--model", str(tmp_path), "--data", str(tmp_path)).startswith(
        f"rwsd_substitution.py: error: {tmp_path}: cannot load the model")
    assert run("--model", str(tiny_model_dir), "--data", str(tmp_path), "--blocks", "9").endswith(
        "--blocks: 9 is not a block in 1..2")
    assert not (tmp_path / "out.json").exists()


def test_the_scoring_benchmark_says_a_bad_input_in_one_line(rwsd_runs, tmp_path):
    data, runs = rwsd_runs
    out = tmp_path / "scoring.json"

    def fails(*args: str, out: Path = out) -> str:
        with pytest.raises(SystemExit) as exit_:
            bench_rwsd_scoring.main([*args, "--label", "x", "--out", str(out)])
        return str(exit_.value.code)

    assert fails(str(tmp_path / "none"), "--data", str(data)) == (
        f"error: {tmp_path / 'none'}: not a run directory (no run.json)")
    assert fails(str(runs["substitution"]), "--data", str(tmp_path)).startswith(
        f"error: {tmp_path}")  # a data directory without RWSD
    assert fails(str(runs["substitution"]), str(runs["head"]), "--data", str(data)) == (
        f"error: {runs['head']}: does not decide RWSD by substitution")
    assert not out.exists()  # nothing written
    bad = tmp_path / "other.json"
    bad.write_text("[]")
    assert fails(str(runs["substitution"]), "--data", str(data), out=bad) == (
        f"error: {bad}: no field labels (not this benchmark's results file)")
    assert bad.read_text() == "[]"
    bench_rwsd_scoring.main([str(runs["substitution"]), "--data", str(data), "--label", "x",
                             "--repeats", "1", "--out", str(out)])  # fmt: skip
    row = json.loads(out.read_text())["labels"]["x"][0]
    assert row["vs_first"] == 1.0 and len(row["decisions"]) == len(load_split(data, "RWSD", "val"))


def test_serve_never_decides_one_requests_twins_with_anothers(rwsd_runs):
    """Two clients ask about the two candidates of one pronoun: each is answered as if alone
    (a record alone in its group is False), not decided against the other's record."""
    from mlx_rsg.serve.batcher import Job
    from mlx_rsg.serve.scoring import score_batch

    data, runs = rwsd_runs
    predictor = predict.load(runs["substitution"])
    val = load_split(data, "RWSD", "val")
    twins = val[:2]
    assert twins[0].text == twins[1].text and twins[0].span1_text != twins[1].span1_text
    together = [row["label"] for row in predictor.predict("RWSD", twins)]
    assert sorted(together) == [False, True]
    answers: dict[int, object] = {}
    jobs = [Job("r", "RWSD", [r], 1, lambda rows, i=i: answers.setdefault(i, rows))
            for i, r in enumerate(twins)]  # fmt: skip
    score_batch(predictor, jobs)
    assert [answers[i][0]["label"] for i in (0, 1)] == ["False", "False"]


def test_a_finished_run_resumed_gets_its_rwsd_decision(rwsd_runs, tiny_model_dir, tmp_path):  # noqa: F811
    """A run trained before --rwsd-decision (no such flag in run.json, no decisions) resumed with
    its own flags runs its final step again, and chooses RWSD's decision on dev."""
    import shutil

    data, runs = rwsd_runs
    run = tmp_path / "old"
    shutil.copytree(runs["head"], run)
    info = json.loads((run / "run.json").read_text())
    del info["train"]["rwsd_decision"], info["decisions"]
    (run / "run.json").write_text(json.dumps(info))
    cfg = tiny_train_config(tasks=("RWSD",), epochs=1, dev_per_task=8)
    T.train(tiny_model_dir, data, run, cfg, resume=True, log=lambda m: None)
    entry = json.loads((run / "run.json").read_text())["decisions"]["RWSD"]
    assert set(entry["dev"]) == {"head", "substitution", "records"}
    weights = [(p / "trainable.safetensors").read_bytes() for p in (run, runs["head"])]
    assert weights[0] == weights[1]  # the epoch's weights as they were


@pytest.mark.parametrize("rule", ["substitution", "dev"])
def test_without_a_dev_split(rwsd_runs, tiny_model_dir, tmp_path, rule):  # noqa: F811
    """No dev split: `dev` has nothing to choose on and keeps the head; `substitution` still
    decides, and the final val score is the substitution's."""
    data, _ = rwsd_runs
    cfg = tiny_train_config(tasks=("RWSD",), epochs=1, rwsd_decision=rule)
    metrics = T.train(tiny_model_dir, data, tmp_path / "run", cfg, log=lambda m: None)
    entry = json.loads((tmp_path / "run" / "run.json").read_text())["decisions"]["RWSD"]
    assert entry["by"] == ("head" if rule == "dev" else "substitution")
    if rule == "substitution":
        val = load_split(data, "RWSD", "val")
        right = np.mean([g == r.label for g, r in
                         zip(base_decisions(tiny_model_dir, val), val, strict=True)])  # fmt: skip
        assert metrics["final"]["tasks"]["RWSD"]["accuracy"] == pytest.approx(right)


def test_a_refit_keeps_the_decision_chosen_before_it(rwsd_runs, tiny_model_dir, tmp_path):  # noqa: F811
    """--refit chooses the decision on dev before dev is trained on, and scores val with it."""
    data, _ = rwsd_runs
    cfg = tiny_train_config(tasks=("RWSD",), epochs=1, dev_per_task=8, refit=True,
                            rwsd_decision="substitution")  # fmt: skip
    metrics = T.train(tiny_model_dir, data, tmp_path / "run", cfg, log=lambda m: None)
    entry = json.loads((tmp_path / "run" / "run.json").read_text())["decisions"]["RWSD"]
    assert entry["by"] == "substitution" and set(entry["dev"]) == {"head", "substitution",
                                                                   "records"}  # fmt: skip
    val = load_split(data, "RWSD", "val")
    right = np.mean([g == r.label for g, r in
                     zip(base_decisions(tiny_model_dir, val), val, strict=True)])  # fmt: skip
    assert metrics["final"]["tasks"]["RWSD"]["accuracy"] == pytest.approx(right)


def test_the_parus_probe_joins_premise_connective_and_choice(tiny_model_dir):  # noqa: F811
    import parus_likelihood as parus

    from mlx_rsg.tasks.parus import PARusRecord

    assert parus.premise_head("Трава мокрая.", "cause") == "Трава мокрая, потому что"
    assert parus.as_continuation("Шёл дождь.") == "шёл дождь."
    assert parus.as_continuation("МЧС приехало.") == "МЧС приехало."  # an acronym stays
    bb, tokenizer = load_backbone(tiny_model_dir), load_tokenizer(tiny_model_dir)
    r = PARusRecord(0, "the cat was tired .", "the dog ran .", "it slept .", "effect", 1)
    got = parus.scores(bb, tokenizer, [r])
    given = tail_log_likelihoods(bb, tokenizer, [("the cat was tired, поэтому", "the dog ran ."),
                                                 ("the cat was tired, поэтому", "it slept .")])
    prior = tail_log_likelihoods(bb, tokenizer, [("Поэтому", "the dog ran ."),
                                                 ("Поэтому", "it slept .")])  # fmt: skip
    assert got["sum"][0] == pytest.approx(given, rel=1e-6)
    assert got["pmi"][0] == pytest.approx(given - prior, rel=1e-5)


def test_the_own_blocks_take_the_recipes_16_bit_scales(rwsd_runs, tmp_path):
    """A recipe's scale_dtype reaches the language model's own blocks as it reaches the backbone
    (float16 scales and biases in both files), and the run loads and decides with them."""
    data, runs = rwsd_runs
    recipe = tmp_path / "q8-h.toml"
    recipe.write_text('name = "q8-h"\nbits = 8\ngroup_size = 32\nscale_dtype = "float16"\n')
    out = tmp_path / "q8-h"
    quantize(runs["substitution"], out, recipe=str(recipe))
    own = mx.load(str(out / "substitution" / "model.safetensors"))
    backbone = mx.load(str(out / "backbone" / "model.safetensors"))
    for weights in (own, backbone):
        scales = [v.dtype for k, v in weights.items() if k.endswith((".scales", ".biases"))]
        assert scales and set(scales) == {mx.float16}
    predictor = predict.load(out)
    assert predictor.model.substitution is not None
    val = load_split(data, "RWSD", "val")
    assert len(predictor.predict("RWSD", val)) == len(val)


def test_the_own_blocks_take_the_recipes_overrides(rwsd_runs, tmp_path):
    """A recipe's [overrides] reach the language model's own blocks as they reach the backbone:
    q4 with 8-bit attention gives 8-bit attention and 4-bit MLP in both, recorded per path in
    the copy's config, and the run loads them at those widths and decides."""
    data, runs = rwsd_runs
    recipe = tmp_path / "q4-attn8.toml"
    recipe.write_text('name = "q4-attn8"\nbits = 4\ngroup_size = 32\n'
                      '[overrides]\n"self_attn" = { bits = 8 }\n')  # fmt: skip
    out = tmp_path / "q4-attn8"
    quantize(runs["substitution"], out, recipe=str(recipe))
    qblock = json.loads((out / "substitution" / "config.json").read_text())["quantization"]
    assert qblock["bits"] == 4
    assert qblock["model.layers.1.self_attn.q_proj"] == {"bits": 8, "group_size": 32,
                                                         "mode": "affine"}  # fmt: skip
    assert not any(k.startswith("model.layers.0.") for k in qblock)  # shared: the backbone's
    predictor = predict.load(out)
    lm = predictor.model.substitution.lm
    assert lm.layers[1].self_attn.q_proj.bits == lm.layers[0].self_attn.q_proj.bits == 8
    assert lm.layers[1].mlp.down_proj.bits == lm.layers[0].mlp.down_proj.bits == 4
    val = load_split(data, "RWSD", "val")
    assert len(predictor.predict("RWSD", val)) == len(val)


def test_the_own_blocks_take_the_recipes_substitution_width(rwsd_runs, tmp_path):
    """A recipe's [substitution] width is the own blocks' (4 bits beside an 8-bit backbone): the
    copy's config and the loaded language model say so, the backbone is the one the same recipe
    without the table writes, byte for byte, and the run decides."""
    data, runs = rwsd_runs
    text = 'bits = 8\ngroup_size = 32\n'
    outs = {}
    for name, extra in (("q8", ""), ("q8-lm4", "[substitution]\nbits = 4\n")):
        recipe = tmp_path / f"{name}.toml"
        recipe.write_text(f'name = "{name}"\n' + text + extra)
        outs[name] = quantize(runs["substitution"], tmp_path / name, recipe=str(recipe))
    qblock = json.loads((outs["q8-lm4"] / "substitution" / "config.json").read_text())
    assert (qblock["quantization"]["bits"], qblock["quantization"]["group_size"]) == (4, 32)
    same = [(o / "backbone" / "model.safetensors").read_bytes() for o in outs.values()]
    assert same[0] == same[1]
    predictor = predict.load(outs["q8-lm4"])
    lm = predictor.model.substitution.lm
    assert lm.layers[1].mlp.down_proj.bits == 4 and lm.layers[0].mlp.down_proj.bits == 8
    val = load_split(data, "RWSD", "val")
    assert len(predictor.predict("RWSD", val)) == len(val)


def test_the_manifest_counts_every_weight_the_copy_stores(rwsd_runs, tmp_path):
    """The manifest's `stored`: the backbone, the RWSD language model's own blocks and the
    heads, each the bytes of its files' tensors and its parameters unpacked (the same whatever
    their bits), and the bits per weight over them all, which the own blocks at 4 bits lower
    while the backbone's bits per weight stay."""
    _, runs = rwsd_runs
    manifests = {}
    for name, extra in (("q8", ""), ("q8-lm4", "[substitution]\nbits = 4\n")):
        recipe = tmp_path / f"{name}.toml"
        recipe.write_text(f'name = "{name}"\nbits = 8\ngroup_size = 32\n' + extra)
        out = quantize(runs["substitution"], tmp_path / name, recipe=str(recipe))
        manifests[name] = json.loads((out / "mlx_rsg.json").read_text())
        stored = manifests[name]["stored"]
        parts = {"backbone": sorted((out / "backbone").glob("*.safetensors")),
                 "substitution": sorted((out / "substitution").glob("*.safetensors")),
                 "trainable": [out / "trainable.safetensors"]}  # fmt: skip
        assert set(stored) == {*parts, "bits_per_weight"}
        for part, files in parts.items():
            tensors = [v for f in files for v in mx.load(str(f)).values()]
            assert stored[part]["bytes"] == sum(v.nbytes for v in tensors), part
        heads = mx.load(str(out / "trainable.safetensors")).values()
        assert stored["trainable"]["parameters"] == sum(v.size for v in heads)
        total = sum(stored[p]["bytes"] for p in parts)
        params = sum(stored[p]["parameters"] for p in parts)
        assert stored["bits_per_weight"] == round(8 * total / params, 3)
    q8, lm4 = manifests["q8"], manifests["q8-lm4"]
    assert q8["bits_per_weight"] == lm4["bits_per_weight"]
    for part in ("backbone", "substitution", "trainable"):
        assert q8["stored"][part]["parameters"] == lm4["stored"][part]["parameters"]
    assert lm4["stored"]["substitution"]["bytes"] < q8["stored"]["substitution"]["bytes"]
    assert lm4["stored"]["bits_per_weight"] < q8["stored"]["bits_per_weight"]
    # bench's weights cell: the backbone's bits per weight, then all the copy stores
    from mlx_rsg.bench.report import write_markdown
    from mlx_rsg.run import open_runs, quantization

    q = quantization(open_runs([str(tmp_path / "q8-lm4")])[0])
    assert (q["bits_per_weight"], q["bits_per_weight_stored"]) == (
        lm4["bits_per_weight"], lm4["stored"]["bits_per_weight"])  # fmt: skip
    row = {"name": "q8-lm4", "quantization": q, "scores": {}, "total": 0.5, "delta": 0.0,
           "flip_rate": 0.0, "size_bytes": {"total": 1}, "memory": {"mlx_peak_bytes": 1,
           "rss_peak_bytes": 1}, "latency_ms": {"p50": 1.0, "p95": 1.0},
           "throughput": {"examples_per_s": 1.0}}  # fmt: skip
    bench = {"tasks": {}, "variants": [row], "skipped": {}, "baseline": "q8-lm4",
             "env": {"device": "cpu"}, "config": {"split": "val", "data": "d",
             "max_per_task": None, "seed": 0, "batch_size": 16}}  # fmt: skip
    cell = write_markdown(bench).splitlines()[2].split(" | ")[1]
    assert cell == (f"q8-lm4 (q8 g32, {lm4['bits_per_weight']:.2f} b/w, "
                    f"{lm4['stored']['bits_per_weight']:.2f} stored)")  # fmt: skip
    # a manifest whose numbers are not numbers: reported without them, not a traceback
    damaged = tmp_path / "q8-lm4" / "mlx_rsg.json"
    damaged.write_text(json.dumps({**lm4, "bits_per_weight": "5", "stored": [1]}))
    row["quantization"] = quantization(open_runs([str(tmp_path / "q8-lm4")])[0])
    assert write_markdown(bench).splitlines()[2].split(" | ")[1] == "q8-lm4 (q8 g32)"


def test_the_embedding_rows_probe_swaps_the_rows_it_says(rwsd_runs, tmp_path,
                                                        tiny_model_dir):  # noqa: F811
    """benchmarks/embedding_rows.py: `train8` rounds exactly the rows of the tokens in the train
    units at 8 bits and leaves the others as the 4-bit run has them; `float` puts the float
    model's rows back; the RWSD language model reads the swapped rows too; and a run compared
    with its own predictions changed nothing."""
    import embedding_rows

    from mlx_rsg.submission import read_submission, write_submission

    data, runs = rwsd_runs
    out = tmp_path / "q4"
    quantize(runs["substitution"], out, bits=4, group_size=32)
    val = load_split(data, "RWSD", "val")
    own = predict.load(out)
    zip_path = write_submission(tmp_path / "own.zip",
                                {"RWSD": (val, own.predictions("RWSD", val)[0])})  # fmt: skip
    assert embedding_rows.flips(own, data, read_submission(zip_path)) == {"RWSD": [0, len(val)]}

    q = own.model.backbone.decoder.embed_tokens
    low = np.array(mx.dequantize(q.weight, q.scales, q.biases, q.group_size, q.bits))
    floats = mx.load(str(tiny_model_dir / "model.safetensors"))["model.embed_tokens.weight"]
    w, sc, bi = mx.quantize(floats, 32, 8)  # the embedding's own group
    high = np.array(mx.dequantize(w, sc, bi, 32, 8))
    seen, _ = embedding_rows.train_token_ids(own.model, own.tokenizer, data)
    info = embedding_rows.swap_embedding(own, tiny_model_dir, "train8", data)
    assert info["raised"] == len(seen) > 0 and info["train_tasks"] == ["RWSD"]
    rows = np.array(own.model.backbone.decoder.embed_tokens.weight)
    raised = np.zeros(len(rows), dtype=bool)
    raised[seen] = True
    assert np.array_equal(rows[raised], high[raised])
    assert np.array_equal(rows[~raised], low[~raised])
    assert own.model.substitution.lm.decoder.embed_tokens is own.model.backbone.decoder.embed_tokens  # noqa: E501

    back = predict.load(out)
    embedding_rows.swap_embedding(back, tiny_model_dir, "float", data)
    assert np.array_equal(np.array(back.model.backbone.decoder.embed_tokens.weight),
                          np.array(floats.astype(mx.float32)))  # fmt: skip
    assert back.model.substitution.lm.decoder.embed_tokens is back.model.backbone.decoder.embed_tokens  # noqa: E501


def test_a_quantized_output_layer_gives_its_log_probabilities_in_chunks(
    tiny_model_dir,  # noqa: F811
    monkeypatch,
):
    """The dequantized chunks' GEMM (the CPU's fast route) is the quantized layer's own
    log-softmax, whatever the chunk size."""
    from mlx_rsg.model import substitution

    bb = load_backbone(tiny_model_dir)
    nn.quantize(bb.model, group_size=32, bits=4)
    h = mx.random.normal((5, bb.hidden_size), key=mx.random.key(0))
    targets = [3, 17, 250, 399, 0]
    logits = bb.decoder.embed_tokens.as_linear(h).astype(mx.float32)
    want = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))[np.arange(5), targets]
    monkeypatch.setattr(substitution, "OUTPUT_CHUNK", 64)  # 400 rows: 7 chunks, the last short
    got = np.array(substitution.token_log_probs(bb, h, targets))
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4)


def test_an_untied_output_layer_is_what_the_log_probabilities_read(tiny_model_dir):  # noqa: F811
    """A model with its own LM head (Qwen, Llama untied) is read through that head, float or
    quantized, not through its input embedding."""
    from mlx_rsg.model import substitution

    bb = load_backbone(tiny_model_dir)
    bb.model.lm_head = nn.Linear(bb.hidden_size, 400, bias=True)  # a bias too (Phi-2 has one)
    h = mx.random.normal((3, bb.hidden_size), key=mx.random.key(1))
    targets = [5, 99, 321]

    def want() -> np.ndarray:
        logits = bb.model.lm_head(h).astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return np.array(logp)[np.arange(3), targets]

    assert np.allclose(substitution.token_log_probs(bb, h, targets), want(), atol=1e-5)
    nn.quantize(bb.model, group_size=32, bits=8)
    assert isinstance(bb.model.lm_head, nn.QuantizedLinear)
    assert np.allclose(substitution.token_log_probs(bb, h, targets), want(), atol=1e-4)


def test_a_call_reads_each_quantized_weight_once_whatever_its_batches(
    tiny_model_dir,  # noqa: F811
    monkeypatch,
):
    """The blocks run block by block over all the batches and the output layer then reads
    every tail token's state at once: a quantized copy dequantizes each weight once per call,
    not once per batch of records (per batch, it made the real run's 3-bit-table copy score
    RWSD several times slower than the float run). The scores are each pair's scored alone."""
    from mlx_rsg.accel import fast_quant, fastpaths
    from mlx_rsg.model import substitution

    bb, tokenizer = load_backbone(tiny_model_dir), load_tokenizer(tiny_model_dir)
    nn.quantize(bb.model, group_size=32, bits=4)
    fastpaths.apply(bb.model, bb.config, use={"quant": True})
    linears = [m for m in bb.model.modules() if isinstance(m, fast_quant.FastQuantizedLinear)]
    pairs = [("the cat saw the dog because the dog", "was tired ."),
             ("a b c d e", "f g h i j k"), ("the dog ran after the cat", "and the cat ran"),
             ("one two three four", "five six seven"), ("the cat", "")]  # fmt: skip
    alone = [tail_log_likelihoods(bb, tokenizer, [pair])[0] for pair in pairs]
    unpacked, output_reads = [], []
    unpack, rows = fast_quant.unpack_affine, substitution.weight_rows
    monkeypatch.setattr(fast_quant, "unpack_affine",
                        lambda w, *rest: unpacked.append(id(w)) or unpack(w, *rest))  # fmt: skip
    monkeypatch.setattr(substitution, "weight_rows", lambda layer, which: (
        output_reads.append(which) if isinstance(which, slice) else None) or rows(layer, which))
    monkeypatch.setattr(substitution, "OUTPUT_CHUNK", 128)  # 400 output rows: 4 reads a pass
    got = tail_log_likelihoods(bb, tokenizer, pairs, batch_size=1)
    assert linears and sorted(unpacked) == sorted(id(m["weight"]) for m in linears)
    assert len(output_reads) == 4
    assert np.allclose(got, alone, rtol=1e-5, atol=1e-5)
