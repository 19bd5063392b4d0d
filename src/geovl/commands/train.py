"""``geovl train sft|grpo RECIPE.yaml [key=value ...] [--nproc N [--nnodes M ...]]``.

One process by default. ``--nproc N`` starts N training processes on this machine through PyTorch's
launcher (``torch.distributed.run``, what ``torchrun`` runs), in this process: each runs
``python -m geovl train ...`` with the same recipe and overrides. ``--nnodes M --node-rank R
--master-addr HOST --master-port PORT`` joins M such launchers on M machines (static rendezvous on
HOST:PORT, as ``torchrun --nnodes M --node_rank R --master_addr HOST --master_port PORT``). Launching
yourself keeps working: ``torchrun --nproc_per_node N -m geovl train sft ...`` and
``accelerate launch --num_processes N -m geovl train sft ...`` run the same code in each process.
"""

from __future__ import annotations

import os
import sys

from ..cli import run_lazy

_LAUNCH_FLAGS = ("nproc", "nnodes", "node_rank", "master_addr", "master_port")


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a Qwen-VL model from a YAML recipe")
    p.set_defaults(_group_parser=p)
    tsub = p.add_subparsers(dest="train_command", metavar="SUBCOMMAND")
    s = tsub.add_parser(
        "sft",
        help="supervised fine-tuning (LoRA / vision LoRA / full / freezing)",
        description="Supervised fine-tuning. Recipe keys (geovl's and every transformers TrainingArguments / TRL "
        "SFTConfig field) can be overridden as key=value, e.g. model=DIR train_data=FILE output_dir=OUT max_steps=6 "
        "learning_rate=2e-5 max_grad_norm=0.5 deepspeed=zero3",
    )
    s.add_argument("recipe", help="YAML recipe (see recipes/)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    _launch_args(s)
    s.set_defaults(func=run_lazy("geovl.commands.train:run_sft"))
    g = tsub.add_parser(
        "grpo",
        help="GRPO with rule-based rewards (yes/no, count, area, open; plugins) / 强化学习对齐",
        description="GRPO on TRL's GRPOTrainer with the rewards of `geovl rewards score`. Start from a base model, "
        "a full fine-tuned folder or an SFT LoRA adapter (final/). Recipe keys (geovl's and every TRL GRPOConfig field) "
        "can be overridden as key=value, e.g. model=DIR train_data=FILE output_dir=OUT max_steps=100 num_generations=4 "
        "reward_file=my_rewards.py",
    )
    g.add_argument("recipe", help="YAML recipe (see recipes/grpo-*.yaml)")
    g.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    _launch_args(g)
    g.set_defaults(func=run_lazy("geovl.commands.train:run_grpo"))


def _launch_args(p) -> None:
    a = p.add_argument_group("launching (several processes / machines) / 多卡与多机")
    a.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="start N training processes on this machine (one per GPU; on a CPU-only machine at most one per core)",
    )
    a.add_argument(
        "--nnodes",
        type=int,
        default=1,
        metavar="M",
        help="machines taking part (each runs this command with its --node-rank)",
    )
    a.add_argument(
        "--node-rank",
        type=int,
        default=0,
        metavar="R",
        help="this machine's number, 0..M-1 (0: the one at --master-addr)",
    )
    a.add_argument(
        "--master-addr",
        default=None,
        metavar="HOST",
        help="address of machine 0, reachable from all (with --nnodes > 1)",
    )
    a.add_argument(
        "--master-port", type=int, default=None, metavar="PORT", help="a free TCP port on machine 0 (default 29500)"
    )


def run_sft(args) -> int:
    from ..train.recipe import SFTRecipe

    return _run(args, SFTRecipe)


def run_grpo(args) -> int:
    from ..train.recipe import GRPORecipe

    return _run(args, GRPORecipe)


def _run(args, cls) -> int:
    from ..train.recipe import load_recipe
    from ..train.sft import end_distributed

    overrides = list(args.overrides)
    if args.resume:
        overrides.append("resume=true")
    launching = args.nproc is not None or args.nnodes > 1
    if launching and ("LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ):
        from ..train.recipe import RecipeError

        raise RecipeError(
            "--nproc/--nnodes given inside a launched process (torchrun / accelerate launch set WORLD_SIZE): "
            "let that launcher start the processes, or run `geovl train ... --nproc N` without it"
        )
    if launching:  # bad keys and values fail here, once, before any process starts
        from ..train.recipe import SFTRecipe, recipe_kwargs
        from ..train.sft import preflight

        if cls is SFTRecipe:
            preflight(load_recipe(args.recipe, overrides, cls))
        else:  # GRPO's batch checks need the world size: the launched processes build the recipe
            recipe_kwargs(args.recipe, overrides, cls)
        return launch(args)
    recipe = load_recipe(args.recipe, overrides, cls)
    if cls.__name__ == "GRPORecipe":
        from ..train.grpo import train_grpo

        train_grpo(recipe)
    else:
        from ..train.sft import train_sft

        train_sft(recipe)
    end_distributed()
    return 0


def available_workers() -> tuple[int, str]:
    """(how many training processes this machine can hold, what they are): CUDA GPUs, else CPU cores."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "CUDA GPUs"
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return n, "CPU cores"


def child_argv(args) -> list[str]:
    """The ``geovl`` arguments each launched process runs: the same command without the launch flags."""
    argv = ["train", args.train_command, str(args.recipe), *map(str, args.overrides)]
    if args.resume:
        argv.append("--resume")
    return argv


def launch(args) -> int:
    """Start ``--nproc`` processes (× ``--nnodes`` machines) through ``torch.distributed.run``; wait for all."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torch_run

    from ..train.recipe import RecipeError

    nproc = args.nproc or 1
    have, what = available_workers()
    if nproc < 1:
        raise RecipeError(f"--nproc {nproc}: give at least 1 process")
    if nproc > have:
        raise RecipeError(
            f"--nproc {nproc}: this machine has {have} {what}; start at most {have} processes "
            f"(one per {'GPU' if what.startswith('CUDA') else 'core'})"
        )
    if args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise RecipeError(
            f"--node-rank {args.node_rank} with --nnodes {args.nnodes}: the rank must be 0..{args.nnodes - 1}"
        )
    if args.nnodes > 1 and not args.master_addr:
        raise RecipeError(
            f"--nnodes {args.nnodes}: give --master-addr (the address of machine 0, the same on every machine)"
        )
    targs = ["--nproc_per_node", str(nproc), "--nnodes", str(args.nnodes)]
    if args.nnodes == 1 and args.master_port is None:
        targs.append("--standalone")  # a free port on this machine
    else:
        targs += [
            "--node_rank",
            str(args.node_rank),
            "--master_addr",
            args.master_addr or "127.0.0.1",
            "--master_port",
            str(args.master_port or 29500),
        ]
    targs += ["--module", "geovl", *child_argv(args)]
    print(f"geovl: starting {nproc} process(es) on node {args.node_rank} of {args.nnodes}", file=sys.stderr, flush=True)
    try:
        torch_run(get_args_parser().parse_args(targs))
    except ChildFailedError as e:
        failed = ", ".join(f"rank {r} (exit {f.exitcode})" for r, f in sorted(e.failures.items()))
        raise RecipeError(f"training failed in {failed}; that process's error is printed above", exit_code=1) from None
    return 0
