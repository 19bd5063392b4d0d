"""ENVI cubes: a text header (``.hdr``) plus a flat binary file, read memory-mapped.

Supported: interleave ``bsq`` / ``bil`` / ``bip``; ``data type`` 1 (uint8), 2 (int16),
3 (int32), 4 (float32), 5 (float64), 12 (uint16), 13 (uint32), 14 (int64), 15 (uint64);
``byte order`` 0 (little endian) or 1 (big endian); ``header offset``; ``wavelength`` with
``wavelength units`` Nanometers or Micrometers/µm (converted to nm; without units, values below
30 are taken as µm); ``fwhm``; ``bbl`` (bad-band list); ``data ignore value`` (nodata);
``reflectance scale factor``; ``band names``; ``map info`` + ``coordinate system string``
(CRS and affine transform; the WKT wins, else UTM / Geographic Lat/Lon on WGS-84 from map info).
A missing ``interleave`` means bsq and a missing ``byte order`` means 0, as ENVI itself assumes.

Memory: each :meth:`EnviCube.read` maps the file, copies the requested window and unmaps it
again, so pages of a file larger than RAM never accumulate in the process (peak RSS is bounded
by the window, not the file). :class:`EnviWriter` writes a cube window by window into
``<data>.partial`` and renames data and header into place only on a clean close.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from . import SpectralError
from .cube import Cube, Window, to_nm

DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}
DTYPE_CODES = {np.dtype(v).str[1:]: k for k, v in DTYPES.items()}
INTERLEAVES = ("bsq", "bil", "bip")
DATA_EXTS = ("", ".img", ".dat", ".bsq", ".bil", ".bip", ".raw", ".bin")


def parse_header(path: str | os.PathLike) -> dict:
    """``key → value`` (keys lower-case; ``{...}`` values as stripped strings, possibly multi-line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SpectralError(f"{path}: cannot read ENVI header ({e.strerror})") from e
    if not text.lstrip().startswith("ENVI"):
        raise SpectralError(f"{path}: not an ENVI header (the first line must be 'ENVI')")
    out: dict[str, str] = {}
    body = text.lstrip()[4:]
    pos = 0
    pat = re.compile(r"\s*([^=\n;][^=\n]*?)\s*=\s*")
    while pos < len(body):
        if body[pos] in " \t\r\n":
            pos += 1
            continue
        if body[pos] == ";":  # comment line
            nl = body.find("\n", pos)
            pos = len(body) if nl < 0 else nl + 1
            continue
        m = pat.match(body, pos)
        if not m:
            line = body[pos:].split("\n", 1)[0]
            raise SpectralError(f"{path}: cannot parse header line {line!r}")
        key = m.group(1).strip().lower()
        pos = m.end()
        if body.startswith("{", pos):
            end = body.find("}", pos)
            if end < 0:
                raise SpectralError(f"{path}: unterminated '{{' in header value of {key!r}")
            out[key] = body[pos + 1 : end].strip()
            pos = end + 1
        else:
            nl = body.find("\n", pos)
            nl = len(body) if nl < 0 else nl
            out[key] = body[pos:nl].strip()
            pos = nl + 1
    return out


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.replace("\n", " ").split(",") if v.strip()]


def _num_list(path: Path, key: str, value: str, n: int) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in _split_list(value)], dtype=np.float64)
    except ValueError as e:
        raise SpectralError(f"{path}: `{key}` has a non-number ({e})") from None
    if arr.size != n:
        raise SpectralError(f"{path}: `{key}` has {arr.size} values but the header says bands = {n}")
    return arr


def _int(path: Path, h: dict, key: str, default: int | None = None) -> int:
    if key not in h:
        if default is None:
            raise SpectralError(f"{path}: required header field `{key}` is missing")
        return default
    try:
        return int(float(h[key]))
    except ValueError:
        raise SpectralError(f"{path}: `{key} = {h[key]}` is not an integer") from None


def find_pair(path: str | os.PathLike) -> tuple[Path, Path]:
    """(header, data) for a path to either file of an ENVI pair."""
    p = Path(path)
    if p.suffix.lower() == ".hdr":
        hdr = p
        stem = p.with_suffix("")
        for ext in DATA_EXTS:
            cand = stem.with_name(stem.name + ext)
            if cand.is_file():
                return hdr, cand
        raise SpectralError(
            f"{hdr}: no data file next to the header (tried {', '.join(e or '(no extension)' for e in DATA_EXTS)})"
        )
    for hdr in (p.with_name(p.name + ".hdr"), p.with_suffix(".hdr")):
        if hdr.is_file():
            return hdr, p
    raise SpectralError(f"{p}: no ENVI header ({p.name}.hdr or {p.with_suffix('.hdr').name}) next to it")


ROTATED = "rotated"  # _map_info: the transform is read by GDAL (see _rotated_georef)


def _rotated_georef(hdr_path: Path, data_path: Path, wkt: str | None) -> tuple[str | None, tuple]:
    """A rotated ``map info`` (e.g. AVIRIS-NG orthocorrected products, ``rotation=…`` in degrees) as
    the rotated affine transform GDAL's ENVI driver reads from the same header (rasterio)."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(data_path) as ds:
                t, crs = ds.transform, ds.crs
    except RasterioIOError as e:
        raise SpectralError(f"{hdr_path}: rotated `map info`, and GDAL cannot read the georeferencing ({e})") from None
    if t.is_identity:
        raise SpectralError(f"{hdr_path}: rotated `map info` that GDAL does not understand")
    return (wkt or (crs.to_wkt() if crs else None)), (t.a, t.b, t.c, t.d, t.e, t.f)


def _map_info(path: Path, value: str, wkt: str | None) -> tuple[str | None, tuple | None]:
    items = _split_list(value)
    if len(items) < 7:
        raise SpectralError(f"{path}: `map info` needs at least 7 items, got {len(items)}")
    try:
        refx, refy, east, north, dx, dy = (float(v) for v in items[1:7])
    except ValueError:
        raise SpectralError(f"{path}: `map info` has non-numeric reference values: {value!r}") from None
    rotated = False
    for it in items[7:]:
        if it.strip().lower().startswith("rotation"):
            try:
                angle = float(it.split("=", 1)[1])
            except (IndexError, ValueError):
                raise SpectralError(f"{path}: `map info` has an unreadable rotation: {it.strip()!r}") from None
            rotated = rotated or angle != 0
    transform = (dx, 0.0, east - (refx - 1) * dx, 0.0, -dy, north + (refy - 1) * dy)
    crs = wkt
    name = items[0].strip().lower()
    datum = " ".join(i for i in items[7:] if not i.strip().lower().startswith("rotation")).lower()
    if crs is None and "wgs-84" in datum:
        if name == "utm" and len(items) >= 9:
            zone = int(float(items[7]))
            crs = f"EPSG:{(32600 if items[8].strip().lower().startswith('n') else 32700) + zone}"
        elif name.startswith("geographic"):
            crs = "EPSG:4326"
    return crs, (ROTATED if rotated else transform)


class EnviCube(Cube):
    """A memory-mapped ENVI cube. Open with :func:`open_envi` (or :func:`geovl.spectral.readers.open_cube`)."""

    data_path: Path
    header_path: Path
    interleave: str = "bsq"
    byte_order: int = 0
    header_offset: int = 0

    def _file_dtype(self) -> np.dtype:
        return self.dtype.newbyteorder(">" if self.byte_order == 1 else "<")

    def _file_shape(self) -> tuple[int, int, int]:
        b, r, c = self.bands, self.rows, self.cols
        return {"bsq": (b, r, c), "bil": (r, b, c), "bip": (r, c, b)}[self.interleave]

    def _read(self, bands: np.ndarray, window: Window) -> np.ndarray:
        mm = np.memmap(
            self.data_path, dtype=self._file_dtype(), mode="r", offset=self.header_offset, shape=self._file_shape()
        )
        try:
            contiguous = bands.size and np.all(np.diff(bands) == 1)
            bsel = slice(int(bands[0]), int(bands[-1]) + 1) if contiguous else bands
            rs, cs = window.toslices()
            if self.interleave == "bsq":
                block = mm[bsel, rs, cs]
            elif self.interleave == "bil":
                block = mm[rs, bsel, cs].transpose(1, 0, 2)
            else:
                block = mm[rs, cs, bsel].transpose(2, 0, 1)
            return np.ascontiguousarray(block, dtype=self.dtype)  # native byte order, a copy
        finally:
            del mm


def open_envi(path: str | os.PathLike) -> EnviCube:
    hdr_path, data_path = find_pair(path)
    h = parse_header(hdr_path)
    cols = _int(hdr_path, h, "samples")
    rows = _int(hdr_path, h, "lines")
    bands = _int(hdr_path, h, "bands")
    if min(cols, rows, bands) < 1:
        raise SpectralError(f"{hdr_path}: samples, lines and bands must be >= 1 (got {cols}, {rows}, {bands})")
    code = _int(hdr_path, h, "data type")
    if code not in DTYPES:
        raise SpectralError(
            f"{hdr_path}: unsupported `data type = {code}` (supported: "
            + ", ".join(f"{k} {np.dtype(v).name}" for k, v in DTYPES.items())
            + ")"
        )
    interleave = h.get("interleave", "bsq").strip().lower()
    if interleave not in INTERLEAVES:
        raise SpectralError(f"{hdr_path}: unknown `interleave = {h['interleave']}` (use bsq, bil or bip)")
    byte_order = _int(hdr_path, h, "byte order", 0)
    if byte_order not in (0, 1):
        raise SpectralError(f"{hdr_path}: `byte order` must be 0 (little endian) or 1 (big endian), got {byte_order}")
    offset = _int(hdr_path, h, "header offset", 0)
    dtype = np.dtype(DTYPES[code])
    expected = offset + bands * rows * cols * dtype.itemsize
    actual = data_path.stat().st_size
    if actual != expected:
        raise SpectralError(
            f"{data_path}: data file has {actual} bytes but header {hdr_path.name} describes {expected} "
            f"({bands} bands × {rows} lines × {cols} samples × {dtype.itemsize} B + header offset {offset})"
        )
    where = f"{hdr_path}: "
    wavelengths = fwhm = None
    if "wavelength" in h:
        raw = _num_list(hdr_path, "wavelength", h["wavelength"], bands)
        units = h.get("wavelength units", "").strip()
        if not units or units.lower() == "unknown":
            units = "um" if raw.max() < 30 else "nm"
        wavelengths = to_nm(raw, units, where)
        if "fwhm" in h:
            fwhm = to_nm(_num_list(hdr_path, "fwhm", h["fwhm"], bands), units, where)
    good = None
    if "bbl" in h:
        good = _num_list(hdr_path, "bbl", h["bbl"], bands) != 0
    nodata = float(h["data ignore value"]) if "data ignore value" in h else None
    scale = float(h["reflectance scale factor"]) if "reflectance scale factor" in h else None
    wkt = h.get("coordinate system string") or None
    m = re.search(r'AUTHORITY\["EPSG",\s*"(\d+)"\]\]\s*$', wkt or "")
    if m:  # WKT1 whose root carries an EPSG code: the short form
        wkt = f"EPSG:{m.group(1)}"
    crs, transform = (wkt, None)
    if "map info" in h:
        crs, transform = _map_info(hdr_path, h["map info"], wkt)
        if transform == ROTATED:
            crs, transform = _rotated_georef(hdr_path, data_path, crs)
    names = _split_list(h["band names"]) if "band names" in h else []
    cube = EnviCube(
        path=hdr_path,
        bands=bands,
        rows=rows,
        cols=cols,
        dtype=dtype.newbyteorder("="),
        wavelengths=wavelengths,
        fwhm=fwhm,
        good_bands=good,
        nodata=nodata,
        scale=scale or None,
        crs=crs,
        transform=transform,
        band_names=names if len(names) == bands else [],
        fmt="envi",
    )
    cube.data_path, cube.header_path = data_path, hdr_path
    cube.interleave, cube.byte_order, cube.header_offset = interleave, byte_order, offset
    return cube


# ---------------------------------------------------------------------------------------------
# writing


def _fmt_list(values, fmt: str = "{:g}") -> str:
    return "{" + ", ".join(fmt.format(float(v)) for v in values) + "}"


def _map_info_text(crs: str, transform) -> tuple[str, str | None]:
    from rasterio.crs import CRS

    c = CRS.from_user_input(crs)
    a, _, x0, _, e, y0 = (float(v) for v in transform[:6])
    epsg = c.to_epsg()
    if epsg and (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        tail = f"{epsg % 100}, {'North' if epsg < 32700 else 'South'}, WGS-84, units=Meters"
        name = "UTM"
    elif epsg == 4326:
        name, tail = "Geographic Lat/Lon", "WGS-84, units=Degrees"
    else:
        name, tail = "Arbitrary", "units=Meters"
    info = f"{{{name}, 1, 1, {x0!r}, {y0!r}, {a!r}, {-e!r}, {tail}}}"
    return info, c.to_wkt()


def header_text(
    bands: int,
    rows: int,
    cols: int,
    dtype,
    interleave: str = "bsq",
    byte_order: int = 0,
    header_offset: int = 0,
    wavelengths=None,
    wavelength_units: str = "Nanometers",
    fwhm=None,
    good_bands=None,
    nodata=None,
    scale=None,
    crs=None,
    transform=None,
    band_names=None,
    description: str = "written by geovl",
) -> str:
    code = DTYPE_CODES.get(np.dtype(dtype).str[1:])
    if code is None:
        raise SpectralError(f"ENVI cannot store dtype {np.dtype(dtype).name}")
    lines = [
        "ENVI",
        f"description = {{{description}}}",
        f"samples = {cols}",
        f"lines = {rows}",
        f"bands = {bands}",
        f"header offset = {header_offset}",
        "file type = ENVI Standard",
        f"data type = {code}",
        f"interleave = {interleave}",
        f"byte order = {byte_order}",
    ]
    if wavelengths is not None:
        lines += [f"wavelength units = {wavelength_units}", "wavelength = " + _fmt_list(wavelengths, "{!r}")]
        if fwhm is not None:
            lines.append("fwhm = " + _fmt_list(fwhm, "{!r}"))
    if good_bands is not None:
        lines.append("bbl = {" + ", ".join(str(int(bool(g))) for g in good_bands) + "}")
    if nodata is not None:
        lines.append(f"data ignore value = {nodata:g}")
    if scale:
        lines.append(f"reflectance scale factor = {scale:g}")
    if crs and transform is not None:
        info, wkt = _map_info_text(crs, transform)
        lines += [f"map info = {info}", f"coordinate system string = {{{wkt}}}"]
    if band_names:
        lines.append("band names = {" + ", ".join(str(n).replace(",", ";") for n in band_names) + "}")
    return "\n".join(lines) + "\n"


class EnviWriter:
    """Write an ENVI cube window by window; the files appear only on a clean :meth:`close`.

    ``path`` is the data file (e.g. ``cube.img``; the header is ``cube.hdr``) or the header.
    Blocks passed to :meth:`write` are ``(bands, height, width)`` in any numeric dtype (cast).
    """

    def __init__(
        self,
        path,
        bands: int,
        rows: int,
        cols: int,
        dtype,
        interleave: str = "bsq",
        byte_order: int = 0,
        header_offset: int = 0,
        **meta,
    ):
        p = Path(path)
        self.data_path = p.with_suffix(".img") if p.suffix.lower() == ".hdr" else p
        self.header_path = self.data_path.with_suffix(".hdr")
        if interleave not in INTERLEAVES:
            raise SpectralError(f"unknown interleave {interleave!r} (use bsq, bil or bip)")
        if byte_order not in (0, 1):
            raise SpectralError("byte order must be 0 or 1")
        self.shape = (bands, rows, cols)
        self.dtype = np.dtype(dtype)
        self.interleave, self.byte_order, self.offset = interleave, byte_order, header_offset
        self.header = header_text(bands, rows, cols, self.dtype, interleave, byte_order, header_offset, **meta)
        self._tmp = self.data_path.with_name(self.data_path.name + ".partial")
        self.data_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._tmp, "wb") as f:
            f.truncate(header_offset + bands * rows * cols * self.dtype.itemsize)
        self._open = True

    def write(self, block: np.ndarray, window: Window | None = None) -> None:
        b, r, c = self.shape
        w = window or Window(0, 0, c, r)
        if block.shape != (b, w.height, w.width):
            raise SpectralError(f"block shape {block.shape} does not match window {w} with {b} bands")
        fshape = {"bsq": (b, r, c), "bil": (r, b, c), "bip": (r, c, b)}[self.interleave]
        ftype = self.dtype.newbyteorder(">" if self.byte_order == 1 else "<")
        mm = np.memmap(self._tmp, dtype=ftype, mode="r+", offset=self.offset, shape=fshape)
        try:
            data = block.astype(self.dtype, copy=False)
            rs, cs = w.toslices()
            if self.interleave == "bsq":
                mm[:, rs, cs] = data
            elif self.interleave == "bil":
                mm[rs, :, cs] = data.transpose(1, 0, 2)
            else:
                mm[rs, cs, :] = data.transpose(1, 2, 0)
            mm.flush()
        finally:
            del mm

    def close(self, ok: bool = True) -> None:
        if not self._open:
            return
        self._open = False
        if not ok:
            return  # the .partial file stays behind, never mistaken for a complete cube
        htmp = self.header_path.with_name(self.header_path.name + ".partial")
        htmp.write_text(self.header, encoding="utf-8")
        os.replace(self._tmp, self.data_path)
        os.replace(htmp, self.header_path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.close(ok=exc_type is None)


def write_envi(
    path, data: np.ndarray, interleave: str = "bsq", byte_order: int = 0, header_offset: int = 0, **meta
) -> Path:
    """Write a whole ``(bands, rows, cols)`` array as an ENVI pair; returns the header path."""
    b, r, c = data.shape
    with EnviWriter(path, b, r, c, data.dtype, interleave, byte_order, header_offset, **meta) as w:
        w.write(data)
    return w.header_path
