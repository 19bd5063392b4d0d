"""geovl.log: library diagnostics go through logging to stderr, visible at the default level with the
same text as before; -v/-q set the level; the training logger writes on the main process only."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from geovl import cli
from geovl.log import get_logger, main_process_logger, set_verbosity


@pytest.fixture(autouse=True)
def _default_level(monkeypatch):
    monkeypatch.delenv("GEOVL_LOG_LEVEL", raising=False)
    set_verbosity()
    yield
    set_verbosity()


def test_info_is_the_bare_message_on_stderr_and_warnings_are_prefixed(capsys):
    log = get_logger("train")
    assert log.name == "geovl.train" and get_logger("geovl.merge").name == "geovl.merge"
    log.info("resuming from checkpoint-3")
    log.warning("stream failed: x")
    log.debug("hidden at the default level")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["resuming from checkpoint-3", "warning: stream failed: x"]


def test_verbose_and_quiet_set_the_level(capsys):
    log = get_logger("geovl.merge")
    assert set_verbosity(quiet=1) == logging.WARNING
    log.info("not shown")
    log.warning("shown")
    assert set_verbosity(quiet=2) == logging.ERROR
    log.warning("not shown either")
    assert set_verbosity(verbose=1) == logging.DEBUG
    log.debug("detail")
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: shown", "debug: [geovl.merge] detail"]


def test_cli_flags_reach_the_logger(capsys):
    assert cli.main(["-q", "data"]) == 2  # a group without its sub-command: help, exit 2
    assert logging.getLogger("geovl").level == logging.WARNING
    assert cli.main(["--verbose", "data"]) == 2
    assert logging.getLogger("geovl").level == logging.DEBUG
    assert cli.main(["data"]) == 2
    assert logging.getLogger("geovl").level == logging.INFO


def test_env_level_is_read(monkeypatch):
    monkeypatch.setenv("GEOVL_LOG_LEVEL", "error")
    assert set_verbosity() == logging.ERROR
    monkeypatch.setenv("GEOVL_LOG_LEVEL", "nonsense")
    assert set_verbosity() == logging.INFO


def test_main_process_logger_before_the_distributed_state(monkeypatch, capsys):
    from accelerate.state import PartialState

    if PartialState._shared_state:
        pytest.skip("the accelerate state was set up by an earlier test in this process")
    log = main_process_logger("train")
    monkeypatch.setenv("RANK", "1")
    log.info("from rank 1")
    monkeypatch.setenv("RANK", "0")
    log.info("from rank 0")
    assert not PartialState._shared_state  # logging never creates the state (the Trainer does, with its settings)
    assert capsys.readouterr().err.splitlines() == ["from rank 0"]


def test_main_process_logger_with_accelerate_state(capsys):
    from accelerate.state import PartialState

    fresh = not PartialState._shared_state
    try:
        state = PartialState(cpu=True)
        assert state.is_main_process
        main_process_logger("train").info("done: 3 steps")
        main_process_logger("train").info("every rank", main_process_only=False)
    finally:
        if fresh:
            PartialState._reset_state()
    assert capsys.readouterr().err.splitlines() == ["done: 3 steps", "every rank"]  # no "[RANK 0] " prefix


def test_a_cli_subprocess_writes_diagnostics_to_stderr_and_quiet_hides_them(tmp_path):
    code = (
        "import sys; from geovl.log import get_logger, set_verbosity; "
        "set_verbosity(quiet=int(sys.argv[1])); get_logger('x').info('info line'); get_logger('x').error('bad')"
    )
    loud = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True, check=True)
    quiet = subprocess.run([sys.executable, "-c", code, "1"], capture_output=True, text=True, check=True)
    assert loud.stdout == quiet.stdout == ""
    assert loud.stderr.splitlines() == ["info line", "error: bad"]
    assert quiet.stderr.splitlines() == ["error: bad"]


def test_deepspeed_logger_never_writes_to_stdout():
    """DeepSpeed's logger has a stdout handler ("Setting accelerator to CPU" on import): once geovl's logging
    is configured, its records reach stderr and stdout stays clean for JSON output."""
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "from geovl.log import get_logger\n"
        "get_logger()\n"
        "lg = logging.getLogger('DeepSpeed'); lg.setLevel(logging.INFO); lg.propagate = False\n"
        "lg.addHandler(logging.StreamHandler(sys.stdout))  # as deepspeed.utils.logging does, after geovl\n"
        "lg.warning('accelerator message')\n"
        "lg.debug('hidden at INFO')\n"
        "print('{\"ok\": 1}')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == '{"ok": 1}\n'
    assert "accelerator message" in r.stderr and "hidden at INFO" not in r.stderr


def test_real_deepspeed_import_keeps_stdout_clean():
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}  # auto-detect: it logs its choice
    code = "from geovl.log import get_logger\nget_logger()\nimport deepspeed\nprint('clean')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == "clean\n"
