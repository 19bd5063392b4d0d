"""``geovl model ...``: tiny offline models (and, later, downloads)."""

from __future__ import annotations

import importlib

SUBCOMMANDS = ["model_tiny", "model_download"]


def register(sub) -> None:
    p = sub.add_parser("model", help="build tiny offline models, inspect model folders")
    p.set_defaults(_group_parser=p)
    model_sub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"geovl.commands.{name}").register(model_sub)
