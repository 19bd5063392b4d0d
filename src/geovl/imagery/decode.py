"""Reading image files safely into the encoded bytes a sample stores.

- Paths are resolved inside an images root: absolute paths and ``..`` escapes are refused.
- Sizes are checked from the header before any decoding (decompression bombs): the pixel count
  *and* the decoded size — bands × pixels × bytes per sample, summed over every image the file
  holds (TIFF pages, GeoTIFF overviews and masks, SubIFDs). :func:`read_header` walks the TIFF
  directory chain itself, so a file that declares 8,000 bands is refused without GDAL allocating
  anything. This is the one size check of the project: the API, the geo routes, the web app and
  the CLI paths all call :func:`check_size` (through :func:`load_image` or
  :func:`geovl.serve.images.check_image`).
- PIL's own guard (``Image.MAX_IMAGE_PIXELS``) stays on as a backstop at
  :data:`DEFAULT_MAX_PIXELS` (PIL warns above it and refuses above twice it).
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

from ..errors import GeoVLError


DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; larger images are rejected, not decoded
DEFAULT_MAX_DECODED_BYTES = 512 * 1024 * 1024  # bands x pixels x bytes per sample, all images of a file
WHOLE_RASTER_MAX_DECODED_BYTES = 4 * 1024**3  # readers that load a whole raster for measuring (geovl measure)
MAX_TIFF_IMAGES = 1024  # IFDs (pages, overviews, masks) read from one TIFF header

# Our own checks (with clear reasons) run first; PIL's guard stays as a backstop, never None.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS


TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
JP2_MAGICS = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")  # JP2 file, raw J2K codestream (SOC + SIZ)
J2K_SIZ = b"\xff\x4f\xff\x51"


class ImageError(GeoVLError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ImageTooLarge(ImageError):
    """An image over a size limit (reason ``image_too_large``); ``limit`` is ``"pixels"`` or
    ``"decoded_bytes"``, ``header`` the :class:`ImageHeader` that was read."""

    def __init__(self, detail: str, limit: str, header: "ImageHeader", maximum: int):
        super().__init__("image_too_large", detail)
        self.limit, self.header, self.maximum = limit, header, maximum


@dataclass
class ImageHeader:
    """What an image file declares, read without decoding pixel data."""

    format: str  # TIFF, PNG, JPEG, ...
    width: int  # of the first (full-resolution) image
    height: int
    bands: int  # of the first image
    bytes_per_sample: int  # of the first image
    decoded_bytes: int  # bands x pixels x bytes per sample, summed over every image in the file
    images: int = 1  # TIFF: IFDs (pages, overviews, masks, SubIFDs)

    @property
    def pixels(self) -> int:
        return self.width * self.height


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


# -- header sizes ---------------------------------------------------------------------------------
_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_BITS, _TIFF_SPP, _TIFF_SUBIFDS = 256, 257, 258, 277, 330


def _tiff_images(read, name: str) -> list[tuple[int, int, int, int]]:
    """(width, height, samples per pixel, bytes per sample) of every IFD of a TIFF — the main chain
    (pages, GDAL's overviews and masks) and SubIFDs — from the directory entries only.
    ``read(offset, n)`` returns up to ``n`` bytes of the file."""
    import struct

    head = read(0, 16)
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        raise ImageError("undecodable_image", f"{name}: not a TIFF header")
    e = "<" if head[:2] == b"II" else ">"
    magic = struct.unpack(e + "H", head[2:4])[0]
    big = magic == 43
    if magic not in (42, 43) or (big and len(head) < 16):
        raise ImageError("undecodable_image", f"{name}: bad TIFF magic")
    first = struct.unpack(e + "Q", head[8:16])[0] if big else struct.unpack(e + "I", head[4:8])[0]
    cnt_fmt, cnt_size, ent_size, off_fmt, off_size = ("Q", 8, 20, "Q", 8) if big else ("H", 2, 12, "I", 4)
    out: list[tuple[int, int, int, int]] = []
    todo, seen = [first], set()
    while todo:
        off = todo.pop(0)
        if off == 0 or off in seen:
            continue
        if len(seen) >= MAX_TIFF_IMAGES:
            raise ImageError("image_too_large", f"{name}: more than {MAX_TIFF_IMAGES} images (IFDs) in one TIFF")
        seen.add(off)
        raw = read(off, cnt_size)
        if len(raw) < cnt_size:
            raise ImageError("undecodable_image", f"{name}: TIFF directory at offset {off} lies past the end of the file")
        n = struct.unpack(e + cnt_fmt, raw)[0]
        if n > 4096:
            raise ImageError("undecodable_image", f"{name}: TIFF directory with {n} entries")
        body = read(off + cnt_size, n * ent_size + off_size)
        if len(body) < n * ent_size + off_size:
            raise ImageError("undecodable_image", f"{name}: truncated TIFF directory at offset {off}")
        tags: dict[int, list[int]] = {}
        for i in range(n):
            ent = body[i * ent_size : (i + 1) * ent_size]
            tag, typ = struct.unpack(e + "HH", ent[:4])
            count = struct.unpack(e + off_fmt, ent[4 : 4 + off_size])[0]
            if tag not in (_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_BITS, _TIFF_SPP, _TIFF_SUBIFDS) or typ not in (3, 4, 13, 16, 18):
                continue
            size = _TIFF_TYPE_SIZE[typ]
            fmt = {2: "H", 4: "I", 8: "Q"}[size]
            count = min(int(count), 65536)
            if count * size <= off_size:
                blob = ent[4 + off_size : 4 + off_size + count * size]
            else:
                where = struct.unpack(e + off_fmt, ent[4 + off_size : 4 + 2 * off_size])[0]
                blob = read(where, count * size)
                if len(blob) < count * size:
                    raise ImageError("undecodable_image", f"{name}: TIFF tag {tag} points past the end of the file")
            tags[tag] = list(struct.unpack(e + fmt * count, blob)) if count else []
        nxt = struct.unpack(e + off_fmt, body[n * ent_size : n * ent_size + off_size])[0]
        todo.append(nxt)
        todo.extend(tags.get(_TIFF_SUBIFDS, []))
        w, h = (tags.get(_TIFF_WIDTH) or [0])[0], (tags.get(_TIFF_LENGTH) or [0])[0]
        spp = (tags.get(_TIFF_SPP) or [1])[0]
        bits = max(tags.get(_TIFF_BITS) or [1])
        out.append((int(w), int(h), max(1, int(spp)), max(1, (int(bits) + 7) // 8)))
    if not out:
        raise ImageError("undecodable_image", f"{name}: TIFF without images")
    return out


_PIL_SAMPLE_BYTES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def read_header(source, name: str | None = None) -> ImageHeader:
    """The :class:`ImageHeader` of encoded bytes or of a file path — never decodes pixel data."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "<bytes>"

        def read(off: int, n: int) -> bytes:
            return data[off : off + n]

        if data[:4] in TIFF_MAGICS:
            return _tiff_header(read, name)
        if data.startswith(JP2_MAGICS):
            return _j2k_header(data[: 1 << 20], name)
        opener = lambda: io.BytesIO(data)  # noqa: E731
    else:
        path = Path(source)
        name = name or str(path)
        with open(path, "rb") as f:
            if f.read(4) in TIFF_MAGICS:

                def read(off: int, n: int) -> bytes:
                    f.seek(off)
                    return f.read(n)

                return _tiff_header(read, name)
            f.seek(0)
            head = f.read(1 << 20)
        if head.startswith(JP2_MAGICS):
            return _j2k_header(head, name)
        opener = lambda: open(path, "rb")  # noqa: E731
    try:
        with opener() as fh, _open_header(fh, name) as img:  # reads the header only
            w, h = img.size
            bands = len(img.getbands())
            per = _PIL_SAMPLE_BYTES.get(img.mode, 1)
            fmt = img.format or "image"
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad headers
        raise ImageError("undecodable_image", f"{name}: {e}") from None
    return ImageHeader(fmt, w, h, bands, per, w * h * bands * per)


def _j2k_header(head: bytes, name: str) -> ImageHeader:
    """JPEG2000 sizes from the codestream's SIZ marker (image and tile origin, components and their
    bit depths), found in the first MiB of a JP2 file or at the start of a J2K codestream. Pillow's
    header guess counts a 4-band 16-bit JP2 as 8-bit, so the decoded size is read here instead."""
    import struct

    at = head.find(J2K_SIZ)
    if at < 0 or len(head) < at + 42:
        raise ImageError("undecodable_image", f"{name}: JPEG2000 without a SIZ marker in its first MiB")
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", head, at + 8)
    (csiz,) = struct.unpack_from(">H", head, at + 40)
    comps = head[at + 42 : at + 42 + 3 * csiz]
    if csiz < 1 or len(comps) < 3 * csiz or xsiz <= xo or ysiz <= yo:
        raise ImageError("undecodable_image", f"{name}: malformed JPEG2000 SIZ marker")
    w, h = xsiz - xo, ysiz - yo
    per = max(((comps[3 * i] & 0x7F) + 1 + 7) // 8 for i in range(csiz))
    per = 1 if per <= 1 else 2 if per <= 2 else 4
    return ImageHeader("JPEG2000", w, h, csiz, per, w * h * csiz * per)


def _open_header(fh, name: str):
    """The PIL image object of a file's header, like ``Image.open`` but without PIL's decompression
    bomb guard, so that :func:`check_size` can name the declared size (nothing is decoded here)."""
    Image.init()
    prefix = fh.read(16)
    for fid in Image.ID:
        factory, accept = Image.OPEN[fid]
        if accept is not None and not accept(prefix):
            continue
        fh.seek(0)
        try:
            return factory(fh, "")
        except (SyntaxError, IndexError, TypeError, ValueError, OSError, EOFError):
            continue
    raise ImageError("undecodable_image", f"{name}: not an image PIL can read")


def _tiff_header(read, name: str) -> ImageHeader:
    ims = _tiff_images(read, name)
    w, h, spp, per = ims[0]
    total = sum(a * b * c * d for a, b, c, d in ims)
    return ImageHeader("TIFF", w, h, spp, per, total, len(ims))


def check_size(header: ImageHeader, max_pixels: int = DEFAULT_MAX_PIXELS, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
               name: str = "<image>") -> ImageHeader:
    """Refuse an image whose header declares more pixels or more decoded bytes than allowed
    (:class:`ImageTooLarge`, reason ``image_too_large``); zero-size images are ``undecodable_image``."""
    w, h = header.width, header.height
    if w <= 0 or h <= 0:
        raise ImageError("undecodable_image", f"{name}: zero-size image")
    if w * h > max_pixels:
        raise ImageTooLarge(f"{name}: {w}x{h} = {w * h} px > limit {max_pixels}", "pixels", header, max_pixels)
    if header.decoded_bytes > max_decoded_bytes:
        what = f"{header.bands} band(s) x {w}x{h} px x {header.bytes_per_sample} byte(s)"
        if header.images > 1:
            what += f", {header.images} images (pages/overviews) in all"
        raise ImageTooLarge(f"{name}: decodes to {header.decoded_bytes} bytes ({what}) > limit {max_decoded_bytes} bytes",
                            "decoded_bytes", header, max_decoded_bytes)
    return header


def _check_pixels(source, max_pixels: int, name: str, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> ImageHeader:
    return check_size(read_header(source, name), max_pixels, max_decoded_bytes, name)


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


GDAL_FORMATS = ("JPEG2000",)  # Pillow can size these, but only GDAL reads them faithfully (bit depth, bands, georeferencing)
BYTES_DRIVERS = ("GTiff", "COG", "JP2OpenJPEG", "PNG", "JPEG", "WEBP")  # self-contained formats read from bytes


def _plain(header: ImageHeader) -> bool:
    """8-bit pictures Pillow reads (PNG, JPEG, WebP, GIF, BMP, …): kept/decoded by Pillow; the rest goes to GDAL."""
    return header.format.upper() not in GDAL_FORMATS and header.bytes_per_sample == 1


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
               render=None, render_max_pixels: int | None = None) -> LoadedImage:
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
        return _load_raster(path, max_pixels, max_decoded_bytes=max_decoded_bytes, render=render, render_max_pixels=render_max_pixels)
    try:
        header = read_header(path)
    except ImageError:
        header = None  # not a Pillow format: GDAL's turn (JPEG2000 Pillow cannot size, VRT, ENVI, …)
    if header is not None and _plain(header):
        return load_image_bytes(path.read_bytes(), max_pixels, name=str(path), max_decoded_bytes=max_decoded_bytes)
    if header is not None:
        check_size(header, max_pixels, max_decoded_bytes, str(path))
    return _load_raster(_gdal_path(path), max_pixels, display=str(path), max_decoded_bytes=max_decoded_bytes, render=render,
                        render_max_pixels=render_max_pixels)


def _gdal_path(path: Path) -> Path:
    """An ENVI header (``x.hdr``) names its data file (``x``, ``x.img``, ``x.dat``, ``x.raw``, ``x.bsq``…)."""
    if path.suffix.lower() != ".hdr":
        return path
    for cand in [path.with_suffix("")] + [path.with_suffix(s) for s in (".img", ".dat", ".raw", ".bsq", ".bil", ".bip")]:
        if cand.is_file():
            return cand
    raise ImageError("missing_image", f"{path}: ENVI header without its data file beside it")


def load_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<bytes>",
                     max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES, render=None) -> LoadedImage:
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
        raise ImageError("undecodable_image", f"{name}: XML (a VRT?) is read from a file path only, not from uploaded bytes")
    try:
        mf = MemoryFile(data)
    except Exception as e:  # noqa: BLE001
        raise ImageError("undecodable_image", f"{name}: {e}") from None
    with mf:
        return _load_raster(mf.name, max_pixels, display=name, max_decoded_bytes=max_decoded_bytes, render=render,
                            drivers=BYTES_DRIVERS)


def _load_raster(path, max_pixels: int, display: str | None = None, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
                 render=None, drivers=None, render_max_pixels: int | None = None) -> LoadedImage:
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
        check_size(ImageHeader(ds.driver, ds.width, ds.height, ds.count, per, ds.width * ds.height * ds.count * per),
                   max_pixels, max_decoded_bytes, name)
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
        probe = Raster(np.empty((ds.count, 0, 0), np.dtype(ds.dtypes[0])), ds.crs.to_string() if ds.crs else None,
                       (t.a, t.b, t.c, t.d, t.e, t.f) if has_geo else None, ds.nodata, names if any(names) else [])
        meta = probe.georef() | rendered.info()
    img = Image.fromarray(rendered.rgb, mode="RGB")
    return LoadedImage(encode_png(img), img.width, img.height, meta)
