"""``geovl data ...``: convert, inspect, synth. Each sub-command registers itself from its own module."""

from __future__ import annotations

import importlib

SUBCOMMANDS = ["data_convert", "data_inspect", "data_synth"]


def register(sub) -> None:
    p = sub.add_parser("data", help="convert, inspect and synthesise datasets")
    p.set_defaults(_group_parser=p)
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"geovl.commands.{name}").register(data_sub)
