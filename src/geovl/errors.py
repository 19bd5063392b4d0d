"""One base class for every error a user can cause and fix (a bad file, a bad option, a model
folder that is not one).

``geovl.cli.main`` catches :class:`GeoVLError` once: it prints ``geovl: error: <message>`` (and the
hint on its own line) without a traceback and exits with ``exit_code``. The API turns it into an
HTTP 4xx. Anything else is a bug and keeps its traceback.

Subclasses may also derive from a built-in class (``ValueError``, ``OSError``) where callers
already catch that; the base stays first so ``except GeoVLError`` sees them all.
"""

from __future__ import annotations


class GeoVLError(Exception):
    """A user-facing error: ``message`` says what is wrong (naming the file or option),
    ``hint`` (optional) says what to do about it, ``exit_code`` is the CLI's exit status."""

    exit_code: int = 2

    def __init__(self, message: str = "", *args, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message, *args)
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self)


class RecipeError(GeoVLError, ValueError):
    """A bad training-recipe value (``geovl train``; also the reward settings that :mod:`geovl.rewards`
    checks for GRPO). Lives here so that rewards, a lower layer than train, can raise it."""
