"""``geovl merge`` and model loading under faults (issue 21, fault 11): a merge killed with SIGKILL leaves a hidden
full-size temporary folder that the next merge into the same place removes (one still in use is left alone); SIGTERM
and a full disk remove it at once; damaged weights / adapter / config files are one-line errors naming the file."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sft_util import qa_samples, run_cli, train, write_dataset

# `geovl merge` in a subprocess that signals itself once the merged weights are in the temporary folder
SIGNALLER = """
import os, signal, sys
import geovl.merge as m
check = m._check_saved
def hit(folder, model):
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return check(folder, model)
m._check_saved = hit
from geovl.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _env():
    import geovl

    src = str(Path(geovl.__file__).parents[1])  # the geovl this test imports
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _temps(parent: Path) -> list[Path]:
    """Hidden siblings of ``parent/out``: the temporary folders of merges into it."""
    return sorted(p for p in parent.iterdir() if p.name.startswith(".out."))


@pytest.fixture()
def full(tiny_model_dir, tmp_path):
    """(base, a full-weights 'fine-tune' of it, output folder)."""
    base = tiny_model_dir("qwen2-vl")
    ft = tmp_path / "ft"
    shutil.copytree(base, ft)
    (tmp_path / "merged").mkdir()
    return base, ft, tmp_path / "merged" / "out"


def _merge_args(base, adapter, out):
    return ["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(out)]


def _one_line_error(rc, err) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("geovl: error")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_killed_merge_temp_folder_is_removed_by_the_next_merge(full, capsys):
    import fcntl

    base, ft, out = full
    p = subprocess.run(
        [sys.executable, "-c", SIGNALLER, "SIGKILL", *_merge_args(base, ft, out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == -9, p.stderr[-2000:]
    (stale,) = _temps(out.parent)  # what kill -9 leaves: a hidden folder with the full weights
    assert stale.name.startswith(".out.geovl-merge-") and (stale / "model.safetensors").stat().st_size > 100_000
    assert not out.exists()

    # a merge into the same place that is still running (its lock held) is not touched
    live = out.parent / ".out.geovl-merge-live"
    live.mkdir()
    fd = os.open(live / ".geovl-merge.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        rc, err = run_cli(capsys, *_merge_args(base, ft, out))
        assert rc == 0, err[-2000:]
        assert f"removed {stale}" in err
        assert _temps(out.parent) == [live] and (out / "model.safetensors").is_file()
    finally:
        os.close(fd)


def test_sigterm_removes_the_temp_folder(full):
    base, ft, out = full
    p = subprocess.run(
        [sys.executable, "-c", SIGNALLER, "SIGTERM", *_merge_args(base, ft, out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 128 + 15, p.stderr[-2000:]
    assert _temps(out.parent) == [] and not out.exists()


def test_full_disk_during_merge_is_one_line_and_leaves_nothing(full, capsys, monkeypatch):
    import geovl.merge as m

    base, ft, out = full

    def no_space(folder, model):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "model.safetensors"))

    monkeypatch.setattr(m, "_check_saved", no_space)
    line = _one_line_error(*run_cli(capsys, *_merge_args(base, ft, out)))
    assert "No space left on device" in line and "model.safetensors" in line and str(out) in line
    assert _temps(out.parent) == [] and not out.exists()


def test_damaged_model_files_are_one_line_errors_naming_the_file(full, tmp_path, capsys):
    from geovl.models.loading import ModelFolderError, load_model_folder

    base, ft, out = full
    weights = ft / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated (a copy that ran out of disk)
    line = _one_line_error(*run_cli(capsys, *_merge_args(base, ft, out)))
    assert str(weights) in line and "safetensors" in line
    with pytest.raises(ModelFolderError, match=str(weights)):  # eval / infer / the engine load through this
        load_model_folder(ft)
    from geovl.inference import LocalEngine

    with pytest.raises(ModelFolderError, match=str(weights)):  # geovl eval / infer / serve open this engine
        LocalEngine(ft)

    # training from a damaged base
    data = write_dataset(tmp_path / "d.parquet", qa_samples(2))
    rc, err = train(capsys, ft, data, tmp_path / "run", "max_steps=1")
    assert str(weights) in _one_line_error(rc, err)
    weights.write_bytes(good)

    # garbage index / config of a full-weights folder
    (ft / "config.json").write_text("{not json")
    line = _one_line_error(*run_cli(capsys, *_merge_args(base, ft, out)))
    assert str(ft / "config.json") in line
    assert _temps(out.parent) == []


def test_damaged_lora_adapter_files_name_the_file(tiny_model_dir, tmp_path, capsys):
    base = tiny_model_dir("qwen2.5-vl")
    data = write_dataset(tmp_path / "d.parquet", qa_samples(2))
    rc, err = train(capsys, base, data, tmp_path / "run", "max_steps=1")
    assert rc == 0, err[-2000:]
    final = tmp_path / "run" / "final"
    cfg = final / "adapter_config.json"
    good = cfg.read_text()
    cfg.write_text(good[:40])
    line = _one_line_error(*run_cli(capsys, *_merge_args(base, final, tmp_path / "m1")))
    assert str(cfg) in line
    cfg.write_text(good)
    st = final / "adapter_model.safetensors"
    st.write_bytes(st.read_bytes()[:64])
    line = _one_line_error(*run_cli(capsys, *_merge_args(base, final, tmp_path / "m2")))
    assert str(st) in line
    json.loads(good)  # the fixture itself was valid
