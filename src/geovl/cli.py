"""The ``geovl`` command. Sub-commands live in :mod:`geovl.commands` (one module per group);
they import only :mod:`argparse` at registration time so ``geovl --help`` stays fast, and pull
in torch/transformers lazily when run."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import GeoVLError

# (module in geovl.commands, top-level command name)
COMMAND_MODULES = [
    ("data", "data"),
    ("model", "model"),
    ("train", "train"),
    ("merge", "merge"),
    ("eval", "eval"),
    ("infer", "infer"),
    ("score", "score"),
    ("compare", "compare"),
    ("measure", "measure"),
    ("ask", "ask"),
    ("map", "map"),
    ("detect", "detect"),
    ("spectral", "spectral"),
    ("serve", "serve"),
    ("ui", "ui"),
    ("rewards", "rewards"),
    ("judge", "judge"),
]


class CLIError(GeoVLError):
    """A bad command-line option (a :class:`~geovl.errors.GeoVLError`): printed without a traceback,
    exit status 2 (or ``code``). Only :mod:`geovl.commands` raises it; library code raises its own
    GeoVLError subclasses."""

    def __init__(self, message: str, code: int = 2, hint: str | None = None):
        super().__init__(message, hint=hint, exit_code=code)

    @property
    def code(self) -> int:
        return self.exit_code


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="geovl",
        description="Turn Qwen-VL models into Earth-observation experts: data → fine-tuning → evaluation → serving.",
    )
    parser.add_argument("--version", action="version", version=f"geovl {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more diagnostics on stderr (debug messages); env GEOVL_LOG_LEVEL sets it too",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        help="fewer diagnostics on stderr: warnings and errors only (-qq: errors only)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name, _ in COMMAND_MODULES:
        mod = importlib.import_module(f"geovl.commands.{mod_name}")
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .log import set_verbosity

    set_verbosity(args.verbose, args.quiet)
    if not getattr(args, "func", None):
        # a group without its sub-command: show that group's help
        (getattr(args, "_group_parser", None) or parser).print_help()
        return 2
    try:
        rc = args.func(args)
    except GeoVLError as e:  # every user-facing error: message (and hint), no traceback
        print(f"geovl: error: {e}", file=sys.stderr)
        if e.hint:
            print(f"geovl: hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("geovl: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def run_lazy(target: str):
    """``"geovl.commands.convert:run"`` → a function that imports the target only when called."""

    def _call(args):
        mod_name, fn = target.split(":")
        return getattr(importlib.import_module(mod_name), fn)(args)

    return _call


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
