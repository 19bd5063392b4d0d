"""Reading image files safely into the encoded bytes a sample stores.

- Safety first, by :mod:`geovl.imagery.safety` (the one image-safety module: format signatures,
  paths inside an images root, sizes from the header before any decoding — pixel count *and*
  decoded bytes over every image a file holds — PIL's own bomb guard kept armed, and the
  :class:`ImageError` family). Its names are re-exported here for the readers that import them.
- EXIF orientation is applied (the stored image is upright).
- Rasters — TIFF/COG, JPEG2000, VRT and ENVI (from a path), 16-bit PNG, any format GDAL reads —
  go through rasterio and are rendered to 8-bit RGB PNG by :mod:`geovl.imagery.render` (the one
  set of rendering rules); georeferencing and the render used (bands, valid fraction) are
  returned as metadata. From bytes (uploads) only self-contained formats are read.
- Plain 8-bit JPEG/PNG/WebP are fully decoded once (to catch truncated files) and kept byte-for-byte when
  no orientation fix is needed.

Every problem raises :class:`ImageError` whose ``reason`` is a rejects-file slug.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .safety import (  # noqa: F401  (re-exported: the one image-safety module)
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_PIXELS,
    J2K_SIZ,
    JP2_MAGICS,
    MAX_TIFF_IMAGES,
    PIL_MAX_IMAGE_PIXELS,
    TIFF_MAGICS,
    WHOLE_RASTER_MAX_DECODED_BYTES,
    ImageError,
    ImageHeader,
    ImageTooLarge,
    _check_pixels,
    check_size,
    read_header,
    resolve_image_path,
)


@dataclass
class LoadedImage:
    data: bytes  # encoded PNG/JPEG/WebP
    width: int
    height: int
    meta: dict = field(default_factory=dict)  # e.g. crs, transform, bands, dtype for GeoTIFFs


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


GDAL_FORMATS = (
    "JPEG2000",
)  # Pillow can size these, but only GDAL reads them faithfully (bit depth, bands, georeferencing)
BYTES_DRIVERS = ("GTiff", "COG", "JP2OpenJPEG", "PNG", "JPEG", "WEBP")  # self-contained formats read from bytes


def _plain(header: ImageHeader) -> bool:
    """8-bit pictures Pillow reads (PNG, JPEG, WebP, GIF, BMP, …): kept/decoded by Pillow; the rest goes to GDAL."""
    return header.format.upper() not in GDAL_FORMATS and header.bytes_per_sample == 1


def load_image(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    render=None,
    render_max_pixels: int | None = None,
) -> LoadedImage:
    """Read one image file into a :class:`LoadedImage` (see module doc). ``render``: the
    :class:`~geovl.imagery.render.RenderSettings` (or a ``--bands`` string) for rasters;
    ``render_max_pixels``: rasters larger than this are rendered decimated (default
    :data:`geovl.imagery.render.MAX_RENDER_PIXELS`)."""
    path = Path(path)
    if path.suffix.lower() == ".json" or path.is_dir():
        from .stac import StacError, is_stac, stac_inputs

        if is_stac(path):  # a STAC Item: its bands stacked into a temporary VRT (geovl.imagery.stac)
            order = render if isinstance(render, str) else getattr(render, "band_order", None)
            try:
                with stac_inputs(path, bands=order) as (vrt,):
                    return load_image(vrt, max_pixels, max_decoded_bytes, render, render_max_pixels)
            except StacError as e:
                raise ImageError("undecodable_image", str(e)) from None
    if not path.is_file():
        raise ImageError("missing_image", f"{path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if head in TIFF_MAGICS:
        _check_pixels(path, max_pixels, str(path), max_decoded_bytes)
        return _load_raster(
            path, max_pixels, max_decoded_bytes=max_decoded_bytes, render=render, render_max_pixels=render_max_pixels
        )
    try:
        header = read_header(path)
    except ImageError:
        header = None  # not a Pillow format: GDAL's turn (JPEG2000 Pillow cannot size, VRT, ENVI, …)
    if header is not None and _plain(header):
        return load_image_bytes(path.read_bytes(), max_pixels, name=str(path), max_decoded_bytes=max_decoded_bytes)
    if header is not None:
        check_size(header, max_pixels, max_decoded_bytes, str(path))
    return _load_raster(
        _gdal_path(path),
        max_pixels,
        display=str(path),
        max_decoded_bytes=max_decoded_bytes,
        render=render,
        render_max_pixels=render_max_pixels,
    )


def _gdal_path(path: Path) -> Path:
    """An ENVI header (``x.hdr``) names its data file (``x``, ``x.img``, ``x.dat``, ``x.raw``, ``x.bsq``…)."""
    if path.suffix.lower() != ".hdr":
        return path
    for cand in [path.with_suffix("")] + [
        path.with_suffix(s) for s in (".img", ".dat", ".raw", ".bsq", ".bil", ".bip")
    ]:
        if cand.is_file():
            return cand
    raise ImageError("missing_image", f"{path}: ENVI header without its data file beside it")


def load_image_bytes(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str = "<bytes>",
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    render=None,
) -> LoadedImage:
    """Validate encoded bytes; apply EXIF orientation; rasters (TIFF, JPEG2000, 16-bit PNG) are
    rendered to PNG by :mod:`geovl.imagery.render`. Formats that may reference other files (VRT,
    ENVI) are read from file paths only."""
    data = bytes(data)
    if data[:4] in TIFF_MAGICS:
        _check_pixels(data, max_pixels, name, max_decoded_bytes)  # from the header, before any decoding
        return _load_raster_bytes(data, max_pixels, name, max_decoded_bytes, render)
    try:
        header = read_header(data, name)
    except ImageError:
        header = None
    if header is None or not _plain(header):
        if header is not None:
            check_size(header, max_pixels, max_decoded_bytes, name)
        return _load_raster_bytes(data, max_pixels, name, max_decoded_bytes, render)
    check_size(header, max_pixels, max_decoded_bytes, name)
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise ImageError("undecodable_image", f"{name}: {e}") from None
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


def _load_raster_bytes(data: bytes, max_pixels, name, max_decoded_bytes, render) -> LoadedImage:
    from rasterio.io import MemoryFile

    if data.lstrip()[:1] == b"<":
        raise ImageError(
            "undecodable_image", f"{name}: XML (a VRT?) is read from a file path only, not from uploaded bytes"
        )
    try:
        mf = MemoryFile(data)
    except Exception as e:  # noqa: BLE001
        raise ImageError("undecodable_image", f"{name}: {e}") from None
    with mf:
        return _load_raster(
            mf.name, max_pixels, display=name, max_decoded_bytes=max_decoded_bytes, render=render, drivers=BYTES_DRIVERS
        )


def _load_raster(
    path,
    max_pixels: int,
    display: str | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    render=None,
    drivers=None,
    render_max_pixels: int | None = None,
) -> LoadedImage:
    """Any raster GDAL reads, sized from what GDAL declares (before reading pixels), then rendered
    by :func:`geovl.imagery.render.render_dataset` (windowed/decimated reads)."""
    from .render import GDAL_CACHE_MB, RenderSettings, parse_bands

    name = display or str(path)
    try:
        settings = render if isinstance(render, RenderSettings) else parse_bands(render) if render is not None else None
    except ValueError as e:
        raise ImageError("bad_bands", f"{name}: {e}") from None
    try:
        import rasterio
    except ImportError as e:  # pragma: no cover - rasterio is a pinned dependency
        raise ImageError("undecodable_image", f"{name}: rasterio is needed for rasters ({e})") from None
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):  # decimated reads pass every block through GDAL's cache
        return _render_open(path, name, max_pixels, max_decoded_bytes, settings, drivers, render_max_pixels)


def _render_open(path, name, max_pixels, max_decoded_bytes, settings, drivers, render_max_pixels) -> LoadedImage:
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    from .geotiff import Raster
    from .render import MAX_RENDER_PIXELS, RenderError, render_dataset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except Exception as e:  # noqa: BLE001
        raise ImageError("undecodable_image", f"{name}: not an image or raster geovl can read ({e})") from None
    with ds:
        if drivers is not None and ds.driver not in drivers:
            raise ImageError("undecodable_image", f"{name}: {ds.driver} rasters are read from a file path only")
        per = max(np.dtype(dt).itemsize for dt in ds.dtypes)
        check_size(
            ImageHeader(ds.driver, ds.width, ds.height, ds.count, per, ds.width * ds.height * ds.count * per),
            max_pixels,
            max_decoded_bytes,
            name,
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                rendered = render_dataset(ds, settings, render_max_pixels or MAX_RENDER_PIXELS)
        except RenderError as e:
            raise ImageError("bad_bands", f"{name}: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise ImageError("undecodable_image", f"{name}: {e}") from None
        t = ds.transform
        has_geo = ds.crs is not None or not t.is_identity
        names = [d or "" for d in ds.descriptions]
        probe = Raster(
            np.empty((ds.count, 0, 0), np.dtype(ds.dtypes[0])),
            ds.crs.to_string() if ds.crs else None,
            (t.a, t.b, t.c, t.d, t.e, t.f) if has_geo else None,
            ds.nodata,
            names if any(names) else [],
        )
        meta = probe.georef() | rendered.info()
    img = Image.fromarray(rendered.rgb, mode="RGB")
    return LoadedImage(encode_png(img), img.width, img.height, meta)
