"""``geovl rewards score``: the rule-based GRPO rewards of an answer (or of a predictions file).

One answer (``--question Q --prediction P --reference R [--qtype T] [--meta JSON]``) prints JSON::

    {"kind", "routed_by", "qtype", "rewards": {name: value | null}, "rs_reward",
     "selected", "weights", "total"}

``rewards`` holds every built-in and plugin reward (``null``: not applicable to this kind);
``total`` is the weighted sum over ``selected`` (the GRPO default set + plugin functions, or
``--rewards``), i.e. the scalar GRPO would use with the same settings.

A predictions file from ``geovl eval`` (``--predictions FILE``) prints the mean routed reward
overall and per qtype, and the mean of every selected reward over the samples it applies to.
"""

from __future__ import annotations

import json
import math
import sys

from ..cli import CLIError, run_lazy


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
    s.add_argument(
        "--qtype", default="", help="yes_no | count | number | area | choice | open | structured | grounding"
    )
    s.add_argument(
        "--meta",
        help='sample metadata as JSON, e.g. \'{"gt": {"m2": 15000}}\' (a measured area) or \'{"choices": [...]}\'',
    )
    s.add_argument("--predictions", metavar="FILE", help="predictions JSONL from `geovl eval`: print mean rewards")
    s.add_argument("--reward-file", metavar="PY", help="plugin file: its *_reward functions are added")
    s.add_argument(
        "--rewards",
        metavar="NAMES",
        help="comma-separated built-ins in the weighted total (default: the GRPO default set)",
    )
    s.add_argument(
        "--weights", metavar="JSON", help="weights of the total, e.g. '{\"count_reward\": 2}' (default 1.0 each)"
    )
    s.add_argument("--compact", action="store_true", help="one-line JSON")
    s.set_defaults(func=run_lazy("geovl.commands.rewards:run"))


def _weights(args) -> dict:

    if not args.weights:
        return {}
    try:
        w = json.loads(args.weights)
    except ValueError as e:
        raise CLIError(f"--weights: not valid JSON ({e}); example: --weights '{{\"count_reward\": 2}}'") from e
    if not isinstance(w, dict):
        raise CLIError("--weights must be a JSON object {name: weight}")
    return w


def _setup(args):
    from geovl.errors import RecipeError
    from geovl.rewards.funcs import BUILTIN_REWARDS
    from geovl.rewards.plugins import RewardPluginError, load_reward_file, resolve_rewards

    names = None if args.rewards is None else [n.strip() for n in args.rewards.split(",") if n.strip()]
    try:
        funcs, selected, weights = resolve_rewards(names, args.reward_file, _weights(args))
        everything = dict(BUILTIN_REWARDS)
        if args.reward_file:
            everything.update(load_reward_file(args.reward_file))
    except (RewardPluginError, RecipeError) as e:
        raise CLIError(str(e)) from e
    return funcs, selected, weights, everything


def _call(fn, name: str, prediction: str, row: dict):

    try:
        out = fn([[{"role": "assistant", "content": prediction}]], **{k: [v] for k, v in row.items()})
    except Exception as e:  # noqa: BLE001 - a plugin's own bug: name it
        raise CLIError(f"reward {name} failed: {type(e).__name__}: {e}") from e
    if not isinstance(out, (list, tuple)) or len(out) != 1:
        raise CLIError(f"reward {name} must return a list with one value per completion, got {out!r}")
    v = out[0]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise CLIError(f"reward {name} returned {v!r}, not a number") from None


def score_one(prediction: str, row: dict, selected, weights, everything) -> dict:
    from geovl.rewards.funcs import rs_reward
    from geovl.rewards.route import route

    kind, by = route(row.get("qtype"), row.get("question"))
    values = {name: _call(fn, name, prediction, row) for name, fn in everything.items()}
    total = sum(w * values[n] for n, w in zip(selected, weights) if values[n] is not None)
    return {
        "kind": kind,
        "routed_by": by,
        "qtype": row.get("qtype"),
        "rewards": values,
        "rs_reward": rs_reward([prediction], **{k: [v] for k, v in row.items()})[0],
        "selected": selected,
        "weights": dict(zip(selected, weights)),
        "total": total,
    }


def _score_file(args, selected, weights, everything) -> dict:
    from geovl.evaluate.score import PredictionsFileError, read_predictions

    try:
        records = read_predictions(args.predictions)
    except PredictionsFileError as e:
        raise CLIError(str(e)) from e
    sums: dict[str, list[float]] = {n: [] for n in selected}
    by_qtype: dict[str, list[float]] = {}
    routed: list[float] = []
    totals: list[float] = []
    for rec in records:
        row = {
            "answer": rec.get("reference") or "",
            "qtype": rec.get("qtype"),
            "question": rec.get("question") or "",
            "meta": rec.get("meta") if isinstance(rec.get("meta"), dict) else {},
        }
        res = score_one(
            rec.get("prediction") or "",
            row,
            selected,
            weights,
            {n: everything[n] for n in selected} | {"rs_reward": everything["rs_reward"]},
        )
        routed.append(res["rs_reward"])
        totals.append(res["total"])
        by_qtype.setdefault(str(rec.get("qtype")), []).append(res["rs_reward"])
        for n in selected:
            if res["rewards"][n] is not None:
                sums[n].append(res["rewards"][n])
    mean = lambda xs: round(sum(xs) / len(xs), 6) if xs else None  # noqa: E731
    return {
        "file": str(args.predictions),
        "n": len(records),
        "mean_rs_reward": mean(routed),
        "mean_total": mean(totals),
        "by_qtype": {q: {"n": len(v), "mean_rs_reward": mean(v)} for q, v in sorted(by_qtype.items())},
        "means": {n: {"n": len(v), "mean": mean(v)} for n, v in sums.items()},
        "selected": selected,
        "weights": dict(zip(selected, weights)),
    }


def run(args) -> int:

    funcs, selected, weights, everything = _setup(args)
    if args.predictions:
        if args.prediction is not None or args.reference is not None:
            raise CLIError("use either --predictions FILE or --prediction/--reference, not both")
        out = _score_file(args, selected, weights, everything)
    else:
        if args.prediction is None or args.reference is None:
            raise CLIError("--prediction and --reference are required (or --predictions FILE from `geovl eval`)")
        meta = {}
        if args.meta:
            try:
                meta = json.loads(args.meta)
            except ValueError as e:
                raise CLIError(f"--meta: not valid JSON ({e})") from e
            if not isinstance(meta, dict):
                raise CLIError('--meta must be a JSON object, e.g. \'{"gt": {"m2": 15000}}\'')
        row = {"answer": args.reference, "qtype": args.qtype or "", "question": args.question or "", "meta": meta}
        out = score_one(args.prediction, row, selected, weights, everything)
    json.dump(out, sys.stdout, ensure_ascii=False, indent=None if args.compact else 2)
    sys.stdout.write("\n")
    return 0
