"""Hyperspectral cubes straight into a Qwen-VL model: the :class:`SpectralProjector` in front of the vision tower.

How the N bands reach the model (the same for Qwen2-VL, Qwen2.5-VL and Qwen3-VL):

1. The cube ``(N, H, W)`` (float reflectance; no-data filled with the band means) goes through the
   model's stock image processor with ``do_rescale=False, do_normalize=False`` — it resizes to the
   pixel bounds and cuts patches exactly as for an RGB image, only with N channels: each patch row
   is ``N × temporal_patch × patch × patch`` values instead of ``3 × …``.
2. :class:`SpectralInput` runs as a forward pre-hook of the vision tower's ``patch_embed`` (a
   PyTorch hook, no change to transformers): it reshapes each row to ``(N, T·P, P)``, applies the
   projector (per-band normalisation → 1×1 conv N→3 → sigmoid, values in (0, 1)), normalises with the
   processor's RGB ``image_mean``/``image_std``, and hands ``3 × T × P × P`` rows to the unchanged
   patch embedding. Gradients flow from the loss through the frozen (or LoRA) tower into the projector.

The module is registered on the model as ``spectral_input`` (so optimisers, ``.to()``, DDP and
DeepSpeed see its parameters), but its weights are never part of the model's own files: its state-dict
hooks leave its tensors out of the model's ``state_dict()`` (and forgive their absence on load), and every
checkpoint, ``final/`` and merged export holds ``spectral_projector.safetensors`` +
``spectral_projector.json`` beside the weights. The preprocessing config records ``vision_input:
"spectral"`` and ``spectral`` (band count, wavelengths) so every inference path knows the model reads cubes.

:class:`SpectralInput` is the ``spectral`` kind of :class:`geovl.models.vision_input.VisionInput`
(registered there by import path): training, the engine and merge reach it only through that interface.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..imagery.decode import TIFF_MAGICS
from ..models.vision_input import VisionInput, VisionInputError
from . import SpectralError
from .projector import CONFIG, WEIGHTS, BandStats, SpectralProjector

ATTR = "spectral_input"
# the stock Qwen-VL image processor, told that the input is already float and channels-first
PROCESSOR_KWARGS = {"do_rescale": False, "do_normalize": False, "input_data_format": "channels_first"}
WAVELENGTH_TOLERANCE_NM = 1.0
NPY_MAGIC = b"\x93NUMPY"


def _own_key(k: str) -> bool:
    return k.startswith(ATTR + ".") or f".{ATTR}." in k


class SpectralInput(nn.Module, VisionInput):
    """N-band patch rows → the 3-channel patch rows the vision tower was trained on; the ``spectral`` vision input."""

    kind = "spectral"
    description = "a spectral projector (it reads hyperspectral cubes)"
    processor_kwargs = PROCESSOR_KWARGS
    lr_field = "lr_spectral"

    def __init__(self, projector: SpectralProjector, image_mean, image_std, temporal_patch_size: int, patch_size: int):
        super().__init__()
        self.projector = projector
        self.temporal_patch_size = int(temporal_patch_size)
        self.patch_size = int(patch_size)
        self.register_buffer(
            "image_mean", torch.tensor([float(v) for v in image_mean]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "image_std", torch.tensor([float(v) for v in image_std]).view(1, 3, 1, 1), persistent=False
        )
        self._handle = None
        # its tensors live in their own files: never in the model's state dict (so never in the model's weights
        # files, whoever saves them — Trainer, DeepSpeed, merge), and a model state dict without them loads strictly
        self.register_state_dict_post_hook(_drop_own_tensors)
        self.register_load_state_dict_post_hook(_forgive_own_tensors)

    @property
    def n_bands(self) -> int:
        return self.projector.n_bands

    # -- the VisionInput interface -------------------------------------------------------------
    @classmethod
    def load(cls, model, family, processor, folder=None, preprocess=None) -> "SpectralInput":
        if not has_projector(folder):
            entry = (preprocess.spectral if preprocess is not None else None) or {}
            raise VisionInputError(
                f"{folder}: the preprocessing config says the model reads {entry.get('n_bands', 'N')}-band cubes "
                "but spectral_projector.json/.safetensors are missing beside the weights"
            )
        try:
            projector = SpectralProjector.load(folder)
        except SpectralError as e:
            raise VisionInputError(str(e)) from None
        return attach(model, family, projector, processor)

    @classmethod
    def for_training(cls, model, family, processor, recipe, folder=None, dataset=None, log=None) -> "SpectralInput":
        """The projector of the starting folder (a spectral run's output), or — given the training ``dataset`` — a
        new one initialised to the ``spectral_rgb`` false-colour bands with band statistics of its cubes."""
        lr = getattr(recipe, "lr_spectral", None)
        if dataset is None:  # continue training the model's own projector (GRPO)
            si = cls.load(model, family, processor, folder)
            if log:
                log(f"spectral projector: {si.n_bands} bands → RGB, from {folder}; lr {lr:g}")
            return si
        if has_projector(folder):
            projector = SpectralProjector.load(folder)
            how = f"continued from {folder}"
        else:
            mean, std, wl, good = cube_stats(dataset.cube_files())
            projector = SpectralProjector(wl, recipe.spectral_rgb, good, mean, std)
            how = f"new, initialised on bands near {', '.join(f'{w:g}' for w in recipe.spectral_rgb)} nm"
        si = attach(model, family, projector, processor)
        if log:
            wl = projector.wavelengths
            log(f"spectral projector: {projector.n_bands} bands ({wl[0]:g}–{wl[-1]:g} nm) → RGB, {how}; lr {lr:g}")
        return si

    @classmethod
    def dataset_kwargs(cls, recipe) -> dict:
        return {"spectral": True, "spectral_root": getattr(recipe, "spectral_root", None)}

    @classmethod
    def export(cls, src, dst, preprocess) -> dict:
        """Validated by loading it; the preprocessing config records its bands so every inference path feeds cubes."""
        if not has_projector(src):
            entry = preprocess.spectral or {}
            raise VisionInputError(
                f"{src}: its preprocessing config says the model reads {entry.get('n_bands', 'N')}-band cubes, "
                "but spectral_projector.json/.safetensors are missing"
            )
        try:
            projector = SpectralProjector.load(src)
        except SpectralError as e:
            raise VisionInputError(str(e)) from None
        projector.save(dst)
        preprocess.spectral = preprocess_entry(projector)
        preprocess.vision_input = cls.kind
        return {"from": str(Path(src).resolve()), "n_bands": projector.n_bands}

    def prepare(self, item, preprocess=None, where: str = "<cube>") -> torch.Tensor:
        """A request image as the model's input (N, H, W): an array, a cube path, or .npy / multi-band GeoTIFF
        bytes; a wrong band count or wavelength is an ``ImageError`` (``bad_cube``)."""
        from ..imagery.decode import ImageError

        try:
            return cube_tensor(item, self.projector, where)
        except (SpectralError, OSError) as e:
            raise ImageError(
                "bad_cube", f"{e} (this model reads {self.n_bands}-band cubes / 此模型读取高光谱数据立方体)"
            ) from None

    def image_size(self, item):
        """Arrays know their size; paths and bytes are not read here (None)."""
        return (int(item.shape[1]), int(item.shape[2])) if hasattr(item, "shape") else None

    def named_trainable(self):
        return [(f"projector.conv.{n}", p) for n, p in self.projector.conv.named_parameters() if p.requires_grad]

    def set_trainable(self) -> None:
        self.projector.conv.requires_grad_(
            True
        )  # trained with its own lr (lr_spectral); the band statistics stay fixed

    def bind(self, dataset) -> None:
        dataset.projector = self.projector

    def training_processor(self, processor):
        return cube_processor(processor)

    def copy_to(self, model, family, processor) -> "SpectralInput":
        return frozen_copy(self, model, family, processor)

    def save(self, folder) -> None:
        self.projector.save(folder)

    def restore(self, folder) -> None:
        try:
            saved = SpectralProjector.load(folder)  # strict: a checkpoint without it is an error
        except SpectralError as e:
            raise VisionInputError(str(e)) from None
        self.projector.load_state_dict(saved.state_dict(), strict=True)

    def record(self, preprocess) -> None:
        preprocess.spectral = preprocess_entry(self.projector)
        preprocess.vision_input = self.kind

    def describe(self) -> dict:
        return {"kind": self.kind, "n_bands": self.n_bands, "wavelengths": list(self.projector.wavelengths)}

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        n, t, p = self.n_bands, self.temporal_patch_size, self.patch_size
        if patches.ndim != 2 or patches.shape[1] != n * t * p * p:
            raise SpectralError(
                f"the spectral projector expects patch rows of {n} bands × {t}×{p}×{p} = {n * t * p * p} values, got "
                f"{tuple(patches.shape)} — was the image an RGB picture instead of a {n}-band cube?"
            )
        w = self.projector.conv.weight
        x = patches.to(w.dtype).view(patches.shape[0], n, t * p, p)
        y = (self.projector(x) - self.image_mean.to(w.dtype)) / self.image_std.to(w.dtype)
        return y.reshape(patches.shape[0], 3 * t * p * p).to(patches.dtype)

    def _pre_hook(self, module, args, kwargs):
        if args:
            return (self(args[0]),) + tuple(args[1:]), kwargs
        key = next(iter(kwargs))
        return args, {**kwargs, key: self(kwargs[key])}


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def find(model) -> SpectralInput | None:
    """The attached :class:`SpectralInput` of a model (plain or peft-wrapped), or None."""
    for m in _base(model).modules():
        if isinstance(m, SpectralInput):
            return m
    return None


def attach(model, family, projector: SpectralProjector, processor) -> SpectralInput:
    """Put ``projector`` in front of ``model``'s vision tower (in place); returns the :class:`SpectralInput`."""
    base = _base(model)
    if find(base) is not None:
        raise SpectralError("this model already has a spectral projector attached")
    modules = dict(base.named_modules())
    if family.patch_embed not in modules:
        raise SpectralError(
            f"{family.display}: no {family.patch_embed} module to put the spectral projector in front of"
        )
    ip = processor.image_processor
    si = SpectralInput(projector, ip.image_mean, ip.image_std, ip.temporal_patch_size, ip.patch_size)
    try:
        p = next(base.parameters())
        si.to(p.device)
    except StopIteration:  # pragma: no cover - a model without parameters
        pass
    base.add_module(ATTR, si)
    si._handle = modules[family.patch_embed].register_forward_pre_hook(si._pre_hook, with_kwargs=True)
    return si


def has_projector(folder) -> bool:
    return folder is not None and (Path(folder) / CONFIG).is_file()


def _drop_own_tensors(module, state_dict, prefix, local_metadata) -> None:
    for k in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[k]


def _forgive_own_tensors(module, incompatible_keys) -> None:
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if not _own_key(k)]


def cube_processor(processor):
    """A copy of ``processor`` whose image processor takes cubes by default (:data:`PROCESSOR_KWARGS` set as
    its attributes), for code that calls the processor itself — TRL's ``GRPOTrainer``. The original is left
    as it is (it is the one saved with the model)."""
    import copy

    p = copy.deepcopy(processor)
    for k, v in PROCESSOR_KWARGS.items():
        setattr(p.image_processor, k, v)
    return p


def frozen_copy(si: SpectralInput, model, family, processor) -> SpectralInput:
    """Attach a frozen copy of ``si``'s projector to another model (e.g. a GRPO reference model)."""
    import copy

    projector = copy.deepcopy(si.projector).requires_grad_(False)
    return attach(model, family, projector, processor)


def preprocess_entry(projector: SpectralProjector) -> dict:
    """What the preprocessing config records: inference paths must feed cubes with these bands."""
    return {"n_bands": projector.n_bands, "wavelengths": projector.wavelengths, "weights": WEIGHTS, "config": CONFIG}


# -- cubes as model input --------------------------------------------------------------------


def _check_bands(n: int, wavelengths, projector: SpectralProjector, where: str) -> None:
    if n != projector.n_bands:
        lo, hi = projector.wavelengths[0], projector.wavelengths[-1]
        raise SpectralError(
            f"{where}: the cube has {n} bands but the model's spectral projector takes {projector.n_bands} "
            f"({lo:g}–{hi:g} nm) / 波段数不匹配"
        )
    if wavelengths is not None:
        d = np.abs(np.asarray(wavelengths, np.float64) - np.asarray(projector.wavelengths, np.float64))
        if d.max() > WAVELENGTH_TOLERANCE_NM:
            i = int(d.argmax())
            raise SpectralError(
                f"{where}: band {i + 1} is at {float(np.asarray(wavelengths)[i]):g} nm but the projector was trained with "
                f"{projector.wavelengths[i]:g} nm (resample the cube to the training sensor) / 波长不匹配"
            )


def _fill(arr: np.ndarray, projector: SpectralProjector) -> torch.Tensor:
    x = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        if bad.all():
            raise SpectralError("the cube window is all no-data / 窗口全部为无效值")
        x = np.where(bad, projector.mean.numpy().astype(np.float32)[:, None, None], x)
    return torch.from_numpy(x)


def cube_from_bytes(data: bytes, where: str = "<bytes>"):
    """(array (N, H, W) float32 reflectance, wavelengths or None) from .npy or multi-band GeoTIFF bytes."""
    head = bytes(data[:8])
    if head.startswith(NPY_MAGIC):
        try:
            arr = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
        except ValueError as e:
            raise SpectralError(f"{where}: unreadable .npy cube ({e})") from None
        if arr.ndim != 3:
            raise SpectralError(f"{where}: a .npy cube must be (bands, rows, cols), got shape {arr.shape}")
        return arr.astype(np.float32), None
    if head[:4] in TIFF_MAGICS:
        from rasterio.io import MemoryFile

        from .readers import open_geotiff

        with MemoryFile(bytes(data)) as mf:
            cube = open_geotiff(Path(mf.name))
            try:
                return cube.read_float(), cube.wavelengths
            finally:
                cube.close()
    raise SpectralError(f"{where}: not a cube (expected .npy or a multi-band GeoTIFF) / 不是高光谱数据立方体")


def cube_tensor(item, projector: SpectralProjector, where: str = "<cube>") -> torch.Tensor:
    """One model input image ``(N, H, W)`` float32 from a Cube, a path, an array or encoded bytes."""
    from .cube import Cube

    wl = None
    if isinstance(item, Cube):
        arr, wl = item.read_float(), item.wavelengths
    elif isinstance(item, (str, Path)):
        from .readers import open_cube

        with open_cube(item) as c:
            arr, wl = c.read_float(), c.wavelengths
        where = str(item)
    elif isinstance(item, np.ndarray):
        arr = item
    elif isinstance(item, (bytes, bytearray, memoryview)):
        arr, wl = cube_from_bytes(bytes(item), where)
    else:
        raise SpectralError(f"{where}: cannot use {type(item).__name__} as a cube")
    if arr.ndim != 3:
        raise SpectralError(f"{where}: a cube must be (bands, rows, cols), got shape {arr.shape}")
    _check_bands(arr.shape[0], wl, projector, where)
    return _fill(arr, projector)


def sample_cube_paths(sample: dict, root) -> list[Path]:
    """The cube file of each image of a sample: ``meta.cube`` (one image) or ``meta.cubes`` (a list),
    relative to ``root`` (the dataset's folder unless a recipe/flag says otherwise)."""
    meta = sample.get("meta") or {}
    refs = meta.get("cubes") if meta.get("cubes") is not None else ([meta["cube"]] if meta.get("cube") else [])
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        raise SpectralError("meta.cube must be a path string (meta.cubes a list of them)")
    n_img = len(sample.get("images") or [])
    if len(refs) != n_img:
        raise SpectralError(f"{n_img} image(s) but {len(refs)} cube path(s) in meta.cube/meta.cubes")
    return [(Path(root) / r) if not Path(r).is_absolute() else Path(r) for r in refs]


def cube_stats(paths, max_cubes: int = 64) -> tuple[np.ndarray, np.ndarray, list[float], list[bool]]:
    """Per-band mean/std over (up to ``max_cubes``) training cubes, their wavelengths and good bands."""
    from .readers import open_cube

    paths = list(dict.fromkeys(Path(p) for p in paths))[:max_cubes]
    if not paths:
        raise SpectralError("no cubes to compute the projector's band statistics from")
    stats = wl = good = None
    for p in paths:
        with open_cube(p) as c:
            if wl is None:
                wl, good, stats = c.require_wavelengths(), c.good_bands, BandStats(c.bands)
            elif c.bands != len(wl) or np.abs(c.require_wavelengths() - wl).max() > WAVELENGTH_TOLERANCE_NM:
                raise SpectralError(f"{p}: its bands differ from {paths[0]}'s; one spectral projector needs one sensor")
            stats.add(c.read_float())
    mean, std = stats.result()
    return mean, std, [float(w) for w in wl], [bool(g) for g in good]
