"""``geovl rewards score``: the rule-based GRPO rewards of an answer (or of a predictions file)."""

from __future__ import annotations

from ..cli import run_lazy


def register(sub) -> None:
    p = sub.add_parser("rewards", help="rule-based GRPO rewards (yes/no, count, area, open) / 强化学习奖励")
    p.set_defaults(_group_parser=p)
    rsub = p.add_subparsers(dest="rewards_command", metavar="SUBCOMMAND")
    s = rsub.add_parser(
        "score",
        help="print every reward and the routed total of one answer as JSON / 计算单个回答的奖励",
        description="Score one prediction against a reference with the GRPO reward functions (the same ones "
        "`geovl train grpo` uses) and print them as JSON. The rule is chosen by --qtype, or detected from the "
        "question (是否/Is there → yes/no, 多少/How many → count, 面积/area → number with unit, else open). "
        "With --predictions FILE (from `geovl eval`) print the mean rewards instead.",
    )
    s.add_argument("--question", default="", help="the question (used to route when --qtype is not given)")
    s.add_argument("--prediction", help="the model's answer")
    s.add_argument("--reference", help="the reference answer")
    s.add_argument("--qtype", default="", help="yes_no | count | number | area | choice | open | structured | grounding")
    s.add_argument("--meta", help='sample metadata as JSON, e.g. \'{"gt": {"m2": 15000}}\' (a measured area) or \'{"choices": [...]}\'')
    s.add_argument("--predictions", metavar="FILE", help="predictions JSONL from `geovl eval`: print mean rewards")
    s.add_argument("--reward-file", metavar="PY", help="plugin file: its *_reward functions are added")
    s.add_argument("--rewards", metavar="NAMES", help="comma-separated built-ins in the weighted total (default: the GRPO default set)")
    s.add_argument("--weights", metavar="JSON", help='weights of the total, e.g. \'{"count_reward": 2}\' (default 1.0 each)')
    s.add_argument("--compact", action="store_true", help="one-line JSON")
    s.set_defaults(func=run_lazy("geovl.rewards.cli:run"))
