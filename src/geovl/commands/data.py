"""``geovl data ...``: convert, inspect, synth. Each sub-command registers itself from its own module."""

from __future__ import annotations

import importlib

SUBCOMMANDS = ["data_convert", "data_inspect", "data_synth"]


def register(sub) -> None:
    p = sub.add_parser("data", help="convert, inspect and synthesise datasets")
    p.set_defaults(_group_parser=p)
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    for name in SUBCOMMANDS:
        try:  # TEMPORARY during parallel development; removed before landing
            mod = importlib.import_module(f"geovl.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"geovl.commands.{name}":
                raise
            continue
        mod.register(data_sub)
