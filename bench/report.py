"""Regenerate the README's benchmark table from bench/results/*.json (never edit it by hand).

The table sits between ``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->`` in README.md.
Each row comes from one result file's ``table`` entry (name, baseline, exact counts, the ratio keys to
show) and its ``ratios`` (median and min–max over the interleaved rounds, and whether every round was
above or below 1× or the range includes 1×, i.e. no measured difference), plus its ``behind`` note. A
failed bench shows as FAILED with its error; a missing file as "not run".

    python bench/report.py            # rewrite the table in README.md
    python bench/report.py --check    # exit 1 if README.md is not what the results give
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("sft", "eval", "api", "convert", "sam", "grpo", "render")
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _fmt(r: dict) -> str:
    """median (min–max; how the rounds fall around 1×): a range that includes 1× is no measured difference."""
    if 0.98 <= r["min"] and r["max"] <= 1.02:
        where = "within 2 % of 1× in every round"
    else:
        where = (
            "> 1× in every round" if r["min"] > 1 else "< 1× in every round" if r["max"] < 1 else "range includes 1×"
        )
    return f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f}; {where})"


def row(name: str, res: dict | None) -> str:
    if res is None:
        return f"| {name} | | | not run | |"
    if res.get("status") != "ok":
        err = (res.get("error") or "").strip().splitlines()
        side = res.get("failed_side")
        return f"| {name} | | | **FAILED**{f' ({_cell(side)})' if side else ''}: {_cell(err[0] if err else 'unknown error')} | |"
    t = res["table"]
    if t.get("kind") == "memory":  # a memory check: peak RSS against its budget, no baseline side
        v, budget = res[t["value"]], res["rss_budget_mb"]
        verdict = "within" if v["max"] <= budget else "**over**"
        cell = f"peak RSS {v['median']:,.0f} MB ({v['min']:,.0f}–{v['max']:,.0f}) over {res['repeats']} runs; {verdict} the {budget:,} MB budget"
        env = res["environment"]
        run = (
            f"{res['size']}, {env['machine']['cpus']} CPUs, {env['git']['commit'][:7] if env['git']['commit'] else '?'}"
        )
        return (
            f"| {_cell(t['name'])} | {_cell(t['baseline'])} | {_cell(t['counts'])} | {_cell(cell)} ({_cell(run)}) | |"
        )
    ratios = "; ".join(f"{label} {_fmt(res['ratios'][key])}" for label, key in t["ratios"])
    env = res["environment"]
    run = f"{res['size']}, {res['repeats']} rounds, {env['machine']['cpus']} CPUs, {env['git']['commit'][:7] if env['git']['commit'] else '?'}"
    note = f"**behind:** {res['behind']}" if res.get("behind") else ""
    return f"| {_cell(t['name'])} | {_cell(t['baseline'])} | {_cell(t['counts'])} | {_cell(ratios)} ({_cell(run)}) | {_cell(note)} |"


def table(results_dir: Path) -> str:
    lines = [
        START,
        "| benchmark | baseline (its best available configuration, same run) | exact counts | ratio, median (min–max) over interleaved rounds | where we are behind |",
        "|---|---|---|---|---|",
    ]
    for name in ORDER:
        p = results_dir / f"{name}.json"
        lines.append(row(name, json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None))
    lines.append(END)
    return "\n".join(lines)


def render(readme_text: str, results_dir: Path) -> str:
    if readme_text.count(START) != 1 or readme_text.count(END) != 1:
        raise SystemExit(f"README must hold exactly one {START} … {END} block")
    head, rest = readme_text.split(START)
    _, tail = rest.split(END)
    return head + table(results_dir) + tail


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's table is out of date")
    a = ap.parse_args(argv)
    old = a.readme.read_text(encoding="utf-8")
    new = render(old, a.results)
    if a.check:
        if new != old:
            print(f"{a.readme}: benchmark table out of date; run python bench/report.py", file=sys.stderr)
            return 1
        return 0
    a.readme.write_text(new, encoding="utf-8")
    print(f"rewrote the benchmark table in {a.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
