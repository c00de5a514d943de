"""The README and docs/: tables equal their result files, links resolve, the README stays short."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("render_docs", ROOT / "benchmarks" / "render_docs.py")
render_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_docs)

PAGES = render_docs.DOCS


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_rendered_table_equals_its_results(page):
    text = page.read_text()
    assert text == render_docs.render(text), (
        f"{page.name}: a table differs from benchmarks/results; run "
        "python benchmarks/render_docs.py"
    )


def test_the_readme_renders_its_results_and_stays_short():
    text = (ROOT / "README.md").read_text()
    assert {"quality", "quantization", "speed", "real-command"} <= set(render_docs.marked(text))
    assert len(text.splitlines()) <= 250
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):  # .ci/run reads these
        assert marker in text


def test_a_changed_result_changes_its_table(tmp_path):
    """The tables come from the JSON, not from the text they replace."""
    results = tmp_path / "results"
    shutil.copytree(render_docs.RESULTS, results)
    quality = json.loads((results / "quality.json").read_text())
    quality["total"] = 0.9876
    quality["tasks"]["RUSSE"]["score"] = 0.1234
    (results / "quality.json").write_text(json.dumps(quality))
    page = "<!-- render:quality -->\nanything\n<!-- /render:quality -->\n"
    table = render_docs.render(page, results)
    accuracy = quality["tasks"]["RUSSE"]["metrics"]["accuracy"]  # unchanged: not the score
    assert "**0.988**" in table and f"| RUSSE | 8505 | acc. {accuracy:.3f} | **0.123** |" in table
    assert "anything" not in table


def test_an_unknown_table_name_is_an_error():
    with pytest.raises(KeyError, match="no table named 'nope'"):
        render_docs.render("<!-- render:nope -->\n<!-- /render:nope -->\n")


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", outside_code, flags=re.M)}  # fmt: skip


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}: no such file"
        if anchor:
            assert anchor in _anchors(linked.read_text()), f"{page.name}: {target}: no such heading"


def test_one_way_share_of_flips_by_hand():
    """34 one way and 4 back is (34 - 4) / 38 of the flips net; equal counts none; a task
    whose flips all go one way counts whole, pooled with the others by flip count."""
    share = render_docs.one_way_share
    assert share({"TERRa": {"a->b": 34, "b->a": 4}}) == pytest.approx(30 / 38)
    assert share({"TERRa": {"a->b": 3, "b->a": 3}}) == 0
    assert share({"RCB": {"x->y": 2, "y->x": 1, "x->z": 1}, "RUSSE": {}}) == pytest.approx(2 / 4)
    assert share({}) == 0
