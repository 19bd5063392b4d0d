"""The one preprocessing config: written by training, read by every inference path.

It records how images become model input — pixel bounds, how multi-band rasters are rendered —
so that training, evaluation, the API and the web app resize and render identically. It lives
next to the weights as ``geovl_preprocess.json`` (in a run's checkpoints, its ``final`` folder,
and merged exports).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FILENAME = "geovl_preprocess.json"


@dataclass
class PreprocessConfig:
    min_pixels: int | None = None  # None: the processor's own default
    max_pixels: int | None = None
    # how a raster becomes RGB (geovl.imagery.render, one set of rules for training and serving):
    # band indices shown as R, G, B (0-based), or the names of the file's bands in order
    # (e.g. ["blue", "green", "red", "nir"]), and the percentile stretch
    rgb_bands: list[int] | None = None
    band_order: list[str] | None = None
    stretch: list[float] = field(default_factory=lambda: [2.0, 98.0])
    family: str | None = None  # registry key, recorded for checks
    # how a hyperspectral cube becomes the image: a geovl.spectral.render spec dict (None: not spectral)
    rendering: dict | None = None
    # a model with a spectral projector reads cubes with these bands: {"n_bands", "wavelengths", "weights", "config"}
    # (the projector files sit next to this config; see geovl.spectral.vision_input)
    spectral: dict | None = None
    # which vision input the model reads with (geovl.models.vision_input kind: "rgb", "spectral", …); None: not
    # recorded (a folder written before the key: the kind is recognised by its files)
    vision_input: str | None = None
    # how videos are sampled and bounded (geovl.imagery.video.VideoSettings.to_dict()); None: not recorded
    # (a folder written before videos existed) — readers then use VideoSettings() defaults
    video: dict | None = None

    def video_settings(self):
        """The :class:`~geovl.imagery.video.VideoSettings` to decode videos with (defaults when not recorded);
        a ``max_pixels`` of None there takes this config's ``max_pixels`` (frames are then no larger than
        images)."""
        from dataclasses import replace

        from ..imagery.video import VideoSettings

        vs = VideoSettings.from_dict(self.video)
        if vs.max_pixels is None and self.max_pixels is not None:
            vs = replace(vs, max_pixels=max(int(self.max_pixels), 28 * 28))
        return vs

    def save(self, folder: str | Path) -> Path:
        p = Path(folder) / FILENAME
        p.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")
        return p

    @classmethod
    def load(cls, folder: str | Path) -> "PreprocessConfig | None":
        p = Path(folder) / FILENAME
        if not p.is_file():
            return None
        data = json.loads(p.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"{p}: unknown preprocessing keys {sorted(unknown)} (written by a newer geovl?)")
        cfg = cls(**known)
        if cfg.video is not None:
            try:
                cfg.video_settings()
            except (TypeError, ValueError) as e:
                raise ValueError(f"{p}: bad video settings ({e})") from None
        return cfg

    def take_render_from(self, datasets) -> bool:
        """Copy the raster render settings ``geovl data convert`` recorded for these dataset files
        (``<stem>.summary.json`` → ``render.settings``) so serving renders as the training images
        were rendered. Returns whether any was found; ``ValueError`` when the files were rendered
        with different settings."""
        found = {}
        for d in [datasets] if isinstance(datasets, (str, Path)) else list(datasets or []):
            d = Path(d)
            summary = d.with_name(d.name.rsplit(".", 1)[0] + ".summary.json")
            if not summary.is_file():
                continue
            try:
                render = (json.loads(summary.read_text(encoding="utf-8")).get("render") or {}).get("settings")
            except (ValueError, AttributeError):
                continue
            if render:
                found[str(d)] = render
        if not found:
            return False
        distinct = {json.dumps(v, sort_keys=True) for v in found.values()}
        if len(distinct) > 1:
            raise ValueError(
                "training files were converted with different raster render settings "
                f"({found}); convert them with the same --bands"
            )
        r = next(iter(found.values()))
        self.rgb_bands = list(r["rgb_bands"]) if r.get("rgb_bands") else None
        self.band_order = list(r["band_order"]) if r.get("band_order") else None
        self.stretch = [float(v) for v in r.get("stretch") or (2.0, 98.0)]
        return True

    def apply(self, processor) -> None:
        """Set the pixel bounds on a Qwen-VL processor's image processor (in place)."""
        ip = processor.image_processor
        size = dict(getattr(ip, "size", None) or {})
        if self.min_pixels is not None:
            size["shortest_edge"] = int(self.min_pixels)
        if self.max_pixels is not None:
            size["longest_edge"] = int(self.max_pixels)
        if self.min_pixels is not None or self.max_pixels is not None:
            ip.size = size
            for attr, v in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels)):
                if v is not None and hasattr(ip, attr):
                    setattr(ip, attr, int(v))

    @staticmethod
    def bounds_of(processor) -> tuple[int, int]:
        size = processor.image_processor.size
        get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        return int(get("shortest_edge")), int(get("longest_edge"))
