"""``geovl train sft|grpo RECIPE.yaml [key=value ...]``."""

from __future__ import annotations

from ..cli import run_lazy


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a Qwen-VL model from a YAML recipe")
    p.set_defaults(_group_parser=p)
    tsub = p.add_subparsers(dest="train_command", metavar="SUBCOMMAND")
    s = tsub.add_parser(
        "sft",
        help="supervised fine-tuning (LoRA / vision LoRA / full / freezing)",
        description="Supervised fine-tuning. Recipe keys can be overridden as key=value, e.g. "
        "model=DIR train_data=FILE output_dir=OUT max_steps=6 lr=2e-5",
    )
    s.add_argument("recipe", help="YAML recipe (see recipes/)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    s.set_defaults(func=run_lazy("geovl.train.sft:run"))
    g = tsub.add_parser(
        "grpo",
        help="GRPO with rule-based rewards (yes/no, count, area, open; plugins) / 强化学习对齐",
        description="GRPO on TRL's GRPOTrainer with the rewards of `geovl rewards score`. Start from a base model, "
        "a full fine-tuned folder or an SFT LoRA adapter (final/). Recipe keys can be overridden as key=value, e.g. "
        "model=DIR train_data=FILE output_dir=OUT max_steps=100 num_generations=4 reward_file=my_rewards.py",
    )
    g.add_argument("recipe", help="YAML recipe (see recipes/grpo-*.yaml)")
    g.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    g.set_defaults(func=run_lazy("geovl.train.grpo:run"))
