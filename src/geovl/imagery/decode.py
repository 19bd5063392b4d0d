"""Reading image files safely into the encoded bytes a sample stores.

- Paths are resolved inside an images root: absolute paths and ``..`` escapes are refused.
- The pixel count is checked from the header before any decoding (decompression bombs).
- EXIF orientation is applied (the stored image is upright).
- TIFFs (8/16-bit, float, multi-band, georeferenced) go through rasterio and are rendered to
  8-bit RGB PNG; the georeferencing is returned as metadata.
- JPEG/PNG/WebP are fully decoded once (to catch truncated files) and kept byte-for-byte when
  no orientation fix is needed.

Every problem raises :class:`ImageError` whose ``reason`` is a rejects-file slug.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; larger images are rejected, not decoded

# We do our own size check (with a clear reason) instead of PIL's warning/exception.
Image.MAX_IMAGE_PIXELS = None


TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


class ImageError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class LoadedImage:
    data: bytes  # encoded PNG/JPEG/WebP
    width: int
    height: int
    meta: dict = field(default_factory=dict)  # e.g. crs, transform, bands, dtype for GeoTIFFs


def resolve_image_path(root: str | os.PathLike, ref: str) -> Path:
    """``root/ref`` if it stays inside ``root``; raise ``ImageError('path_escape')`` otherwise."""
    if not isinstance(ref, str) or not ref.strip():
        raise ImageError("missing_image", "empty image path")
    ref = ref.strip().replace("\\", "/")
    if os.path.isabs(ref) or ref.startswith("~"):
        raise ImageError("path_escape", f"absolute image path {ref!r} not allowed (paths are relative to the images root)")
    root_r = Path(root).resolve()
    p = (root_r / ref).resolve()
    if p != root_r and root_r not in p.parents:
        raise ImageError("path_escape", f"{ref!r} resolves outside the images root {root_r}")
    return p


def _check_pixels(w: int, h: int, max_pixels: int, name: str) -> None:
    if w <= 0 or h <= 0:
        raise ImageError("undecodable_image", f"{name}: zero-size image")
    if w * h > max_pixels:
        raise ImageError("image_too_large", f"{name}: {w}x{h} = {w * h} px > limit {max_pixels}")


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read one image file into a :class:`LoadedImage` (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError("missing_image", f"{path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if head in TIFF_MAGICS:
        return _load_tiff(path, max_pixels)
    data = path.read_bytes()
    return load_image_bytes(data, max_pixels, name=str(path))


def load_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<bytes>") -> LoadedImage:
    """Validate encoded bytes; apply EXIF orientation; TIFF bytes are rendered to PNG."""
    if data[:4] in TIFF_MAGICS:
        from rasterio.io import MemoryFile

        with MemoryFile(data) as mf:
            return _load_tiff(mf.name, max_pixels, display=name)
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise ImageError("undecodable_image", f"{name}: {e}") from None
    _check_pixels(img.width, img.height, max_pixels, name)
    try:
        img.load()
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data
        raise ImageError("undecodable_image", f"{name}: {e}") from None
    orientation = img.getexif().get(0x0112, 1)
    if orientation not in (1, None) or img.mode not in ("RGB", "L", "RGBA"):
        img = ImageOps.exif_transpose(img)
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        return LoadedImage(encode_png(img), img.width, img.height)
    return LoadedImage(bytes(data), img.width, img.height)


def _load_tiff(path, max_pixels: int, display: str | None = None) -> LoadedImage:
    from .geotiff import read_raster, render_rgb

    name = display or str(path)
    try:
        import rasterio
    except ImportError as e:  # pragma: no cover - rasterio is a pinned dependency
        raise ImageError("undecodable_image", f"{name}: rasterio is needed for TIFF ({e})") from None
    try:
        with rasterio.open(path) as src:
            _check_pixels(src.width, src.height, max_pixels, name)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ImageError("undecodable_image", f"{name}: {e}") from None
    try:
        raster = read_raster(path)
        rgb = render_rgb(raster)
    except Exception as e:  # noqa: BLE001
        raise ImageError("undecodable_image", f"{name}: {e}") from None
    img = Image.fromarray(rgb, mode="RGB")
    return LoadedImage(encode_png(img), img.width, img.height, raster.georef())
