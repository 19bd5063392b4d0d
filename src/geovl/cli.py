"""The ``geovl`` command. Sub-commands live in :mod:`geovl.commands` (one module per group);
they import only :mod:`argparse` at registration time so ``geovl --help`` stays fast, and pull
in torch/transformers lazily when run."""

from __future__ import annotations

import argparse
import importlib
import sys

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


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2 (or ``.code``)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="geovl",
        description="Turn Qwen-VL models into Earth-observation experts: data → fine-tuning → evaluation → serving.",
    )
    parser.add_argument("--version", action="version", version=f"geovl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name, _ in COMMAND_MODULES:
        mod = importlib.import_module(f"geovl.commands.{mod_name}")
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # a group without its sub-command: show that group's help
        (getattr(args, "_group_parser", None) or parser).print_help()
        return 2
    try:
        rc = args.func(args)
    except CLIError as e:
        print(f"geovl: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("geovl: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def run_lazy(target: str):
    """``"geovl.data.convert:run"`` → a function that imports the target only when called.

    Known fatal errors from the data/model layers become :class:`CLIError` (no traceback)."""

    def _call(args):
        mod_name, fn = target.split(":")
        mod = importlib.import_module(mod_name)
        try:
            return getattr(mod, fn)(args)
        except CLIError:
            raise
        except Exception as e:  # noqa: BLE001
            if type(e).__name__ in USER_ERRORS:
                raise CLIError(str(e)) from e
            raise

    return _call


# Exception class names that are user errors (bad file, bad option): printed, not traced.
USER_ERRORS = {"DatasetFileError", "ConvertError", "UnknownModelType", "RecipeError", "ImageError", "ModelFolderError", "InspectError", "DownloadError", "ModelSetupError", "TinyModelError", "NonFiniteLoss", "MergeError", "ResumeError", "ShardedCheckpointError", "FSDPUnavailable"}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
