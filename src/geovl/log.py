"""Logging for geovl's library code / 日志.

One :func:`get_logger`; every logger is a child of ``geovl``, which has one handler writing to standard
error with a short format: an INFO line is the message alone (what ``print(..., file=sys.stderr)`` used to
write), other levels are prefixed (``warning: …``; with ``--verbose`` also the logger's name). The level is
INFO by default so the usual diagnostics stay visible; ``geovl -v`` shows DEBUG, ``geovl -q`` only
warnings and errors (``-qq`` errors only); ``GEOVL_LOG_LEVEL`` (a level name) sets it without the CLI,
e.g. for torchrun workers.

What commands print for the user (results, tables, "next:" hints) and progress bars are not logging.
In training, :func:`main_process_logger` logs on the main process only (accelerate's logger)."""

from __future__ import annotations

import logging
import os
import sys

ROOT = "geovl"
ENV = "GEOVL_LOG_LEVEL"
DEFAULT_LEVEL = logging.INFO

_handler: logging.Handler | None = None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (not the stream of the moment the
    handler was made), so redirected or captured standard error sees the messages."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


class _ShortFormatter(logging.Formatter):
    def __init__(self, with_name: bool = False):
        super().__init__()
        self.with_name = with_name

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        name = f"[{record.name}] " if self.with_name else ""
        if record.levelno == logging.INFO:
            return f"{name}{msg}"
        return f"{record.levelname.lower()}: {name}{msg}"


def _level_from_env() -> int:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_LEVEL
    if raw.lstrip("-").isdigit():
        return int(raw)
    level = logging.getLevelName(raw.upper())
    return level if isinstance(level, int) else DEFAULT_LEVEL


# Libraries whose logger writes to standard *output*: DeepSpeed adds a stdout handler to its "DeepSpeed" logger
# when imported (transformers/accelerate import it whenever it is installed) and logs e.g. "Setting accelerator
# to CPU" there, which would corrupt what a command prints on stdout (JSON, JSONL). Their records go to standard
# error through geovl's handler instead (at geovl's level).
STDOUT_LIBRARY_LOGGERS = ("DeepSpeed",)


class _ToStderr(logging.Filter):
    """On a library logger: hand each record to geovl's stderr handler and keep it from the library's own
    (stdout) handlers. A logger filter, so it holds for handlers the library adds after this one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _handler is not None and record.levelno >= logging.getLogger(ROOT).getEffectiveLevel():
            _handler.handle(record)
        return False


def _configure() -> logging.Logger:
    global _handler
    root = logging.getLogger(ROOT)
    if _handler is None:
        _handler = _StderrHandler()
        _handler.setFormatter(_ShortFormatter())
        root.addHandler(_handler)
        root.setLevel(_level_from_env())
        root.propagate = False  # one line per message, also when a host application configures the root logger
        for name in STDOUT_LIBRARY_LOGGERS:
            logging.getLogger(name).addFilter(_ToStderr())
    return root


def get_logger(name: str = ROOT) -> logging.Logger:
    """The logger for ``name`` (``"geovl.train"``, or ``"train"`` for short, or a module's ``__name__``)."""
    _configure()
    if name != ROOT and not name.startswith(ROOT + "."):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


def set_verbosity(verbose: int = 0, quiet: int = 0) -> int:
    """The CLI's ``-v``/``-q`` (counted): INFO by default, each ``-v`` one level more detail (DEBUG), each
    ``-q`` one less (WARNING, then ERROR). Without either, ``GEOVL_LOG_LEVEL`` or INFO. Returns the level."""
    root = _configure()
    if verbose or quiet:
        level = min(max(DEFAULT_LEVEL - 10 * verbose + 10 * quiet, logging.DEBUG), logging.CRITICAL)
    else:
        level = _level_from_env()
    root.setLevel(level)
    _handler.setFormatter(_ShortFormatter(with_name=level <= logging.DEBUG))
    return level


class _MainProcessLogger(logging.LoggerAdapter):
    """Logs on the main process only: accelerate's ``MultiProcessAdapter`` once the distributed state
    exists (the Trainer sets it up), the ``RANK`` environment variable before that — this logger never
    creates the state itself, since the Trainer's own backend/timeout settings would then be ignored."""

    def __init__(self, logger: logging.Logger):
        super().__init__(logger, {})
        self._accelerate = None

    def _adapter(self):
        if self._accelerate is None:
            from accelerate.logging import MultiProcessAdapter

            class _Quiet(MultiProcessAdapter):
                def process(self, msg, kwargs):  # the message as it is, without accelerate's "[RANK i] " prefix
                    kwargs.setdefault("stacklevel", 2)
                    return msg, kwargs

            self._accelerate = _Quiet(self.logger, {})
        return self._accelerate

    def log(self, level, msg, *args, **kwargs):
        from accelerate.state import PartialState

        if PartialState._shared_state:  # accelerate's own test in MultiProcessAdapter.log
            self._adapter().log(level, msg, *args, **kwargs)
        elif int(os.environ.get("RANK", "0")) == 0 and self.isEnabledFor(level):
            kwargs.pop("main_process_only", None)
            kwargs.pop("in_order", None)
            self.logger.log(level, msg, *args, **kwargs)


_main_process_loggers: dict[str, logging.LoggerAdapter] = {}


def main_process_logger(name: str) -> logging.LoggerAdapter:
    """A logger for training code that writes on the main process only (see :class:`_MainProcessLogger`)."""
    if name not in _main_process_loggers:
        _main_process_loggers[name] = _MainProcessLogger(get_logger(name))
    return _main_process_loggers[name]
