"""``SpectralProjector``: a learnable N-band → 3-channel projection in front of a frozen Qwen-VL
vision tower (trained with it, e.g. alongside LoRA; training integration comes later).

    x̂_b = (x_b − mean_b) / std_b          per-band normalisation (buffers; NaN/no-data → 0 = the band mean)
    y   = Conv2d(N, 3, kernel_size=1)(x̂)   the learnable projection
    out = sigmoid(y)  ∈ (0, 1)             (``activation="clamp"``: clamp((y + 2) / 4, 0, 1))

Initialisation is a false-colour band selection: each output channel's weights are one-hot on
the good band nearest to one of ``rgb_wavelengths`` (default the ``alteration`` composite 1650 /
2200 / 2330 nm), bias 0 — so before training the output is that composite with a soft
±2σ stretch (band mean → 0.5). The output ``(B, 3, H, W)`` float in [0, 1] can be handed to a Qwen
image processor as an image with ``do_rescale=False``.

Saved as ``spectral_projector.safetensors`` (``conv.weight``, ``conv.bias``, ``mean``, ``std``)
plus ``spectral_projector.json`` (band count, wavelengths, init bands, activation). Loading is
strict: a missing, extra or mis-shaped tensor is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import SpectralError

WEIGHTS = "spectral_projector.safetensors"
CONFIG = "spectral_projector.json"
FORMAT = "geovl.spectral_projector"
DEFAULT_RGB = (1650.0, 2200.0, 2330.0)
ACTIVATIONS = ("sigmoid", "clamp")


def nearest_bands(wavelengths, targets, good=None) -> list[int]:
    wl = np.asarray(wavelengths, np.float64)
    cand = np.flatnonzero(np.ones(wl.size, bool) if good is None else np.asarray(good, bool))
    if cand.size == 0:
        raise SpectralError("no good band to initialise the projector on")
    out = []
    for t in targets:
        if not (wl[0] - 50 <= t <= wl[-1] + 50):
            raise SpectralError(f"projector init wavelength {t:g} nm is outside the bands {wl[0]:g}–{wl[-1]:g} nm")
        out.append(int(cand[np.argmin(np.abs(wl[cand] - t))]))
    return out


class BandStats:
    """Running per-band mean and std over blocks ``(bands, ...)`` (NaN = no data, skipped); a band with
    no spread gets std 1 so normalising by it is harmless."""

    def __init__(self, bands: int):
        self.s, self.s2, self.n = np.zeros(bands), np.zeros(bands), np.zeros(bands)

    def add(self, block: np.ndarray) -> None:
        x = np.asarray(block, np.float64).reshape(self.s.size, -1)
        ok = np.isfinite(x)
        x = np.where(ok, x, 0.0)
        self.s += x.sum(1)
        self.s2 += (x * x).sum(1)
        self.n += ok.sum(1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        n = np.maximum(self.n, 1)
        mean = self.s / n
        std = np.sqrt(np.maximum(self.s2 / n - mean**2, 0.0))
        return mean, np.where(std > 1e-6, std, 1.0)


class SpectralProjector(nn.Module):
    def __init__(
        self,
        wavelengths,
        rgb_wavelengths=DEFAULT_RGB,
        good_bands=None,
        mean=None,
        std=None,
        activation: str = "sigmoid",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise SpectralError(f"activation must be one of {ACTIVATIONS}")
        self.wavelengths = [float(w) for w in wavelengths]
        n = len(self.wavelengths)
        if n < 1:
            raise SpectralError("a projector needs at least one band")
        self.rgb_wavelengths = [float(w) for w in rgb_wavelengths]
        if len(self.rgb_wavelengths) != 3:
            raise SpectralError("rgb_wavelengths needs 3 values")
        self.good_bands = None if good_bands is None else [bool(g) for g in good_bands]
        self.activation = activation
        self.init_bands = nearest_bands(self.wavelengths, self.rgb_wavelengths, self.good_bands)
        self.conv = nn.Conv2d(n, 3, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            for c, b in enumerate(self.init_bands):
                self.conv.weight[c, b, 0, 0] = 1.0
            self.conv.bias.zero_()
        self.register_buffer(
            "mean", torch.zeros(n) if mean is None else torch.as_tensor(mean, dtype=torch.float32).clone()
        )
        self.register_buffer("std", torch.ones(n) if std is None else torch.as_tensor(std, dtype=torch.float32).clone())
        if self.mean.shape != (n,) or self.std.shape != (n,):
            raise SpectralError(f"mean/std need {n} values")
        if torch.any(self.std <= 0):
            raise SpectralError("std must be > 0 for every band")

    @property
    def n_bands(self) -> int:
        return len(self.wavelengths)

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        if cube.ndim != 4 or cube.shape[1] != self.n_bands:
            raise SpectralError(f"expected a (B, {self.n_bands}, H, W) cube, got {tuple(cube.shape)}")
        x = (cube.to(self.mean.dtype) - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        y = self.conv(x)
        if self.activation == "sigmoid":
            return torch.sigmoid(y)
        return torch.clamp((y + 2.0) / 4.0, 0.0, 1.0)

    # -- statistics ---------------------------------------------------------
    @staticmethod
    def cube_stats(cube, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Per-band mean and std (NaN/no-data skipped) of a :class:`~geovl.spectral.cube.Cube`, in windows."""
        from .cube import iter_windows

        stats = BandStats(cube.bands)
        for w in iter_windows(cube, rows=rows):
            stats.add(cube.read_float(window=w))
        return stats.result()

    @classmethod
    def from_cube(cls, cube, rgb_wavelengths=DEFAULT_RGB, activation: str = "sigmoid") -> "SpectralProjector":
        mean, std = cls.cube_stats(cube)
        return cls(cube.require_wavelengths(), rgb_wavelengths, cube.good_bands, mean, std, activation)

    # -- save / load --------------------------------------------------------
    def config(self) -> dict:
        return {
            "format": FORMAT,
            "version": 1,
            "n_bands": self.n_bands,
            "wavelengths": self.wavelengths,
            "rgb_wavelengths": self.rgb_wavelengths,
            "init_bands": self.init_bands,
            "good_bands": self.good_bands,
            "activation": self.activation,
        }

    def save(self, folder) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        wtmp = folder / (WEIGHTS + ".partial")
        ctmp = folder / (CONFIG + ".partial")
        save_file(tensors, str(wtmp), metadata={"format": FORMAT})
        ctmp.write_text(json.dumps(self.config(), indent=1) + "\n", encoding="utf-8")
        os.replace(wtmp, folder / WEIGHTS)
        os.replace(ctmp, folder / CONFIG)
        return folder

    @classmethod
    def load(cls, folder) -> "SpectralProjector":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        cpath, wpath = folder / CONFIG, folder / WEIGHTS
        for p in (cpath, wpath):
            if not p.is_file():
                raise SpectralError(f"{p}: missing (not a saved SpectralProjector folder)")
        try:
            cfg = json.loads(cpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SpectralError(f"{cpath}: not valid JSON ({e.msg})") from None
        if cfg.get("format") != FORMAT:
            raise SpectralError(f"{cpath}: not a spectral projector config (format {cfg.get('format')!r})")
        model = cls(cfg["wavelengths"], cfg["rgb_wavelengths"], cfg.get("good_bands"), activation=cfg["activation"])
        try:
            tensors = load_file(str(wpath))
        except (SafetensorError, OSError) as e:
            raise SpectralError(f"{wpath}: unreadable safetensors file ({e})") from None
        expected = model.state_dict()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise SpectralError(f"{wpath}: tensors do not match the projector (missing {missing}, unexpected {extra})")
        for k, v in tensors.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise SpectralError(
                    f"{wpath}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
                )
        model.load_state_dict(tensors, strict=True)
        if torch.any(model.std <= 0):
            raise SpectralError(f"{wpath}: std must be > 0 for every band")
        return model
