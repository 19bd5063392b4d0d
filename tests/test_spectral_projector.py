"""SpectralProjector: false-colour initialisation, gradients, exact save/load, strict loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geovl.spectral import SpectralError
from geovl.spectral.cube import array_cube
from geovl.spectral.projector import CONFIG, WEIGHTS, SpectralProjector

WL = np.linspace(400.0, 2500.0, 60)


def _cube(seed=0, b=2, h=6, w=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, WL.size, h, w), generator=g) * 0.6 + 0.1


def test_init_is_false_colour_band_selection():
    good = np.ones(WL.size, bool)
    near_2200 = int(np.argmin(np.abs(WL - 2200)))
    good[near_2200] = False
    mean = torch.linspace(0.2, 0.4, WL.size)
    std = torch.linspace(0.05, 0.1, WL.size)
    p = SpectralProjector(WL, (1650, 2200, 2330), good_bands=good, mean=mean, std=std)
    nearest_good = [int(np.argmin(np.where(good, np.abs(WL - t), np.inf))) for t in (1650, 2200, 2330)]
    assert p.init_bands == nearest_good and p.init_bands[1] != near_2200
    assert isinstance(p.conv, torch.nn.Conv2d) and p.conv.weight.shape == (3, WL.size, 1, 1)
    assert p.conv.weight.sum().item() == 3 and (p.conv.bias == 0).all()
    x = _cube()
    y = p(x).detach()
    want = torch.sigmoid((x[:, p.init_bands] - mean[p.init_bands, None, None]) / std[p.init_bands, None, None])
    assert y.shape == (2, 3, 6, 5) and torch.allclose(y, want, atol=1e-6)
    assert float(y.min()) > 0 and float(y.max()) < 1
    clamp = SpectralProjector(WL, activation="clamp", mean=mean, std=std)
    assert float(clamp(x).detach().min()) >= 0 and float(clamp(x).detach().max()) <= 1
    # NaN / no-data → the band mean (0 after normalisation) → finite output
    x[0, :, 0, 0] = float("nan")
    assert torch.isfinite(p(x)).all() and torch.allclose(p(x)[0, :, 0, 0], torch.full((3,), 0.5))


def test_gradients_reach_conv_through_downstream_loss():
    torch.manual_seed(0)
    p = SpectralProjector(WL)
    head = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    for q in head.parameters():
        q.requires_grad_(False)  # a frozen "vision tower"
    x = _cube()
    target = torch.tensor([1, 3])
    loss = torch.nn.functional.cross_entropy(head(p(x)), target)
    loss.backward()
    g = p.conv.weight.grad
    assert g is not None and g.shape == p.conv.weight.shape and float(g.abs().sum()) > 0
    assert (g.abs().sum(dim=(0, 2, 3)) > 0).sum() > 3  # not only the initial bands: every band can be learned
    assert p.conv.bias.grad is not None and p.mean.grad is None  # statistics are buffers
    before = p(x).detach()
    torch.optim.SGD(p.parameters(), lr=1.0).step()
    assert not torch.equal(before, p(x).detach())


def test_save_load_reproduces_outputs_exactly(tmp_path):
    torch.manual_seed(1)
    p = SpectralProjector(WL, (860, 650, 550), mean=torch.rand(WL.size), std=torch.rand(WL.size) + 0.5)
    with torch.no_grad():
        p.conv.weight.add_(torch.randn_like(p.conv.weight) * 0.1)
        p.conv.bias.add_(torch.randn(3))
    p.save(tmp_path)
    assert {f.name for f in tmp_path.iterdir()} == {WEIGHTS, CONFIG}
    q = SpectralProjector.load(tmp_path)
    x = _cube(3)
    assert torch.equal(p(x), q(x))
    assert q.config() == p.config() and json.loads((tmp_path / CONFIG).read_text())["rgb_wavelengths"] == [
        860,
        650,
        550,
    ]


def test_load_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    SpectralProjector(WL).save(tmp_path)
    t = load_file(str(tmp_path / WEIGHTS))
    save_file(t | {"extra": torch.zeros(1)}, str(tmp_path / WEIGHTS))
    with pytest.raises(SpectralError, match=r"unexpected \['extra'\]"):
        SpectralProjector.load(tmp_path)
    save_file({k: v for k, v in t.items() if k != "std"}, str(tmp_path / WEIGHTS))
    with pytest.raises(SpectralError, match=r"missing \['std'\]"):
        SpectralProjector.load(tmp_path)
    save_file(t | {"mean": torch.zeros(5)}, str(tmp_path / WEIGHTS))
    with pytest.raises(SpectralError, match=r"tensor mean has shape \(5,\)"):
        SpectralProjector.load(tmp_path)
    (tmp_path / CONFIG).unlink()
    with pytest.raises(SpectralError, match="missing"):
        SpectralProjector.load(tmp_path)
    with pytest.raises(SpectralError, match=r"expected a \(B, 60, H, W\) cube"):
        SpectralProjector(WL)(torch.zeros(1, 59, 2, 2))


def test_from_cube_statistics():
    rng = np.random.default_rng(0)
    data = rng.random((WL.size, 9, 7)).astype(np.float32)
    data[:, 0, 0] = np.nan
    p = SpectralProjector.from_cube(array_cube(data, WL))
    assert np.allclose(p.mean.numpy(), np.nanmean(data.reshape(WL.size, -1), 1), atol=1e-6)
    assert np.allclose(p.std.numpy(), np.nanstd(data.reshape(WL.size, -1), 1), atol=1e-5)


def test_output_feeds_a_qwen_image_processor(tiny_model_dir):
    from geovl.models.loading import load_processor

    proc = load_processor(tiny_model_dir("qwen2.5-vl"))
    p = SpectralProjector(WL)
    img = p(_cube(h=56, w=56, b=1))[0]
    out = proc.image_processor(images=[img], do_rescale=False, return_tensors="pt")
    assert out["pixel_values"].ndim == 2 and out["image_grid_thw"].tolist() == [[1, 4, 4]]
