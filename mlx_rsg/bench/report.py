"""bench.md and bench.png from a bench result (see measure.py for the JSON schema).

The chart is drawn with numpy and written with zlib: matplotlib is not a dependency, and a grouped
bar chart needs only rectangles, a 3x5 pixel font and a 20-line PNG encoder.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------- Markdown


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _signed(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:+.{digits}f}"


def _mb(v) -> str:
    if v is None:
        return "–"
    return f"{v / 2**20:.1f}" if v < 10 * 2**20 else f"{v / 2**20:.0f}"


def _quant(q) -> str:
    if not q:
        return "fp32"
    bits = f"q{q.get('bits', '?')} g{q.get('group_size', '?')}"
    if q.get("bits_per_weight"):
        bits += f", {q['bits_per_weight']:.2f} b/w"
        stored = q.get("bits_per_weight_stored")
        if stored and round(stored, 2) != round(q["bits_per_weight"], 2):
            bits += f", {stored:.2f} stored"
    return f"{q['recipe']} ({bits})" if q.get("recipe") else bits


def _delta(row: dict) -> str:
    """Δ of the total, with its paired-bootstrap standard error where there is one."""
    se = (row.get("delta_se") or {}).get("total")
    return _signed(row["delta"]) + ("" if se is None else f" ± {se:.3f}")


def task_header(result: dict, task: str) -> str:
    return task + ("*" if result["tasks"][task]["fixture"] else "")


def write_markdown(result: dict[str, Any]) -> str:
    tasks = list(result["tasks"])
    head = (
        ["run", "weights"]
        + [task_header(result, t) for t in tasks]
        + ["total", "Δ fp32", "flips", "size MB", "peak MB", "RSS MB", "p50 ms", "p95 ms", "ex/s"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["variants"]:
        cells = [row["name"], _quant(row["quantization"])]
        cells += [_f(row["scores"][t]["score"]) for t in tasks]
        cells += [
            _f(row["total"]),
            _delta(row),
            _f(row["flip_rate"]),
            _mb(row["size_bytes"]["total"]),
            _mb(row["memory"]["mlx_peak_bytes"]),
            _mb(row["memory"]["rss_peak_bytes"]),
            _f(row["latency_ms"]["p50"], 1),
            _f(row["latency_ms"]["p95"], 1),
            _f(row["throughput"]["examples_per_s"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    cfg = result["config"]
    notes = [
        "",
        f"Split `{cfg['split']}` of `{cfg['data']}`"
        + (
            f", ~{cfg['max_per_task']} examples per task (whole records drawn with seed "
            f"{cfg['seed']})"
            if cfg["max_per_task"]
            else ""
        )
        + f"; baseline `{result['baseline']}`; {result['env']['device']}.",
        "Per-task cells: the official metric (two-metric tasks averaged). total: their "
        "unweighted mean over the real-data tasks; Δ fp32: total minus the baseline's, ± its "
        "standard error (paired bootstrap over records); flips: "
        "share of predictions that differ from the baseline's; b/w: the backbone's (stored: "
        "over all the copy stores, where it is more); size: weight files on disk; "
        "peak: MLX peak memory; RSS: process high-water; p50/p95: one record at batch 1; "
        f"ex/s: records per second at batch {cfg['batch_size']}.",
    ]
    fixtures = [t for t in tasks if result["tasks"][t]["fixture"]]
    if fixtures:
        ft = ", ".join(
            f"{r['name']} {_f(r['total_fixture'])} ({_signed(r['delta_fixture'])})"
            for r in result["variants"]
        )
        notes.append(
            f"\\* fixture data (synthetic, not RSG): {', '.join(fixtures)}; kept out of total. "
            f"Fixture-only total: {ft}."
        )
    if result["skipped"]:
        notes.append(
            "Not benchmarked: "
            + "; ".join(f"{t} ({why})" for t, why in result["skipped"].items())
            + "."
        )
    tables = flip_table(result) + margin_table(result) + class_tables(result)
    return "\n".join(lines + notes + tables) + "\n"


def margin_table(result: dict[str, Any]) -> list[str]:
    """Per variant: the flip rate in each bin of the baseline's decision margin."""
    rows = [r for r in result["variants"][1:] if r.get("flips_by_margin")]
    if not rows:
        return []
    edges = rows[0]["flips_by_margin"]["edges"]
    bins = [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    bins.append(f">= {edges[-1]:g}")
    tasks = ", ".join(rows[0]["flips_by_margin"]["tasks"])
    out = ["", f"### Flips by the baseline's margin (top logit minus the next; {tasks})", "",
           "| run | " + " | ".join(bins) + " |", "|" + "---|" * (len(bins) + 1)]  # fmt: skip
    for row in rows:
        m = row["flips_by_margin"]
        cells = [f"{_f(k / n if n else None, 3)} ({k}/{n})"
                 for k, n in zip(m["flipped"], m["decisions"], strict=True)]  # fmt: skip
        out.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return out


def flip_table(result: dict[str, Any]) -> list[str]:
    """Per variant and task: Δ ± SE and the flips by direction (baseline answer -> variant's)."""
    rows = [r for r in result["variants"][1:] if r.get("delta_se")]
    if not rows:
        return []
    tasks = list(result["tasks"])
    out = ["", "### Δ per task (± SE) and flips by direction", "",
           "| run | " + " | ".join(task_header(result, t) for t in tasks) + " |",
           "|" + "---|" * (len(tasks) + 1)]  # fmt: skip
    for row in rows:
        cells = []
        for t in tasks:
            moves = ", ".join(f"{k} {n}" for k, n in row["flip_directions"][t].items()) or "none"
            se = row["delta_se"]["tasks"][t]
            cells.append(f"{_signed(row['delta_tasks'][t])} ± {se:.3f}; {moves}")
        out.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return out


def class_tables(result: dict[str, Any]) -> list[str]:
    """Per task: one row per run, precision/recall/F1 of every class."""
    out = ["", "### Per-class precision / recall / F1", ""]
    for task in result["tasks"]:
        reports = [r["class_report"].get(task) for r in result["variants"]]
        if not reports or reports[0] is None:
            continue
        labels = list(reports[0])
        out.append(f"**{task_header(result, task)}**")
        out.append("")
        out.append("| run | " + " | ".join(f"{lab} P/R/F1 (n)" for lab in labels) + " |")
        out.append("|" + "---|" * (len(labels) + 1))
        for row, rep in zip(result["variants"], reports, strict=True):
            cells = [
                f"{_f(rep[lab]['precision'], 2)}/{_f(rep[lab]['recall'], 2)}/"
                f"{_f(rep[lab]['f1'], 2)} ({rep[lab]['support']})"
                for lab in labels
            ]
            out.append(f"| {row['name']} | " + " | ".join(cells) + " |")
        out.append("")
    return out


# --------------------------------------------------------------------------- PNG

# 3x5 glyphs: five rows of three bits each (a digit 0-7 per row, left pixel = 4).
_FONT = {
    "0": "75557", "1": "26227", "2": "71747", "3": "71717", "4": "55711", "5": "74717",
    "6": "74757", "7": "71222", "8": "75757", "9": "75717", "A": "25755", "B": "65656",
    "C": "34443", "D": "65556", "E": "74647", "F": "74644", "G": "34553", "H": "55755",
    "I": "72227", "J": "11152", "K": "55655", "L": "44447", "M": "57755", "N": "65555",
    "O": "25552", "P": "65644", "Q": "25563", "R": "65655", "S": "34216", "T": "72222",
    "U": "55557", "V": "55552", "W": "55775", "X": "55255", "Y": "55222", "Z": "71247",
    ".": "00002", "-": "00700", "_": "00007", " ": "00000", "*": "05250", "(": "24442",
    ")": "21112", "+": "02720", "/": "11244", ":": "02020", "%": "51245", ",": "00024",
    ";": "02024",
}  # fmt: skip
_PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
    (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
]  # fmt: skip
_S = 2  # font scale: glyphs are 6x10 pixels, 8 pixels apart


def draw_text(img: np.ndarray, x: int, y: int, text: str, color=(0, 0, 0), scale: int = _S):
    for ch in text.upper():
        rows = _FONT.get(ch, _FONT["*"])
        for r, bits in enumerate(rows):
            for c in range(3):
                if int(bits) >> (2 - c) & 1:
                    px, py = x + c * scale, y + r * scale
                    img[py : py + scale, px : px + scale] = color
        x += 4 * scale


def text_width(text: str, scale: int = _S) -> int:
    return 4 * scale * len(text)


def encode_png(img: np.ndarray) -> bytes:
    """An 8-bit RGB PNG: filter byte 0 before every row, one zlib IDAT chunk."""
    h, w, _ = img.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def bar_chart(
    groups: list[str],
    series: list[tuple[str, list]],
    title: str,
    sublabels: list[str] | None = None,
    y_title: str = "",
) -> np.ndarray:
    """Grouped bars: one group per entry of `groups` (with an optional second label line, e.g.
    the metric), one bar per series (name, values), each bar's value written on it. A value of
    exactly 0 is drawn as a thin line at zero, so it is told apart from a missing one."""
    bar, gap, plot_h, left = 22, 16, 240, 56
    top = 40 + 14 * len(series) + (14 if y_title else 0)
    lo, hi = _axis(series)
    labels = list(groups) + list(sublabels or [])
    group_w = max(bar * len(series), max(text_width(g) for g in labels)) + gap
    names = [title, y_title] + [f"     {n}" for n, _ in series]
    w = max(left + group_w * len(groups), left + max(text_width(n) for n in names)) + 10
    h = top + plot_h + (44 if sublabels else 30)
    img = np.full((h, w, 3), 255, np.uint8)

    def y_of(v: float) -> int:
        return top + int(round((hi - v) / (hi - lo) * plot_h))

    _draw_legend(img, left, title, [n for n, _ in series])
    if y_title:
        draw_text(img, 4, top - 16, y_title, color=(90, 90, 90))
    _draw_grid(img, left, w - 10, lo, hi, y_of)
    for g, group in enumerate(groups):
        x0 = left + g * group_w + gap // 2
        values = [vs[g] for _, vs in series]
        _draw_group(img, x0, bar, values, y_of)
        draw_text(img, x0, top + plot_h + 10, group)
        if sublabels:
            draw_text(img, x0, top + plot_h + 24, sublabels[g], color=(90, 90, 90))
    return img


def _axis(series: list[tuple[str, list]]) -> tuple[float, float]:
    """The value axis: 0..1 at least, widened in steps of 0.25 to fit every value."""
    vals = [v for _, vs in series for v in vs if v is not None]
    lo = min(0.0, np.floor(min(vals, default=0.0) * 4) / 4)
    hi = max(1.0, np.ceil(max(vals, default=1.0) * 4) / 4)
    return lo, hi


def _draw_group(img: np.ndarray, x0: int, bar: int, values: list, y_of) -> None:
    """One bar per series (None: no bar), side by side from x0."""
    for i, v in enumerate(values):
        if v is not None:
            _draw_bar(img, x0 + i * bar, bar - 2, y_of(0.0), y_of(v), v,
                      _PALETTE[i % len(_PALETTE)])  # fmt: skip


def _draw_legend(img: np.ndarray, left: int, title: str, names: list[str]) -> None:
    draw_text(img, left, 8, title)
    for i, name in enumerate(names):
        y = 24 + 14 * i
        img[y : y + 10, left : left + 10] = _PALETTE[i % len(_PALETTE)]
        draw_text(img, left + 16, y, name)


def _draw_grid(img: np.ndarray, left: int, right: int, lo: float, hi: float, y_of) -> None:
    """A line every 0.25 from lo to hi, labelled; the zero line darker."""
    for k in range(int(round((hi - lo) * 4)) + 1):
        v = lo + k * 0.25
        y = y_of(v)
        img[y, left - 4 : right] = (120, 120, 120) if v == 0 else (225, 225, 225)
        label = f"{v:.2f}".rstrip("0").rstrip(".") if v else "0"
        draw_text(img, left - 8 - text_width(label), y - 5, label)


def _draw_bar(img: np.ndarray, x: int, width: int, y_zero: int, y_value: int, v: float, color):
    """One bar from the zero line to its value, the value written above it (below a negative
    one); exactly 0 is a 2-pixel line, told apart from a missing bar."""
    a, b = sorted((y_zero, y_value))
    img[a - (v == 0) : max(b, a + 1) + (v == 0), x : x + width] = color
    text = f"{v:.2f}".replace("0.", ".", 1)
    draw_text(img, x + (width - text_width(text, 1)) // 2, a - 7 if v >= 0 else b + 2, text,
              scale=1)  # fmt: skip


_METRIC_SHORT = {"accuracy": "ACC", "f1": "F1", "f1a": "F1A", "em": "EM", "mcc": "MCC"}


def write_chart(result: dict[str, Any], path: str | Path) -> None:
    tasks = list(result["tasks"])
    groups = [task_header(result, t) for t in tasks]
    sublabels = [
        "+".join(_METRIC_SHORT.get(m, m.upper()) for m in result["tasks"][t]["metrics"])
        for t in tasks
    ]
    series = [(r["name"], [r["scores"][t]["score"] for t in tasks]) for r in result["variants"]]
    if any(r["total"] is not None for r in result["variants"]):
        groups.append("TOTAL")
        sublabels.append("MEAN")
        series = [
            (n, vs + [r["total"]]) for (n, vs), r in zip(series, result["variants"], strict=True)
        ]
    fixture = " (* fixture)" if any(d["fixture"] for d in result["tasks"].values()) else ""
    title = f"RSG {result['config']['split']} score by task{fixture}"
    y_title = "score: official metric (mean of two); MCC -1..1, others 0..1"
    Path(path).write_bytes(encode_png(bar_chart(groups, series, title, sublabels, y_title)))
