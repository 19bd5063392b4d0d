"""Resume restores every saved tensor or refuses naming them: a full fine-tune killed with SIGKILL (while saving its
second checkpoint) and resumed ends with the uninterrupted run's weights, bit for bit, on all three families;
damaged or foreign checkpoint files are one-line errors naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_FAMILIES
from sft_util import FAST, adapter, qa_samples, write_dataset

FULL = [
    "max_steps=4",
    "save_steps=2",
    "tune_llm=full",
    "tune_vision=full",
    "tune_merger=full",
    "lr=1e-3",
    "warmup_ratio=0",
]

# Runs `geovl train sft` and kills its own process with SIGKILL in the middle of saving checkpoint-4: after the
# weights are written, before the optimizer state and trainer_state.json (a real kill -9, no cleanup of any kind).
KILLER = """
import os, signal, sys
from transformers import Trainer
save = Trainer._save_optimizer_and_scheduler
def killed(self, output_dir):
    if self.state.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, output_dir)
Trainer._save_optimizer_and_scheduler = killed
from geovl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("resume") / "d.parquet", qa_samples(8))


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _args(model, data, out, *extra):
    recipe = Path(str(out) + ".yaml")
    recipe.write_text("{}\n")
    return [
        "train",
        "sft",
        str(recipe),
        f"model={model}",
        f"train_data={data}",
        f"output_dir={out}",
        *FAST,
        *FULL,
        *extra,
    ]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_full_fine_tune_killed_and_resumed_equals_uninterrupted(family, tiny_model_dir, data, tmp_path, capsys):
    from geovl.cli import main

    model = tiny_model_dir(family)
    assert main(_args(model, data, tmp_path / "whole")) == 0
    whole = _weights(tmp_path / "whole" / "final")

    out = tmp_path / "killed"
    import geovl

    src = str(Path(geovl.__file__).parents[1])  # the geovl this test imports
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(
        [sys.executable, "-c", KILLER, *_args(model, data, out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == -9, p.stderr[-2000:]
    assert (out / "checkpoint-4" / "model.safetensors").is_file() and not (
        out / "checkpoint-4" / "trainer_state.json"
    ).exists()
    assert not (out / "final").exists()

    capsys.readouterr()
    assert main(_args(model, data, out, "--resume")) == 0
    err = capsys.readouterr().err
    assert "skipping" in err and "checkpoint-4: incomplete" in err and "resuming from" in err and "checkpoint-2" in err
    assert "missing keys" not in err and "unexpected keys" not in err
    resumed = _weights(out / "final")
    at2 = _weights(out / "checkpoint-2")
    assert resumed.keys() == whole.keys()
    differ = [k for k in whole if not torch.equal(resumed[k], whole[k])]
    assert not differ, differ  # bit-exact
    assert any(not torch.equal(at2[k], whole[k]) for k in whole)  # steps 3-4 did train
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 4


def _stopped_run(model, data, tmp_path, *extra):
    """A run with checkpoint-2 whose checkpoint-4 and final/ are gone (as if stopped after checkpoint-2)."""
    import shutil

    from geovl.cli import main

    out = tmp_path / "run"
    assert main(_args(model, data, out, *extra)) == 0
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "final")
    return out


def test_damaged_or_foreign_full_checkpoints_are_refused_naming_file_and_tensors(
    tiny_model_dir, data, tmp_path, capsys
):
    from sft_util import run_cli

    out = _stopped_run(tiny_model_dir("qwen2.5-vl"), data, tmp_path)
    ck = out / "checkpoint-2"
    weights = ck / "model.safetensors"
    good = weights.read_bytes()

    def resume():
        rc, err = run_cli(capsys, *_args(tiny_model_dir("qwen2.5-vl"), data, out, "--resume"))
        lines = [ln for ln in err.splitlines() if ln.startswith("geovl: error")]
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
        return lines[0]

    # a tensor missing from the file: refused, naming it (never a partial load)
    sd = load_file(str(weights))
    gone = next(k for k in sd if "layers.0.mlp.up_proj" in k)
    save_file({k: v for k, v in sd.items() if k != gone}, str(weights), metadata={"format": "pt"})
    line = resume()
    assert str(weights) in line and "mlp.up_proj" in line and "missing" in line

    # a tensor no module has: refused, naming it
    save_file({**sd, "model.layers.9.extra.weight": torch.zeros(2)}, str(weights), metadata={"format": "pt"})
    line = resume()
    assert str(weights) in line and "layers.9.extra" in line

    # truncated weights
    weights.write_bytes(good[: len(good) // 2])
    line = resume()
    assert str(weights) in line and "safetensors" in line

    # corrupt optimizer state and trainer state
    weights.write_bytes(good)
    opt = ck / "optimizer.pt"
    opt_good = opt.read_bytes()
    opt.write_bytes(opt_good[:100])
    assert str(opt) in resume()
    opt.write_bytes(opt_good)
    state = ck / "trainer_state.json"
    good_state = state.read_text()
    state.write_text(good_state[:50])
    assert str(state) in resume()
    state.write_text(good_state)

    # a full-weights checkpoint resumed with a LoRA recipe
    rc, err = run_cli(capsys, *_args(tiny_model_dir("qwen2.5-vl"), data, out, "tune_llm=lora", "--resume"))
    assert rc == 2 and "holds full weights, but the recipe trains a LoRA adapter" in err and str(ck) in err, err[-2000:]


def test_lora_adapter_checkpoint_must_hold_every_adapter_tensor(tiny_model_dir, data, tmp_path, capsys):
    from sft_util import run_cli

    model = tiny_model_dir("qwen2-vl")
    lora = ["max_steps=4", "save_steps=2", "lr=1e-2", "tune_vision=lora", "tune_merger=full"]
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    base = ["train", "sft", str(recipe), f"model={model}", f"train_data={data}", f"output_dir={out}", *FAST, *lora]
    assert run_cli(capsys, *base)[0] == 0
    whole = adapter(out / "final")
    import shutil

    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "final")
    f = out / "checkpoint-2" / "adapter_model.safetensors"
    sd = load_file(str(f))
    gone = next(k for k in sd if "visual" in k and "lora_A" in k)
    save_file({k: v for k, v in sd.items() if k != gone}, str(f), metadata={"format": "pt"})
    rc, err = run_cli(capsys, *base, "--resume")
    assert rc == 2 and str(f) in err and gone.rsplit(".", 2)[0] in err and "Traceback" not in err, err[-3000:]

    save_file(sd, str(f), metadata={"format": "pt"})  # intact again: vision LoRA + merger resume exactly
    rc, err = run_cli(capsys, *base, "--resume")
    assert rc == 0, err[-3000:]
    resumed = adapter(out / "final")
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_spectral_full_fine_tune_resume_restores_weights_and_projector(
    tiny_model_dir, spectral_scenes, tmp_path, capsys
):
    import shutil

    from geovl.cli import main
    from geovl.spectral.projector import SpectralProjector

    model = tiny_model_dir("qwen2.5-vl")
    extra = ["spectral=true", "lr_spectral=0.05", "min_pixels=1024", "max_pixels=1024"]
    data = spectral_scenes / "train.parquet"
    assert main(_args(model, data, tmp_path / "whole", *extra)) == 0
    out = tmp_path / "part"
    assert main(_args(model, data, out, *extra)) == 0
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "final")
    assert main(_args(model, data, out, *extra, "--resume")) == 0
    a, b = _weights(tmp_path / "whole" / "final"), _weights(out / "final")
    assert a.keys() == b.keys() and not any(k.startswith("spectral") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = SpectralProjector.load(tmp_path / "whole" / "final"), SpectralProjector.load(out / "final")
    assert torch.equal(pa.conv.weight, pb.conv.weight) and torch.equal(pa.conv.bias, pb.conv.bias)
    assert not torch.equal(pa.conv.weight, SpectralProjector.load(out / "checkpoint-2").conv.weight)
