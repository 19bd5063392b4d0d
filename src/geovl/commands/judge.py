"""``geovl judge``: a judge model scores multi-turn answers (MMDU-style); ``geovl judge stats``."""

from __future__ import annotations

import argparse

from ..cli import CLIError, run_lazy
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
    p.add_argument(
        "--judge",
        action="store_true",
        help="optional marker for readability (`--judge --model M`): the engine options choose the judge model",
    )
    p.add_argument(
        "--answers",
        metavar="FILE",
        help="answers JSONL from `geovl eval --dialogue` (or plain `geovl eval` predictions)",
    )
    p.add_argument(
        "--out", metavar="DIR", help="output folder: judgments.jsonl, judge_config.json, stats.json, stats.md"
    )
    p.add_argument(
        "--template",
        metavar="FILE",
        help="judge prompt template (placeholders {question} {reference} {answer} {turn} {n_images}); default: the built-in one for --lang",
    )
    p.add_argument("--lang", choices=("zh", "en"), default="zh", help="language of the built-in template")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep finished judgments in DIR and judge only the remaining turns (and failed calls)",
    )
    p.add_argument(
        "--judgments",
        metavar="FILE",
        help="re-parse the raw outputs of an earlier judgments.jsonl into --out without calling a judge",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N dialogues")
    p.add_argument(
        "--overall-weight",
        type=float,
        default=1.0,
        help="weight of the judge's explicit overall score in the combined score (6 = the seed project's rule)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_lazy("geovl.commands.judge:run"))

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
    s.add_argument(
        "--overall-weight",
        type=float,
        default=1.0,
        help="weight of the explicit overall score (6 = the seed project's rule)",
    )
    s.add_argument("--compare", metavar="DIR2", help="a second judge run (e.g. after fine-tuning) to compare with DIR")
    s.add_argument("--names", metavar="A,B", default="before,after", help="labels of DIR and DIR2")
    s.add_argument("--out", metavar="OUT", help="comparison folder (default: DIR2/compare_<DIR name>)")
    s.set_defaults(func=run_lazy("geovl.commands.judge:run_stats"))


def run(args) -> int:
    import sys
    from pathlib import Path

    from geovl.evaluate.judge import JudgeError, judge_answers, load_template, read_answers, rescore
    from geovl.evaluate.judge_stats import JudgmentsFileError, format_stats, read_judgments, write_stats
    from geovl.inference import EngineError

    from .eval import open_engine_from_args, params_from_args

    if not args.out:
        raise CLIError("--out DIR is required (judgments.jsonl, stats.json and stats.md are written there)")
    try:
        if args.judgments:
            if args.answers or args.model or args.api:
                raise CLIError("--judgments re-parses saved judge outputs; it takes no --answers/--model/--api")
            c = rescore(args.judgments, args.out)
            print(f"re-parsed {c['turns']} judgments from {args.judgments} → {c['out']} / 已重新解析")
        else:
            if not args.answers:
                raise CLIError(
                    "give --answers FILE (from `geovl eval --dialogue`) or --judgments FILE to re-parse; see `geovl judge -h`"
                )
            if not (args.model or args.api):
                raise CLIError("give the judge: --model FOLDER [--adapter A] or --api URL / 需要指定评审模型")
            if args.limit is not None and args.limit < 0:
                raise CLIError(f"--limit must be >= 0, got {args.limit}")
            template, tname = load_template(args.template, args.lang)
            dialogues = read_answers(args.answers)  # a bad file fails before a model is loaded
            params = params_from_args(args)
            if params.temperature != 0:
                print(
                    "note: the judge samples (--temperature > 0); greedy (0) is the reproducible default",
                    file=sys.stderr,
                )
            engine = open_engine_from_args(args)
            try:
                c = judge_answers(
                    engine,
                    dialogues,
                    args.out,
                    template,
                    tname,
                    params,
                    resume=args.resume,
                    limit=args.limit,
                    progress=not args.no_progress,
                    source=str(args.answers),
                )
            except EngineError as e:
                raise CLIError(f"judge call failed: {e} (finished turns are kept; rerun with --resume)") from e
            msg = f"judged {c['judged']} turns of {c['dialogues']} dialogues"
            if c["skipped"]:
                msg += f", {c['skipped']} already done"
            if c["errors"]:
                msg += f", {c['errors']} failed calls (rerun with --resume to retry them)"
            print(msg + f" → {c['out']} / 评审完成")
        recs = read_judgments(args.out)
    except (JudgeError, JudgmentsFileError) as e:
        raise CLIError(str(e)) from e
    s = write_stats(recs, args.out, args.overall_weight, Path(args.out).name)
    print(format_stats(s))
    print(f"\nstats → {Path(args.out) / 'stats.json'}; details: geovl judge stats {args.out}")
    return 0


def run_stats(args) -> int:
    """``geovl judge stats DIR [--overall-weight W] [--compare DIR2 --names A,B] [--out OUT]``."""
    from pathlib import Path

    from geovl.evaluate.judge_stats import (
        DIALOGUE_HEADERS,
        MAX_PRINTED,
        JudgmentsFileError,
        dialogue_rows,
        format_stats,
        judgments_path,
        read_judgments,
        summarize,
        write_comparison,
        write_stats,
    )
    from geovl.evaluate.table import format_table

    if args.overall_weight < 0:
        raise CLIError(f"--overall-weight must be >= 0, got {args.overall_weight}")
    try:
        first = read_judgments(args.dir)
        second = read_judgments(args.compare) if args.compare else None
    except JudgmentsFileError as e:
        raise CLIError(str(e)) from e
    folder = lambda p: judgments_path(p).parent  # noqa: E731
    if second is None:
        s = write_stats(first, folder(args.dir), args.overall_weight, Path(args.dir).name)
        print(format_stats(s))
        rows = dialogue_rows(s)
        print(
            "\n"
            + format_table(DIALOGUE_HEADERS, rows[:MAX_PRINTED], right=[False] + [True] * (len(DIALOGUE_HEADERS) - 1))
        )
        if len(rows) > MAX_PRINTED:
            print(f"… {len(rows) - MAX_PRINTED} more dialogues in stats.md / 其余对话见 stats.md")
        print(f"\nstats → {folder(args.dir) / 'stats.json'}, {folder(args.dir) / 'stats.md'}")
        return 0
    names = [n.strip() for n in (args.names or "before,after").split(",")]
    if len(names) != 2 or not all(names):
        raise CLIError(f"--names needs two comma-separated labels, got {args.names!r}")
    a, b = summarize(first, args.overall_weight), summarize(second, args.overall_weight)
    out = Path(args.out) if args.out else folder(args.compare) / f"compare_{folder(args.dir).name}"
    print(f"{names[0]}: {args.dir} ({a['n_turns']} turns)   {names[1]}: {args.compare} ({b['n_turns']} turns)")
    text, _ = write_comparison(a, b, names, args.dir, args.compare, out, args.overall_weight)
    print(text)
    print(f"\nreport → {out / 'compare.md'}, {out / 'compare.png'}, {out / 'compare.json'}")
    return 0
