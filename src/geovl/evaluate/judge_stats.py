"""Statistics of judge scores (``geovl judge stats DIR``) and before/after comparisons.

Input: ``DIR/judgments.jsonl`` written by ``geovl judge`` — one record per judged turn with
``id`` (dialogue), ``turn`` (1-based), ``status`` and ``scores`` (valid values on 1–10, keys
:data:`~geovl.evaluate.judge_parse.KEYS`). When a turn appears more than once the last record
counts. Records with status ``error`` (the judge could not be called) have no scores.

Figures (all ×10, i.e. on 0–100, like MMDU's reported scores)
  * per dimension (and for the judge's explicit ``overall`` score): the mean over every turn
    that has a valid value for it — whatever valid scores exist are averaged, missing or
    rejected values are left out (not counted as 0) — plus ``n_valid``, the number of turns
    that contributed. Benchmark means are taken over turns (not per dialogue first), as MMDU
    does; ``dialogues`` repeats everything per dialogue.
  * ``overall`` — the combined score. Per turn::

        turn_score = (sum of the valid dimension scores + w * overall) / (n valid dimensions + w)

    where ``overall`` is the judge's explicit overall score and ``w`` the overall weight
    (``--overall-weight``, default 1: the overall score counts like one more dimension). When
    the turn has no valid explicit overall the formula drops it (``sum / n``); a turn with no
    valid score at all is left out. With ``--overall-weight 6`` the explicit overall weighs as
    much as the six dimensions together (the seed project's rule): 6 dimensions averaging 5
    and an overall of 8 give (30 + 48) / 12 = 6.5 → 65. ``w = 0`` averages the dimensions only.
    The benchmark ``overall`` is the mean of the turn scores ×10; ``dialogue_macro`` is the
    mean of the per-dialogue overalls.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from ..errors import GeoVLError
from ..fileio import iter_jsonl, write_json
from .judge_parse import DIMENSIONS, KEYS, LABELS, OVERALL
from .table import format_table

STATUSES = ("ok", "partial", "unparseable", "error")
MAX_PRINTED = 20  # dialogues printed by `geovl judge stats` (all of them go to stats.md)


class JudgmentsFileError(GeoVLError, ValueError):
    """A judgments file that cannot be read; the message names the file (and line)."""


def judgments_path(d) -> Path:
    d = Path(d)
    return d if d.is_file() else d / "judgments.jsonl"


def read_judgments(path) -> list[dict]:
    """Records of a judgments file (a folder means its ``judgments.jsonl``); the last record
    of a ``(id, turn)`` wins; order of first appearance is kept."""
    path = judgments_path(path)
    if not path.is_file():
        raise JudgmentsFileError(f"{path}: no judgments file (run `geovl judge ... --out DIR` first)")
    by_key: dict = {}
    for lineno, rec in iter_jsonl(path, error_class=JudgmentsFileError):
        if not isinstance(rec, dict) or "id" not in rec or "turn" not in rec:
            raise JudgmentsFileError(f"{path}:{lineno}: a judgment needs 'id' and 'turn'")
        scores = rec.get("scores") or {}
        if not isinstance(scores, dict):
            raise JudgmentsFileError(f"{path}:{lineno}: 'scores' must be an object")
        for k, v in scores.items():
            if k not in KEYS or isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= 10:
                raise JudgmentsFileError(f"{path}:{lineno}: bad score {k!r}: {v!r} (keys {list(KEYS)}, values 1-10)")
        by_key[(str(rec["id"]), int(rec["turn"]))] = dict(rec, id=str(rec["id"]), turn=int(rec["turn"]), scores=scores)
    return list(by_key.values())


def turn_score(scores: dict, overall_weight: float = 1.0) -> float | None:
    """The combined 1–10 score of one turn (see the module docstring), ``None`` without scores."""
    dims = [scores[k] for k in DIMENSIONS if k in scores]
    total, weight = float(sum(dims)), float(len(dims))
    if OVERALL in scores and overall_weight > 0:
        total += overall_weight * scores[OVERALL]
        weight += overall_weight
    return total / weight if weight > 0 else None


def _mean10(xs: list[float]) -> float | None:
    return 10 * sum(xs) / len(xs) if xs else None


def _group(records: list[dict], overall_weight: float) -> dict:
    dims = {}
    for k in KEYS:
        vals = [r["scores"][k] for r in records if k in r["scores"]]
        dims[k] = {"mean": _mean10(vals), "n_valid": len(vals)}
    turns = [s for s in (turn_score(r["scores"], overall_weight) for r in records) if s is not None]
    return {"n_turns": len(records), "dimensions": dims, "overall": _mean10(turns), "n_scored": len(turns)}


def summarize(records: list[dict], overall_weight: float = 1.0) -> dict:
    """Benchmark and per-dialogue figures of judgment records (module docstring)."""
    if overall_weight < 0:
        raise ValueError(f"overall weight must be >= 0, got {overall_weight}")
    out = {"overall_weight": overall_weight, **_group(records, overall_weight)}
    counts = {s: 0 for s in STATUSES}
    for r in records:
        s = r.get("status") or ("ok" if len(r["scores"]) == len(KEYS) else "partial" if r["scores"] else "unparseable")
        counts[s] = counts.get(s, 0) + 1
    out["status"] = counts
    by_dialogue: dict[str, list] = {}
    for r in records:
        by_dialogue.setdefault(r["id"], []).append(r)
    out["n_dialogues"] = len(by_dialogue)
    out["dialogues"] = {d: _group(sorted(rs, key=lambda r: r["turn"]), overall_weight) for d, rs in by_dialogue.items()}
    macro = [g["overall"] for g in out["dialogues"].values() if g["overall"] is not None]
    out["dialogue_macro"] = sum(macro) / len(macro) if macro else None
    return out


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def label(key: str) -> str:
    en, zh = LABELS[key]
    return f"{en} / {zh}"


def stats_rows(s: dict) -> list[list]:
    rows = [[label(k), _f(s["dimensions"][k]["mean"]), f"{s['dimensions'][k]['n_valid']}/{s['n_turns']}"] for k in KEYS]
    rows.append(
        [
            f"combined (overall weight {s['overall_weight']:g}) / 综合",
            _f(s["overall"]),
            f"{s['n_scored']}/{s['n_turns']}",
        ]
    )
    return rows


STATS_HEADERS = ("dimension / 维度", "score (0-100) / 得分", "valid turns / 有效轮次")


def format_stats(s: dict) -> str:
    st = s["status"]
    head = (
        f"{s['n_dialogues']} dialogues, {s['n_turns']} judged turns: {st['ok']} complete, {st['partial']} partial, "
        f"{st['unparseable']} unparseable, {st['error']} errors / 对话 {s['n_dialogues']} 个，评审轮次 {s['n_turns']}"
    )
    text = head + "\n" + format_table(STATS_HEADERS, stats_rows(s), right=[False, True, True])
    text += f"\nmean of the per-dialogue combined scores / 按对话平均: {_f(s['dialogue_macro'])}"
    return text


def markdown_table(headers, rows) -> str:
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


SHORT = {"creativity": "Cre", "richness": "Ric", "visual_perception": "Vis", "logical_coherence": "Log",
         "answer_accuracy": "Acc", "image_relationship": "Img", "overall": "Ovr"}  # fmt: skip
DIALOGUE_HEADERS = ("dialogue / 对话", "turns / 轮次", "scored / 有效") + tuple(SHORT.values()) + ("combined / 综合",)


def dialogue_rows(s: dict) -> list[list]:
    """One row per dialogue: turns, scored turns, each dimension's mean and the combined score (0–100)."""
    return [
        [d, g["n_turns"], g["n_scored"]] + [_f(g["dimensions"][k]["mean"]) for k in KEYS] + [_f(g["overall"])]
        for d, g in s["dialogues"].items()
    ]


def stats_markdown(s: dict, title: str) -> str:
    legend = ", ".join(f"{v} = {LABELS[k][0]}" for k, v in SHORT.items())
    return (
        f"# Judge scores / 评审得分: {title}\n\n" + format_stats(s).split("\n")[0] + "\n\n"
        + markdown_table(STATS_HEADERS, stats_rows(s)) + "\n\n"
        + f"Mean of the per-dialogue combined scores / 按对话平均: {_f(s['dialogue_macro'])}\n\n"
        + f"## Per dialogue / 各对话\n\n{legend}\n\n" + markdown_table(DIALOGUE_HEADERS, dialogue_rows(s)) + "\n"
    )  # fmt: skip


# -- comparison ------------------------------------------------------------------------------------
def compare(a: dict, b: dict, names=("before", "after")) -> dict:
    """Rows per dimension (+ explicit overall, + combined): both means, delta (points), valid counts."""
    rows = []
    for k in KEYS:
        x, y = a["dimensions"][k], b["dimensions"][k]
        rows.append({"key": k, "a": x["mean"], "b": y["mean"], "n_a": x["n_valid"], "n_b": y["n_valid"]})
    rows.append({"key": "combined", "a": a["overall"], "b": b["overall"], "n_a": a["n_scored"], "n_b": b["n_scored"]})
    for r in rows:
        r["delta"] = None if r["a"] is None or r["b"] is None else r["b"] - r["a"]
    return {
        "names": list(names),
        "overall_weight": a["overall_weight"],
        "rows": rows,
        "n_turns": [a["n_turns"], b["n_turns"]],
    }


def compare_rows(c: dict) -> tuple[list[str], list[list]]:
    n1, n2 = c["names"]
    headers = ["dimension / 维度", n1, n2, "delta / 变化", f"valid {n1}", f"valid {n2}"]
    rows = []
    for r in c["rows"]:
        name = label(r["key"]) if r["key"] in LABELS else f"combined (w={c['overall_weight']:g}) / 综合"
        d = "-" if r["delta"] is None else f"{r['delta']:+.1f}"
        rows.append([name, _f(r["a"]), _f(r["b"]), d, r["n_a"], r["n_b"]])
    return headers, rows


def render_compare_chart(c: dict, path: Path) -> Path:
    """Grouped bars (0–100) per dimension, explicit overall and combined score; English labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = c["rows"]
    labels = [
        textwrap.fill(LABELS[r["key"]][0] if r["key"] in LABELS else f"Combined (w={c['overall_weight']:g})", 13)
        for r in rows
    ]
    names = [n if n.isascii() and n.isprintable() else d for n, d in zip(c["names"], ("before", "after"))]
    fig = Figure(figsize=(10, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    w = 0.38
    xs = list(range(len(rows)))
    for off, key, name, color in ((-w / 2, "a", names[0], "#9aa5b1"), (w / 2, "b", names[1], "#2f7ebc")):
        bars = ax.bar([x + off for x in xs], [r[key] or 0.0 for r in rows], w, label=name, color=color)
        ax.bar_label(bars, labels=[_f(r[key], 0) for r in rows], fontsize=8, padding=2)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("judge score (0-100)")
    ax.set_title("Judge scores by dimension")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def write_stats(records: list[dict], out_dir, overall_weight: float = 1.0, title: str = "") -> dict:
    """``stats.json`` + ``stats.md`` in ``out_dir``; returns the summary."""
    s = summarize(records, overall_weight)
    out_dir = Path(out_dir)
    write_json(out_dir / "stats.json", s)
    (out_dir / "stats.md").write_text(stats_markdown(s, title or out_dir.name), encoding="utf-8")
    return s


def write_comparison(
    a: dict, b: dict, names: list[str], dir_a, dir_b, out, overall_weight: float = 1.0
) -> tuple[str, dict]:
    """Compare two summaries (:func:`summarize`): ``compare.md``, ``compare.json`` and ``compare.png`` in ``out``.
    Returns the comparison table as text and the comparison (:func:`compare`)."""
    c = compare(a, b, names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    headers, rows = compare_rows(c)
    text = format_table(headers, rows, right=[False] + [True] * 5)
    md = f"# Judge scores: {names[0]} vs {names[1]} / 评审得分对比\n\n"
    md += f"- {names[0]}: `{dir_a}` ({a['n_turns']} judged turns)\n- {names[1]}: `{dir_b}` ({b['n_turns']} judged turns)\n"
    md += f"- scores ×10 (0–100); combined score with overall weight {overall_weight:g}\n\n"
    md += markdown_table(headers, rows) + "\n\n![chart](compare.png)\n"
    (out / "compare.md").write_text(md, encoding="utf-8")
    write_json(out / "compare.json", {**c, "before": a, "after": b})
    render_compare_chart(c, out / "compare.png")
    return text, c
