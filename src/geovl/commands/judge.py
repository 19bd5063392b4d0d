"""``geovl judge``: a judge model scores multi-turn answers (MMDU-style); ``geovl judge stats``."""

from __future__ import annotations

import argparse

from ..cli import run_lazy
from .eval import add_engine_args


def register(sub) -> None:
    p = sub.add_parser(
        "judge",
        help="score multi-turn answers with a judge model (six dimensions, MMDU-style) / 评审模型打分",
        description=(
            "Score every turn of `geovl eval --dialogue` answers with a judge model (a local folder via --model or an "
            "OpenAI-compatible server via --api): creativity, richness, visual perception, logical coherence, answer "
            "accuracy, image relationship understanding (1-10 each) and an overall score. Raw judge outputs are kept "
            "and parsed robustly into DIR/judgments.jsonl; DIR/stats.json and stats.md summarise them. "
            "`geovl judge stats DIR [--compare DIR2]` recomputes statistics and compares two runs. "
            "用评审模型对多轮回答逐轮打分（六个维度 + 总体评分），并统计/对比结果。"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.set_defaults(_group_parser=p)
    add_engine_args(p)
    p.set_defaults(max_new_tokens=1024, batch_size=4)
    p.add_argument("--judge", action="store_true", help="optional marker for readability (`--judge --model M`): the engine options choose the judge model")
    p.add_argument("--answers", metavar="FILE", help="answers JSONL from `geovl eval --dialogue` (or plain `geovl eval` predictions)")
    p.add_argument("--out", metavar="DIR", help="output folder: judgments.jsonl, judge_config.json, stats.json, stats.md")
    p.add_argument("--template", metavar="FILE", help="judge prompt template (placeholders {question} {reference} {answer} {turn} {n_images}); default: the built-in one for --lang")
    p.add_argument("--lang", choices=("zh", "en"), default="zh", help="language of the built-in template")
    p.add_argument("--resume", action="store_true", help="keep finished judgments in DIR and judge only the remaining turns (and failed calls)")
    p.add_argument("--judgments", metavar="FILE", help="re-parse the raw outputs of an earlier judgments.jsonl into --out without calling a judge")
    p.add_argument("--limit", type=int, default=None, help="only the first N dialogues")
    p.add_argument("--overall-weight", type=float, default=1.0, help="weight of the judge's explicit overall score in the combined score (6 = the seed project's rule)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_lazy("geovl.evaluate.judge:run"))

    modes = p.add_subparsers(dest="judge_mode", metavar="stats")
    s = modes.add_parser(
        "stats",
        help="per-dimension statistics of a judge run; compare two runs / 评审统计与对比",
        description=(
            "Per-dimension means ×10 (0-100) over the turns with a valid score, valid counts per dimension, a combined "
            "score per dialogue and for the benchmark. --overall-weight W: the judge's explicit overall score counts W "
            "times in the combined score, i.e. (sum of valid dimension scores + W*overall) / (n valid dimensions + W). "
            "--compare DIR2: a before/after table (printed and Markdown) and a chart (PNG)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("dir", help="judge output folder (or its judgments.jsonl)")
    s.add_argument("--overall-weight", type=float, default=1.0, help="weight of the explicit overall score (6 = the seed project's rule)")
    s.add_argument("--compare", metavar="DIR2", help="a second judge run (e.g. after fine-tuning) to compare with DIR")
    s.add_argument("--names", metavar="A,B", default="before,after", help="labels of DIR and DIR2")
    s.add_argument("--out", metavar="OUT", help="comparison folder (default: DIR2/compare_<DIR name>)")
    s.set_defaults(func=run_lazy("geovl.evaluate.judge_stats:run"))
