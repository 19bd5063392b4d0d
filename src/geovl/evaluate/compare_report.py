"""Files of a ``geovl compare`` report: ``chart.png``, ``report.md``, ``report.html``.

The chart is drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
backend switch) with English labels only, so no CJK font is needed; the HTML embeds it as a
base64 PNG and has no other dependency. Text in tables is escaped and long cells shortened
(the full text stays in ``compare.json``).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from .compare import table_rows

CELL_MAX = 240  # characters shown per question/answer cell
DEFAULT_NAMES = ("before", "after")


def _ascii(label: str, fallback: str) -> str:
    return label if label.isascii() and label.isprintable() else fallback


def render_chart(result: dict, path: Path) -> Path:
    """Grouped bars (before vs after accuracy, %) per qtype plus overall, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["by_qtype"] + [result["overall"]]
    labels = [f"{_ascii(r['qtype'], f'type {i + 1}')}\n(n={r['n']})" for i, r in enumerate(rows)]
    names = [_ascii(n, d) for n, d in zip(result["names"], DEFAULT_NAMES)]
    if names[0] == names[1]:
        names = list(DEFAULT_NAMES)
    before = [100 * r["before_acc"] for r in rows]
    after = [100 * r["after_acc"] for r in rows]
    fig = Figure(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    w = 0.38
    xs = list(range(len(rows)))
    b1 = ax.bar([x - w / 2 for x in xs], before, w, label=names[0], color="#9aa5b1")
    b2 = ax.bar([x + w / 2 for x in xs], after, w, label=names[1], color="#2f7ebc")
    for bars in (b1, b2):
        ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
    ax.set_xticks(xs, labels)
    ax.set_ylim(0, 128)  # room for the legend above the 100 % bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy by question type")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _short(s: str) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= CELL_MAX else s[: CELL_MAX - 1] + "…"


def _md_cell(v) -> str:
    return _short("" if v is None else v).replace("\\", "\\\\").replace("|", "\\|")


def _md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


CHANGE_HEADERS = ["id", "type/类型", "question/问题", "reference/参考答案"]


def _change_rows(result: dict, key: str, max_rows: int) -> tuple[list[str], list[list], int]:
    nb, na = result["names"]
    headers = CHANGE_HEADERS + [f"{nb}", f"{na}"]
    items = result[key]
    rows = [[c["id"], c["qtype"], c["question"], c["reference"], c["before"], c["after"]] for c in items[:max_rows]]
    return headers, rows, max(0, len(items) - max_rows)


def _sections(result: dict, max_rows: int):
    """(title, headers, rows, n hidden) of each per-sample section, in report order."""
    nb, na = result["names"]
    yield (f"Fixed / 修正 ({len(result['fixed'])}): wrong in {nb}, right in {na}",) + _change_rows(
        result, "fixed", max_rows
    )
    yield (f"Broken / 退步 ({len(result['broken'])}): right in {nb}, wrong in {na}",) + _change_rows(
        result, "broken", max_rows
    )


def _unmatched_lines(result: dict) -> list[str]:
    nb, na = result["names"]
    out = []
    for key, label in (("only_in_before", nb), ("only_in_after", na)):
        ids = result[key]
        out.append(f"Only in {label} / 仅在{label}中: {len(ids)}" + (f" — {', '.join(ids)}" if ids else ""))
    for m in result["mismatched"]:
        out.append(
            f"id {m['id']}: qtype {m['qtype'][0]} / {m['qtype'][1]}, reference {m['reference'][0]!r} / {m['reference'][1]!r}"
        )
    return out


def _header_lines(result: dict) -> list[str]:
    nb, na = result["names"]
    f = result["files"]
    sig = result["significance"]
    return [
        f"{nb}: {f['before']} ({result['n_before']} samples / 样本)",
        f"{na}: {f['after']} ({result['n_after']} samples / 样本)",
        f"matched by id / 按 id 匹配: {result['n_matched']}; numeric tolerance / 数值容差: {result['tolerance']:g}",
        f"McNemar p / 显著性检验: {sig['test']}",
        f"95% CI Δ / 置信区间: {sig['interval']}; {sig['verdict']} / 区间含 0 即无可测变化",
    ]


def write_markdown(result: dict, path: Path, chart_name: str, max_rows: int) -> Path:
    headers, rows = table_rows(result)
    parts = ["# Before/after comparison / 微调前后对比", ""]
    parts += [f"- {line}" for line in _header_lines(result)]
    parts += ["", f"![accuracy by question type]({chart_name})", "", "## Accuracy by question type / 各题型准确率", ""]
    parts += [_md_table(headers, rows), ""]
    for title, h, r, hidden in _sections(result, max_rows):
        parts += [f"## {title}", ""]
        parts += [_md_table(h, r) if r else "_none / 无_", ""]
        if hidden:
            parts += [f"_… {hidden} more in compare.json_", ""]
    from .compare_boxes import md_section

    parts += md_section(result) + [""] if "grounding" in result else []
    parts += ["## Unmatched samples / 未匹配样本", ""] + [f"- {line}" for line in _unmatched_lines(result)] + [""]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","Microsoft YaHei",sans-serif;
margin:2em auto;max-width:1100px;padding:0 1em;color:#1d2733}table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #d0d7de;padding:.3em .6em;vertical-align:top}th{background:#f3f5f7}
td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}.muted{color:#667}"""


def _html_table(headers, rows, numeric_from: int | None = None) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr></thead><tbody>"]
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            cls = ' class="n"' if numeric_from is not None and i >= numeric_from else ""
            cells.append(f"<td{cls}>{html.escape(_short('' if c is None else c))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def write_html(result: dict, path: Path, png: bytes, max_rows: int) -> Path:
    headers, rows = table_rows(result)
    b64 = base64.b64encode(png).decode("ascii")
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        "<title>geovl compare</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Before/after comparison / 微调前后对比</h1><ul>",
    ]
    parts += [f"<li>{html.escape(line)}</li>" for line in _header_lines(result)]
    parts += ["</ul>", f'<img alt="accuracy by question type" src="data:image/png;base64,{b64}">']
    parts += ["<h2>Accuracy by question type / 各题型准确率</h2>", _html_table(headers, rows, numeric_from=1)]
    for title, h, r, hidden in _sections(result, max_rows):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(_html_table(h, r) if r else '<p class="muted">none / 无</p>')
        if hidden:
            parts.append(f'<p class="muted">… {hidden} more in compare.json</p>')
    from .compare_boxes import html_section

    parts += html_section(result)
    parts.append("<h2>Unmatched samples / 未匹配样本</h2><ul>")
    parts += [f"<li>{html.escape(line)}</li>" for line in _unmatched_lines(result)]
    parts.append("</ul></body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_report(result: dict, out_dir, max_rows: int = 200) -> dict[str, Path]:
    """Write chart.png, report.md and report.html into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = render_chart(result, out / "chart.png")
    md = write_markdown(result, out / "report.md", png.name, max_rows)
    page = write_html(result, out / "report.html", png.read_bytes(), max_rows)
    return {"png": png, "md": md, "html": page}
