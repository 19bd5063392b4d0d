"""``geovl model ...``: tiny offline models (and, later, downloads)."""

from __future__ import annotations

import importlib

SUBCOMMANDS = ["model_tiny", "model_download"]


def register(sub) -> None:
    p = sub.add_parser("model", help="build tiny offline models, inspect model folders")
    p.set_defaults(_group_parser=p)
    model_sub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    for name in SUBCOMMANDS:
        try:  # TEMPORARY during parallel development; removed before landing
            mod = importlib.import_module(f"geovl.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"geovl.commands.{name}":
                raise
            continue
        mod.register(model_sub)
