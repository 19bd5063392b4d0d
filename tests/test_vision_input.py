"""The vision-input interface (geovl.models.vision_input): the kind is chosen by the model folder (its
preprocessing config's marker, else its files), RGB pictures are the default, the spectral projector saves and
loads back to identical parameters through the interface, and an unknown kind is a clear GeoVLError."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from geovl.errors import GeoVLError
from geovl.models import vision_input as vi
from geovl.models.preprocess import FILENAME, PreprocessConfig


def _marker(folder, **entries):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FILENAME).write_text(json.dumps({"min_pixels": 1024, **entries}))
    return folder


def _spectral(model, fam, proc, seed=0):
    from geovl.spectral.projector import SpectralProjector
    from geovl.spectral.vision_input import attach

    g = torch.Generator().manual_seed(seed)
    wl = np.linspace(400, 2500, 40)
    p = SpectralProjector(wl, mean=torch.rand(40, generator=g), std=torch.rand(40, generator=g) + 0.5)
    with torch.no_grad():  # trained-looking weights, not the one-hot init
        p.conv.weight.copy_(torch.randn(p.conv.weight.shape, generator=g))
        p.conv.bias.copy_(torch.randn(3, generator=g))
    return attach(model, fam, p, proc)


def test_kind_comes_from_the_folder(tmp_path):
    assert vi.resolve(tmp_path / "nothing-here") == (vi.RGBInput, None)
    assert vi.resolve(_marker(tmp_path / "plain")) == (vi.RGBInput, None)  # a config without the key: no kind named
    assert vi.resolve(_marker(tmp_path / "rgb", vision_input="rgb")) == (vi.RGBInput, tmp_path / "rgb")
    from geovl.spectral.vision_input import SpectralInput

    spectral = _marker(tmp_path / "spectral", vision_input="spectral")
    assert vi.resolve(spectral) == (SpectralInput, spectral)
    # folders written before the marker existed: recognised by the kind's files or its preprocessing entry
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "spectral_projector.json").write_text("{}")
    assert vi.resolve(legacy) == (SpectralInput, legacy)
    assert vi.kind_of(_marker(tmp_path / "legacy2", spectral={"n_bands": 40})) == "spectral"
    # the adapter folder (first) decides before the base
    assert vi.resolve(tmp_path / "rgb", spectral)[0] is vi.RGBInput
    assert vi.resolve(None, tmp_path / "plain", spectral)[0] is SpectralInput


def test_unknown_kind_is_a_clear_error(tmp_path, tiny_model_dir):
    folder = _marker(tmp_path / "m", vision_input="lidar")
    with pytest.raises(GeoVLError, match="unknown vision input kind 'lidar'") as e:
        vi.resolve(folder)
    assert str(folder / FILENAME) in str(e.value) and "rgb" in str(e.value) and "spectral" in str(e.value)
    with pytest.raises(vi.VisionInputError, match="must be a kind name"):
        vi.resolve(_marker(tmp_path / "n", vision_input=3))
    # the engine refuses such a folder naming it (a model folder error, not a traceback deep inside)
    import shutil

    from geovl.inference.engine import LocalEngine
    from geovl.models.loading import ModelFolderError

    m = tmp_path / "model"
    shutil.copytree(tiny_model_dir("qwen2-vl"), m)
    _marker(m, vision_input="lidar")
    with pytest.raises(ModelFolderError, match="unknown vision input kind 'lidar'"):
        LocalEngine(str(m), device="cpu")


def test_rgb_is_the_default_and_adds_nothing(tiny_model_dir, tmp_path):
    from PIL import Image

    from geovl.models.loading import load_model_folder

    model, proc, fam = load_model_folder(tiny_model_dir("qwen2-vl"))
    rgb = vi.load(model, fam, proc, tiny_model_dir("qwen2-vl"))
    assert isinstance(rgb, vi.RGBInput) and isinstance(vi.attached(model), vi.RGBInput)
    assert rgb.describe() == {"kind": "rgb"} and rgb.processor_kwargs == {} and rgb.parameter_groups(1e-3, 0.1) == []
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 4), 200, np.uint8), "RGBA").save(buf, "PNG")
    im = rgb.prepare(buf.getvalue())
    assert im.mode == "RGB" and im.size == (30, 20) and rgb.image_size(buf.getvalue()) == (20, 30)
    from geovl.imagery.decode import ImageError

    with pytest.raises(ImageError):
        rgb.prepare(b"\x89PNG\r\n\x1a\n garbage")
    rgb.save(tmp_path)  # writes nothing
    assert list(tmp_path.iterdir()) == []
    pre = PreprocessConfig()
    rgb.record(pre)
    assert pre.vision_input == "rgb" and pre.spectral is None


def test_spectral_round_trip_through_the_interface(tiny_model_dir, tmp_path):
    from geovl.models.loading import load_model_folder

    folder = tiny_model_dir("qwen2.5-vl")
    model, proc, fam = load_model_folder(folder)
    si = _spectral(model, fam, proc)
    assert vi.attached(model) is si and si.kind == "spectral"
    # its tensors never enter the model's state dict (so no weights file holds them), and that state dict loads strictly
    sd = model.state_dict()
    assert not [k for k in sd if "spectral" in k]
    model.load_state_dict(sd, strict=True)
    # its own parameter groups, with the lr given
    si.set_trainable()
    groups = si.parameter_groups(0.05, 0.1)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups] == [(0.05, 0.1, 1), (0.05, 0.0, 1)]

    out = tmp_path / "saved"
    out.mkdir()
    si.save(out)
    pre = PreprocessConfig(family=fam.key)
    si.record(pre)
    pre.save(out)
    assert json.loads((out / FILENAME).read_text())["vision_input"] == "spectral"

    model2, proc2, _ = load_model_folder(folder)
    back = vi.load(model2, fam, proc2, out, folder)
    assert type(back) is type(si) and vi.attached(model2) is back
    a, b = si.projector.state_dict(), back.projector.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert back.describe()["n_bands"] == 40 and back.describe()["wavelengths"] == si.projector.wavelengths
    # the same input through both models: identical logits
    cube = torch.rand(40, 28, 28)
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], tokenize=False
    )
    with torch.no_grad():
        la = model(
            **proc(text=[text], images=[si.prepare(cube.numpy())], return_tensors="pt", **si.processor_kwargs)
        ).logits
        lb = model2(
            **proc2(text=[text], images=[back.prepare(cube.numpy())], return_tensors="pt", **back.processor_kwargs)
        ).logits
    assert torch.equal(la, lb)

    # restore (resume) is strict and exact: another projector's values are overwritten by the saved ones
    other = _spectral(load_model_folder(folder)[0], fam, proc, seed=1)
    assert not torch.equal(other.projector.conv.weight, si.projector.conv.weight)
    other.restore(out)
    assert torch.equal(other.projector.conv.weight, si.projector.conv.weight)
    (out / "spectral_projector.safetensors").write_bytes(b"broken")
    with pytest.raises(GeoVLError, match="spectral_projector.safetensors"):
        other.restore(out)


def test_marker_without_its_files_is_named(tiny_model_dir, tmp_path):
    from geovl.models.loading import load_model_folder

    model, proc, fam = load_model_folder(tiny_model_dir("qwen2-vl"))
    folder = _marker(tmp_path / "m", vision_input="spectral", spectral={"n_bands": 330})
    with pytest.raises(
        vi.VisionInputError, match="reads 330-band cubes but spectral_projector.json/.safetensors are missing"
    ):
        vi.load(model, fam, proc, folder, preprocess=PreprocessConfig.load(folder))
