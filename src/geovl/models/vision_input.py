"""How images reach a Qwen-VL model: one interface, chosen by the model folder.

A *vision input* turns what a request or a sample carries for an image into what the model's processor
takes, and owns whatever it adds to the model (parameters, files beside the weights). Training, the
engine and merge talk only to this interface:

- :meth:`VisionInput.prepare` — one image (bytes, a path, an array …) → the processor's input;
  :attr:`VisionInput.processor_kwargs` are passed with it to the processor call;
- :meth:`VisionInput.image_size` — (height, width) of an image without decoding it, for token counts;
- :meth:`VisionInput.parameter_groups` — its own trainable parameters, as optimizer groups with their lr;
- :meth:`VisionInput.save` / :meth:`VisionInput.restore` / :meth:`VisionInput.load` — its files beside
  the weights (written into every checkpoint, ``final/`` and merged export; restored strictly on resume);
- :meth:`VisionInput.describe` — what the model reads (the engine's input capability).

RGB pictures (:class:`RGBInput`) are the default and add nothing to a model. Other kinds are registered
by import path in :data:`KINDS` (``models`` never imports them): the spectral projector
(:class:`geovl.spectral.vision_input.SpectralInput`) reads hyperspectral cubes. The next kinds (video,
multi-date stacks) register here the same way.

Which kind a folder holds: the ``vision_input`` key of its ``geovl_preprocess.json`` (written by training
and merge), else — folders written before that key existed — the kind whose files the folder has, else RGB.
An unknown kind is a :class:`VisionInputError` naming the file and the known kinds.
"""

from __future__ import annotations

import importlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import GeoVLError

RGB = "rgb"
MARKER_KEY = "vision_input"  # in geovl_preprocess.json (geovl.models.preprocess.FILENAME)


class VisionInputError(GeoVLError, ValueError):
    """A model folder whose vision input cannot be used (unknown kind, its files missing or damaged)."""


@dataclass(frozen=True)
class Kind:
    path: str  # "package.module:Class" of the implementation
    files: tuple[str, ...] = ()  # files that mark a folder as holding this kind (folders without the marker key)
    preprocess_key: str | None = None  # a preprocessing-config entry that marks it too (same)


KINDS: dict[str, Kind] = {
    RGB: Kind("geovl.models.vision_input:RGBInput"),
    "spectral": Kind("geovl.spectral.vision_input:SpectralInput", ("spectral_projector.json",), "spectral"),
}


def register(kind: str, path: str, files: tuple[str, ...] = (), preprocess_key: str | None = None) -> None:
    """Add a vision input kind (``path`` = ``"package.module:Class"``, a :class:`VisionInput` subclass)."""
    KINDS[kind] = Kind(path, tuple(files), preprocess_key)


class VisionInput:
    """The interface every vision input implements (see the module docstring). Class attributes:
    ``kind`` (its registry name), ``processor_kwargs``, ``lr_field`` (the recipe key of its own lr)."""

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""  # for messages: "a spectral projector (it reads hyperspectral cubes)"
    processor_kwargs: ClassVar[dict] = {}
    lr_field: ClassVar[str | None] = None

    # -- chosen by the folder --------------------------------------------------------------
    @classmethod
    def load(cls, model, family, processor, folder: Path | None, preprocess=None) -> "VisionInput":
        """This kind's input for ``model``, from its files in ``folder`` (attached to the model in place)."""
        raise NotImplementedError

    @classmethod
    def for_training(
        cls, model, family, processor, recipe, folder: Path | None, dataset=None, log=None
    ) -> "VisionInput":
        """The input a training run starts with: continued from ``folder``'s files, or new (e.g. from ``dataset``)."""
        return cls.load(model, family, processor, folder)

    @classmethod
    def dataset_kwargs(cls, recipe) -> dict:
        """Extra keyword arguments for the training datasets (how they read this kind's images)."""
        return {}

    @classmethod
    def export(cls, src: Path | None, dst: Path, preprocess) -> dict | None:
        """Copy (validated) this kind's files from ``src`` into ``dst`` (a merged export) and record it in
        ``preprocess``; returns what was copied (None: nothing to copy)."""
        preprocess.vision_input = cls.kind
        return None

    # -- one instance per model ------------------------------------------------------------
    def prepare(self, item, preprocess=None, where: str = "<image>"):
        """One image of a request or sample → what the processor takes; bad input: ``ImageError``."""
        raise NotImplementedError

    def image_size(self, item) -> tuple[int, int] | None:
        """(height, width) of an image without decoding it; None when it cannot be known cheaply."""
        raise NotImplementedError

    def parameters_to_train(self) -> list:
        """Its own parameters that train (after :meth:`set_trainable`)."""
        return []

    def set_trainable(self) -> None:
        """Mark its own trainable parameters (called after the model's freezing / LoRA setup)."""

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer groups of its trainable parameters (decay / no decay), each with ``lr``."""
        groups: dict[bool, list] = {}
        for n, p in self.named_trainable():
            groups.setdefault(p.ndim < 2 or "norm" in n.lower() or n.endswith(".bias"), []).append(p)
        return [
            {
                "params": ps,
                "lr": lr,
                "weight_decay": 0.0 if nd else weight_decay,
                "name": f"{self.kind}{'_no_decay' if nd else ''}",
            }
            for nd, ps in groups.items()
        ]

    def named_trainable(self) -> list[tuple[str, Any]]:
        return []

    def bind(self, dataset) -> None:
        """Give a training dataset what it needs to read this kind's images."""

    def training_processor(self, processor):
        """The processor for code that calls it itself (TRL's GRPOTrainer); the saved one stays as it is."""
        return processor

    def copy_to(self, model, family, processor) -> "VisionInput":
        """A frozen copy attached to another model (a GRPO reference model)."""
        return self

    def save(self, folder: str | Path) -> None:
        """Write its files into ``folder`` (beside the weights)."""

    def restore(self, folder: str | Path) -> None:
        """Set its state from ``folder``'s files, strictly (resume); :class:`VisionInputError` naming the file."""

    def record(self, preprocess) -> None:
        """Write what inference needs into the preprocessing config (the marker key included)."""
        preprocess.vision_input = self.kind

    def describe(self) -> dict:
        """What the model reads: ``{"kind": ...}`` plus kind-specific facts (e.g. band count)."""
        return {"kind": self.kind}


class RGBInput(VisionInput):
    """Pictures (PNG/JPEG/…; rasters rendered with the preprocessing config's bands): the stock processor path."""

    kind = RGB
    description = "RGB pictures"

    @classmethod
    def load(cls, model, family, processor, folder=None, preprocess=None) -> "RGBInput":
        return cls()

    def prepare(self, item, preprocess=None, where: str = "<image>"):
        """Encoded bytes → RGB PIL image. Rasters (TIFF, JPEG2000, …) are rendered by :mod:`geovl.imagery.render`
        with the preprocessing config's render settings — as ``data convert``, ``infer`` and ``ask`` do."""
        from PIL import Image

        from ..imagery.decode import ImageError, load_image_bytes
        from ..imagery.render import RenderSettings

        loaded = load_image_bytes(bytes(item), name=where, render=RenderSettings.from_preprocess(preprocess))
        try:
            with Image.open(io.BytesIO(loaded.data)) as im:
                return im.convert("RGB")
        except Exception as e:  # noqa: BLE001
            raise ImageError("undecodable_image", str(e)) from None

    def image_size(self, item) -> tuple[int, int]:
        from ..imagery.decode import TIFF_MAGICS, ImageError, read_header

        b = bytes(item)
        if b[:4] in TIFF_MAGICS:  # rendered on decode at its full size (first image of the file)
            hdr = read_header(b, "<tiff>")
            return hdr.height, hdr.width
        from PIL import Image

        try:
            with Image.open(io.BytesIO(b)) as im:  # the header only
                w, h = im.size
        except Exception as e:  # noqa: BLE001 - a corrupt header
            raise ImageError("undecodable_image", f"{type(e).__name__}: {e}") from None
        return h, w


# -- resolution ------------------------------------------------------------------------------


def implementation(kind: str, where: str = "") -> type[VisionInput]:
    """The class registered for ``kind``; :class:`VisionInputError` for an unknown kind."""
    entry = KINDS.get(kind)
    if entry is None:
        raise VisionInputError(
            f"{where + ': ' if where else ''}unknown vision input kind {kind!r} (known: {', '.join(sorted(KINDS))}); "
            "written by a newer geovl? / 未知的视觉输入类型"
        )
    mod, _, name = entry.path.partition(":")
    return getattr(importlib.import_module(mod), name)


def _preprocess_json(folder: Path) -> dict:
    from .preprocess import FILENAME

    p = folder / FILENAME
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VisionInputError(f"{p}: not readable JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def kind_of(folder: str | Path) -> str | None:
    """The kind ``folder`` says it holds — the marker key of its preprocessing config, else (folders written
    before the key) a registered kind's files or preprocessing entry — or None."""
    from .preprocess import FILENAME

    folder = Path(folder)
    data = _preprocess_json(folder)
    kind = data.get(MARKER_KEY)
    if kind is not None:
        if not isinstance(kind, str):
            raise VisionInputError(f"{folder / FILENAME}: {MARKER_KEY} must be a kind name, got {kind!r}")
        implementation(kind, str(folder / FILENAME))  # an unknown kind: named now
        return kind
    for name, entry in KINDS.items():
        if any((folder / f).is_file() for f in entry.files) or (
            entry.preprocess_key and data.get(entry.preprocess_key)
        ):
            return name
    return None


def resolve(*folders) -> tuple[type[VisionInput], Path | None]:
    """(implementation, the folder that decided it) — the first of ``folders`` (adapter before base) that
    names a kind; RGB with no folder when none does."""
    for f in folders:
        if f is None or not Path(f).is_dir():
            continue
        kind = kind_of(f)
        if kind is not None:
            return implementation(kind), Path(f)
    return RGBInput, None


def load(model, family, processor, *folders, preprocess=None) -> VisionInput:
    """The vision input of a model loaded from ``folders`` (adapter folder first), attached to it."""
    cls, folder = resolve(*folders)
    return cls.load(model, family, processor, folder, preprocess)


def attached(model) -> VisionInput:
    """The vision input attached to ``model`` (plain or peft-wrapped) — a module implementing the
    interface — or RGB when none is."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for m in base.modules():
        if isinstance(m, VisionInput):
            return m
    return RGBInput()


# -- video -----------------------------------------------------------------------------------
# A video part is sampled into frames by geovl.imagery.video.read_frames with the model folder's video settings
# (PreprocessConfig.video_settings(); training records them) and reaches the processor as a (T, H, W, 3) array with
# the clip's metadata (its sampling rate), so no processor samples or decodes again.


def video_settings(preprocess=None):
    """The :class:`~geovl.imagery.video.VideoSettings` a preprocessing config records (``video``), else the
    defaults (a folder written before video support)."""
    from ..imagery.video import VideoSettings

    return preprocess.video_settings() if preprocess is not None else VideoSettings()


def read_clip(item, settings):
    """A video of a request or sample (encoded bytes, a path, or an already decoded
    :class:`~geovl.imagery.video.Clip`) → its sampled clip; bad input: :class:`~geovl.imagery.video.VideoError`."""
    from ..imagery.video import Clip, read_frames

    if isinstance(item, Clip):
        return item
    if isinstance(item, (bytearray, memoryview)):
        item = bytes(item)
    return read_frames(item, settings)


def _clip_metadata(clip):
    from transformers.video_utils import VideoMetadata

    return VideoMetadata(**clip.processor_metadata())


def video_prompt_tokens(processor, family, clip, tokenizer=None) -> tuple[int, int]:
    """(visual tokens, prompt tokens) a sampled clip becomes where the chat template wrote one ``<|video_pad|>``,
    without processing a pixel: the registry's grid for the clip under the processor's video bounds
    (:meth:`~geovl.models.registry.Family.video_grid_thw`), and the processor's own placeholder text for that grid
    (Qwen3-VL: a timestamp and vision start/end per temporal patch) tokenized with ``tokenizer`` (default the
    processor's). Equal to what :func:`video_processor_kwargs` makes the processor produce
    (``tests/test_video_train.py``)."""
    import torch

    from .registry import video_bounds_of

    frames = clip.frames
    n, (h, w) = len(frames), frames[0].shape[:2]
    grid = family.video_grid_thw(n, h, w, **video_bounds_of(processor))
    meta = _clip_metadata(clip)
    text = processor.replace_video_token({"video_grid_thw": torch.tensor([grid]), "video_metadata": [meta]}, 0)
    ids = (tokenizer or processor.tokenizer)(text, add_special_tokens=False)["input_ids"]
    return grid[0] * grid[1] * grid[2] // family.merge_size**2, len(ids)


def video_processor_kwargs(clips) -> dict:
    """Keyword arguments of a Qwen-VL processor call for decoded clips (empty for none): the frames as
    ``(T, H, W, 3)`` arrays, ``video_metadata`` of each clip (:meth:`~geovl.imagery.video.Clip.processor_metadata`:
    Qwen3-VL writes its timestamps from the clip's sampling rate; Qwen2.5-VL's ``second_per_grid_ts`` comes from
    it too), and ``do_sample_frames=False``: the clips are already sampled."""
    if not clips:
        return {}
    import numpy as np

    videos, meta = [], []
    for c in clips:
        frames = np.stack([np.asarray(f, dtype=np.uint8) for f in c.frames])
        meta.append(_clip_metadata(c))
        videos.append(frames)
    return {"videos": videos, "video_metadata": meta, "do_sample_frames": False}
