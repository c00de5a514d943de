"""benchmarks/quantize_chart.py: which point goes in which series, at which bits per weight."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import quantize_chart  # noqa: E402


def variant(name: str, bits: float | None, flips: float, delta: float) -> dict:
    q = None if bits is None else {"recipe": name, "bits_per_weight": bits}
    return {"name": name, "quantization": q, "flip_rate": flips, "delta": delta,
            "delta_se": {"total": 0.01}}  # fmt: skip


def bench(baseline: str, *variants: dict, tasks: dict | None = None) -> dict:
    return {"baseline": baseline, "tasks": tasks or {"RCB": {}},
            "variants": [variant(baseline, None, 0.0, 0.0), *variants]}  # fmt: skip


def test_each_baseline_is_a_series_and_a_composed_copy_joins_its_variants():
    first = bench("run", variant("q8", 9.0, 0.006, 0.001))
    more = bench("run", variant("q4", 5.0, 0.14, -0.022))
    other = bench("copy", variant("e3", 4.99, 0.004, -0.0004))
    composed = {"name": "e3-lm4", "composed": {"variant": "e3"}, "flip_rate": 0.005,
                "delta": 0.002, "delta_se": {"total": 0.003}}  # fmt: skip
    groups = quantize_chart.series([first, more, other], [composed])
    assert [g["baseline"] for g in groups] == ["run", "copy"]
    assert [p["recipe"] for p in groups[0]["points"]] == ["q8", "q4"]
    # the composed copy: its own flips and Δ, at its variant's (the backbone's) bits per weight
    assert groups[1]["points"][1] == {"recipe": "e3-lm4", "bits_per_weight": 4.99,
                                      "flips": 0.005, "delta": 0.002, "delta_se": 0.003}


def test_a_composed_copy_joins_its_own_baselines_series_when_two_hold_its_variant():
    run = bench("run", variant("e3", 4.99, 0.007, 0.002))
    copy = bench("copy", variant("e3", 4.99, 0.004, -0.0004))
    composed = {"name": "e3-lm4", "baseline": "copy", "composed": {"variant": "e3"},
                "flip_rate": 0.005, "delta": 0.002, "delta_se": {"total": 0.003}}  # fmt: skip
    groups = quantize_chart.series([run, copy], [composed])
    assert [[p["recipe"] for p in g["points"]] for g in groups] == [["e3"], ["e3", "e3-lm4"]]


def test_a_series_on_other_units_or_a_composed_copy_of_no_bench_is_refused():
    with pytest.raises(SystemExit, match="other units"):
        quantize_chart.series([bench("run"), bench("run", tasks={"PARus": {}})])
    stray = {"name": "x-lm4", "composed": {"variant": "x"}, "flip_rate": 0.0, "delta": 0.0}
    with pytest.raises(SystemExit, match="x-lm4: its variant x is in no --bench given"):
        quantize_chart.series([bench("run", variant("q8", 9.0, 0.0, 0.0))], [stray])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not a readable JSON file"),
        ("{", "not a readable JSON file"),
        ("[]", "no field baseline"),
        ('{"baseline": "run", "tasks": {}}', "no field variants"),
        ('{"baseline": "run", "tasks": {}, "variants": {}}', "field variants is not a list"),
        ('{"baseline": "run", "tasks": {}, "variants": [{"name": "run"}]}',
         "no field variants\\[0\\].quantization"),
    ],
)
def test_a_bench_file_it_cannot_read_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=f"^error: {re.escape(str(path))}: {message}"):
        quantize_chart.main(["--bench", str(path)])
    assert not (tmp_path / "flips.png").exists()


def test_a_composed_file_it_cannot_read_or_no_quantized_variant_is_one_line(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench("run")))  # the float run alone
    with pytest.raises(SystemExit, match="^error: no quantized variant"):
        quantize_chart.main(["--bench", str(path)])
    composed = tmp_path / "copy.json"
    composed.write_text(json.dumps({"name": "x", "flip_rate": 0.0, "delta": 0.0}))
    with pytest.raises(SystemExit, match=f"^error: {re.escape(str(composed))}: no field composed"):
        quantize_chart.main(["--bench", str(path), "--composed", str(composed)])
    assert not (tmp_path / "flips.png").exists()
