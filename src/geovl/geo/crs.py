"""Coordinate reference systems given by a user (``--aoi-crs``, an API's ``aoi_crs``, a GeoJSON
``crs`` member): parsed without letting GDAL/PROJ touch the network or the file system.

``rasterio.crs.CRS.from_user_input`` hands a string to GDAL's ``SetFromUserInput``, which also
accepts URLs (``http://…`` is downloaded), ``/vsicurl/`` and other ``/vsi*`` paths, and file names
(the file is read) — on a server that bypasses ``--allow-http-images`` and ``--allowed-image-dir``.
:func:`parse_user_crs` therefore accepts only three shapes and refuses everything else before GDAL
sees it:

- an authority code: ``EPSG:32650``, ``ESRI:102100``, ``OGC:CRS84``, ``IAU_2015:30100``, a bare
  EPSG number (``4326``) or an OGC URN (``urn:ogc:def:crs:EPSG::32650``);
- WKT (WKT1 or WKT2, e.g. ``PROJCS[…]``, ``PROJCRS[…]``) without ``PARAMETERFILE`` (grid files);
- a PROJ string (``+proj=utm +zone=50 +datum=WGS84``) whose parameters name no file or grid
  (``init``, ``nadgrids``, ``geoidgrids``, ``grids`` are refused; no ``/`` or ``@`` in values).

Values containing ``://`` or ``/vsi`` are refused in every shape. Parsing and reprojection run with
PROJ's network access off (``PROJ_NETWORK=OFF``).
"""

from __future__ import annotations

import re

from .errors import MeasureError

MAX_CRS_CHARS = 16384
AUTHORITIES = ("EPSG", "ESRI", "OGC", "IAU_2015", "IGNF", "NKG", "NRCAN")
_AUTH = re.compile(r"^(?P<auth>[A-Za-z][A-Za-z0-9_]*):(?P<code>[A-Za-z0-9_.]+)$")
_URN = re.compile(r"^urn:ogc:def:crs:(?P<auth>[A-Za-z][A-Za-z0-9_]*):[0-9.]*:(?P<code>[A-Za-z0-9_.]+)$", re.IGNORECASE)
_WKT_ROOTS = (
    "GEOGCS",
    "PROJCS",
    "GEOCCS",
    "VERT_CS",
    "VERTCS",
    "COMPD_CS",
    "LOCAL_CS",
    "GEOGCRS",
    "GEOGRAPHICCRS",
    "GEODCRS",
    "GEODETICCRS",
    "PROJCRS",
    "PROJECTEDCRS",
    "VERTCRS",
    "VERTICALCRS",
    "COMPOUNDCRS",
    "ENGCRS",
    "ENGINEERINGCRS",
    "BOUNDCRS",
    "DERIVEDPROJCRS",
)
_WKT = re.compile(r"^\s*(?P<root>[A-Za-z_]+)\s*\[", re.DOTALL)
_PROJ_TOKEN = re.compile(r"^\+?(?P<key>[A-Za-z_][A-Za-z0-9_]*)(=(?P<value>[A-Za-z0-9_.,:+\-]*))?$")
_PROJ_FILE_KEYS = {"init", "nadgrids", "geoidgrids", "grids", "file", "catalog", "proj_def_dat"}


class CRSInputError(MeasureError):
    """A user-supplied CRS that is not an authority code, WKT or PROJ string (or names a file/URL)."""


def _refuse(what: str, value: str, why: str) -> CRSInputError:
    shown = value if len(value) <= 80 else value[:77] + "..."
    return CRSInputError(
        f"{what} {shown!r}: {why}; give an authority code (EPSG:32650), WKT or a PROJ string (+proj=utm +zone=50 "
        "+datum=WGS84) — URLs, /vsi* paths and file names are not read / 坐标系只接受 EPSG 代码、WKT 或 PROJ 字符串"
    )


def check_user_crs(value, what: str = "CRS") -> str:
    """The CRS text GDAL may be given (normalised for authority codes); :class:`CRSInputError` otherwise."""
    if not isinstance(value, str):
        raise CRSInputError(
            f"{what} must be a string such as EPSG:32650, got {type(value).__name__} / 坐标系须为字符串"
        )
    text = value.strip()
    if not text:
        raise _refuse(what, value, "empty")
    if len(text) > MAX_CRS_CHARS:
        raise _refuse(what, value, f"longer than {MAX_CRS_CHARS} characters")
    low = text.lower()
    if "://" in low or "/vsi" in low or "\x00" in text:
        raise _refuse(what, value, "URLs and /vsi* paths are refused")
    if text.isdigit():
        return f"EPSG:{text}"
    m = _AUTH.match(text) or _URN.match(text)
    if m:
        if m.group("auth").upper() not in AUTHORITIES:
            raise _refuse(what, value, f"unknown authority {m.group('auth')!r} (known: {', '.join(AUTHORITIES)})")
        return f"{m.group('auth').upper()}:{m.group('code')}"
    m = _WKT.match(text)
    if m:
        if m.group("root").upper() not in _WKT_ROOTS:
            raise _refuse(what, value, f"{m.group('root')}[…] is not a WKT coordinate reference system")
        if "PARAMETERFILE" in text.upper():
            raise _refuse(what, value, "WKT with PARAMETERFILE (a grid file) is refused")
        return text
    tokens = text.split()
    if tokens and re.match(r"^\+?proj=", tokens[0]):
        for tok in tokens:
            t = _PROJ_TOKEN.match(tok)
            if not t:
                raise _refuse(
                    what, value, f"PROJ parameter {tok[:40]!r} has characters a CRS does not need ('/', '@', ...)"
                )
            if t.group("key").lower() in _PROJ_FILE_KEYS:
                raise _refuse(what, value, f"PROJ parameter {t.group('key')!r} reads files or grids")
        return text
    raise _refuse(what, value, "not an authority code, WKT or PROJ string (file names are not read)")


def no_network():
    """A ``rasterio.Env`` with PROJ's network access off (grids are never downloaded)."""
    import rasterio

    return rasterio.Env(PROJ_NETWORK="OFF")


def parse_user_crs(value, what: str = "CRS"):
    """A ``rasterio.crs.CRS`` from user input accepted by :func:`check_user_crs`."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    text = check_user_crs(value, what)
    try:
        with no_network():
            return CRS.from_user_input(text)
    except CRSError as e:
        raise CRSInputError(f"{what} {text[:80]!r}: unknown CRS ({e}) / 未知坐标系") from None
