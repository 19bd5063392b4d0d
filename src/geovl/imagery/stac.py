"""STAC Items as raster input: an Item (local JSON) or a catalog folder holding one Item → one local
VRT that stacks the chosen assets in a fixed band order, which every raster reader here takes.

Rules (docs/imagery.md §STAC):

- Assets are chosen by common band name (``blue``, ``green``, ``red``, ``nir`` …) from the asset's
  ``eo:bands`` (STAC 1.0) or ``bands`` with ``eo:common_name`` (STAC 1.1), else from an asset key that
  is itself a common name. Assets whose ``roles`` are given but do not include ``data`` are skipped.
- The default order is ``blue,green,red,nir`` (the order ``measure`` and rendering assume for 4+
  bands); a ``--bands`` option of band names picks other bands and their order. The VRT's band
  descriptions carry the names, so rendering finds true colour from them.
- hrefs are resolved relative to the Item. Remote hrefs (http, https, s3, gs …) are refused unless
  ``allow_remote`` (or the environment variable ``GEOVL_STAC_REMOTE=1``) is set; they are then read
  through GDAL's ``/vsicurl/``.
- All chosen assets must share a CRS and extent; assets at a coarser resolution are resampled
  (nearest) onto the finest grid in the VRT (e.g. Sentinel-2 20 m bands with 10 m bands). Bands must
  share a data type. Nodata, scale and offset come from the file's tags, else from the asset's
  ``raster:bands``.

The VRT lives in a temporary folder that :func:`stac_inputs` removes on exit.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from ..errors import GeoVLError

DEFAULT_ORDER = ("blue", "green", "red", "nir")
REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "ftp://", "/vsicurl", "/vsis3", "/vsigs", "/vsiaz")
ENV_REMOTE = "GEOVL_STAC_REMOTE"


class StacError(GeoVLError, ValueError):
    """A user-facing STAC input error naming the item (or folder) and what is wrong."""


@dataclass
class StacRaster:
    item: str  # the Item's JSON path
    item_id: str
    vrt: str  # local VRT stacking the chosen bands
    bands: tuple[str, ...]  # common names, in VRT band order
    sources: list[dict] = field(default_factory=list)  # per band: asset key, href, band index

    def to_json(self) -> dict:
        return {"item": self.item, "id": self.item_id, "bands": list(self.bands), "sources": self.sources}


def is_stac(path) -> bool:
    """True for a directory holding ``catalog.json``/``collection.json`` or a JSON file that is a STAC Item."""
    if path is None:
        return False
    p = Path(str(path))
    if p.is_dir():
        return (p / "catalog.json").is_file() or (p / "collection.json").is_file()
    if p.suffix.lower() != ".json" or not p.is_file():
        return False
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("type") == "Feature" and "stac_version" in doc


def load_item(path):
    """The pystac Item of ``path`` (an Item JSON, or a catalog folder holding exactly one Item)."""
    try:
        import pystac
    except ImportError:
        raise StacError(
            f"{path}: reading STAC Items needs pystac — pip install 'geovl[stac]' (pystac==1.15.2)"
        ) from None

    p = Path(str(path))
    try:
        if p.is_dir():
            root = p / "catalog.json" if (p / "catalog.json").is_file() else p / "collection.json"
            cat = pystac.read_file(str(root))
            items = list(cat.get_items(recursive=True))
            if not items:
                raise StacError(f"{root}: the catalog holds no STAC Item")
            if len(items) > 1:
                ids = ", ".join(i.id for i in items[:10])
                raise StacError(
                    f"{root}: the catalog holds {len(items)} Items ({ids}{' …' if len(items) > 10 else ''}); "
                    "give the JSON file of the one to use / 目录含多个条目，请指定其中一个的 JSON 文件"
                )
            return items[0]
        return pystac.Item.from_file(str(p))
    except StacError:
        raise
    except Exception as e:  # pystac raises several kinds for malformed JSON
        raise StacError(f"{p}: not a readable STAC Item ({type(e).__name__}: {e})") from None


def _names(key: str, asset) -> list[str | None]:
    """Common band name of each band of ``asset`` (None where unnamed)."""
    ef = asset.extra_fields
    if isinstance(ef.get("eo:bands"), list) and ef["eo:bands"]:
        return [(b or {}).get("common_name") for b in ef["eo:bands"]]
    if isinstance(ef.get("bands"), list) and ef["bands"]:
        return [(b or {}).get("eo:common_name") for b in ef["bands"]]
    return [key.lower()]


def _raster_band(asset, i: int) -> dict:
    rb = asset.extra_fields.get("raster:bands")
    if isinstance(rb, list) and i < len(rb) and isinstance(rb[i], dict):
        return rb[i]
    b = asset.extra_fields.get("bands")
    if isinstance(b, list) and i < len(b) and isinstance(b[i], dict):
        return {k.removeprefix("raster:"): v for k, v in b[i].items()}
    return {}


def choose_assets(item, order=DEFAULT_ORDER, allow_remote: bool | None = None) -> list[dict]:
    """Per requested band name: ``{band, asset, href, index (1-based), raster}``; raises :class:`StacError`."""
    if allow_remote is None:
        allow_remote = os.environ.get(ENV_REMOTE, "") == "1"
    where = item.get_self_href() or item.id
    found: dict[str, dict] = {}
    for key, asset in item.assets.items():
        if asset.roles and "data" not in asset.roles:
            continue
        for i, name in enumerate(_names(key, asset)):
            if name and name.lower() not in found:
                found[name.lower()] = {"band": name.lower(), "asset": key, "asset_obj": asset, "index": i + 1}
    missing = [b for b in order if b not in found]
    if missing:
        have = ", ".join(sorted(found)) or "none"
        raise StacError(
            f"STAC item {item.id!r} ({where}): no data asset for band {', '.join(missing)} "
            f"(bands with a common name: {have}); pick others with --bands / STAC 条目缺少波段 {', '.join(missing)}"
        )
    out = []
    for b in order:
        f = found[b]
        asset = f.pop("asset_obj")
        href = asset.get_absolute_href() or asset.href
        if href.startswith(REMOTE_PREFIXES):
            if not allow_remote:
                raise StacError(
                    f"STAC item {item.id!r} ({where}): asset {f['asset']!r} ({b}) is remote ({href}); "
                    f"remote assets are refused unless {ENV_REMOTE}=1 is set — or download the item "
                    "and its assets first / 远程资产默认不读取"
                )
            if href.startswith(("http://", "https://")):
                href = "/vsicurl/" + href
        elif href.startswith("file://"):
            href = href[len("file://") :]
        out.append(f | {"href": href, "raster": _raster_band(asset, f["index"] - 1)})
    return out


def build_vrt(item, sources: list[dict], path) -> None:
    """Write a VRT stacking ``sources`` (from :func:`choose_assets`) on the finest grid."""
    import rasterio

    where = f"STAC item {item.id!r} ({item.get_self_href() or item.id})"
    info = []
    for s in sources:
        try:
            with rasterio.open(s["href"]) as ds:
                if s["index"] > ds.count:
                    raise StacError(
                        f"{where}: asset {s['asset']!r} has {ds.count} band(s), band {s['index']} ({s['band']}) is missing"
                    )
                k = s["index"] - 1
                info.append(
                    {
                        "w": ds.width,
                        "h": ds.height,
                        "crs": ds.crs,
                        "bounds": ds.bounds,
                        "transform": ds.transform,
                        "dtype": ds.dtypes[k],
                        "nodata": ds.nodatavals[k],
                        "scale": ds.scales[k],
                        "offset": ds.offsets[k],
                        "block": ds.block_shapes[k],
                    }
                )
        except rasterio.errors.RasterioIOError as e:
            raise StacError(f"{where}: asset {s['asset']!r} ({s['band']}) cannot be read: {s['href']} ({e})") from None
    base = max(info, key=lambda d: d["w"] * d["h"])
    for s, d in zip(sources, info):
        if d["crs"] != base["crs"]:
            raise StacError(
                f"{where}: asset {s['asset']!r} is in {d['crs']}, others in {base['crs']}: warp them to one CRS first"
            )
        tol = 0.5 * max(abs(base["transform"].a), abs(base["transform"].e))
        if any(abs(x - y) > tol for x, y in zip(d["bounds"], base["bounds"])):
            raise StacError(
                f"{where}: asset {s['asset']!r} covers {tuple(d['bounds'])}, others {tuple(base['bounds'])}: "
                "the chosen assets must cover the same extent"
            )
        if d["dtype"] != base["dtype"]:
            raise StacError(
                f"{where}: asset {s['asset']!r} is {d['dtype']}, others {base['dtype']}: bands must share a data type"
            )
    dtypes = {
        "uint8": "Byte",
        "int8": "Int8",
        "uint16": "UInt16",
        "int16": "Int16",
        "uint32": "UInt32",
        "int32": "Int32",
        "float32": "Float32",
        "float64": "Float64",
        "int64": "Int64",
        "uint64": "UInt64",
    }
    gdt = dtypes.get(base["dtype"])
    if gdt is None:
        raise StacError(f"{where}: data type {base['dtype']} is not supported")
    t = base["transform"]
    lines = [f'<VRTDataset rasterXSize="{base["w"]}" rasterYSize="{base["h"]}">']
    if base["crs"] is not None:
        lines.append(f"  <SRS>{escape(base['crs'].to_wkt())}</SRS>")
    lines.append(f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>")
    for n, (s, d) in enumerate(zip(sources, info), start=1):
        rb = s["raster"]
        nodata = d["nodata"] if d["nodata"] is not None else rb.get("nodata")
        scale = d["scale"] if d["scale"] not in (None, 1.0) else rb.get("scale")
        offset = d["offset"] if d["offset"] not in (None, 0.0) else rb.get("offset")
        lines.append(f'  <VRTRasterBand dataType="{gdt}" band="{n}">')
        lines.append(f"    <Description>{escape(s['band'])}</Description>")
        if nodata is not None:
            lines.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
        if offset is not None:
            lines.append(f"    <Offset>{float(offset)!r}</Offset>")
        if scale is not None:
            lines.append(f"    <Scale>{float(scale)!r}</Scale>")
        src = "ComplexSource" if nodata is not None else "SimpleSource"
        lines.append(f"    <{src}>")
        lines.append(f'      <SourceFilename relativeToVRT="0">{escape(s["href"])}</SourceFilename>')
        lines.append(f"      <SourceBand>{s['index']}</SourceBand>")
        lines.append(f'      <SrcRect xOff="0" yOff="0" xSize="{d["w"]}" ySize="{d["h"]}"/>')
        lines.append(f'      <DstRect xOff="0" yOff="0" xSize="{base["w"]}" ySize="{base["h"]}"/>')
        if nodata is not None:
            lines.append(f"      <NODATA>{nodata!r}</NODATA>")
        lines.append(f"    </{src}>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def band_order(bands) -> tuple[str, ...]:
    """Band names from a ``--bands`` value (names only; numbers such as 3,2,1 keep the default order)."""
    if bands is None:
        return DEFAULT_ORDER
    parts = [b.strip().lower() for b in (bands.split(",") if isinstance(bands, str) else bands) if str(b).strip()]
    if not parts or all(p.isdigit() for p in parts):
        return DEFAULT_ORDER
    return tuple(parts)


def item_raster(path, folder, bands=None, allow_remote: bool | None = None) -> StacRaster:
    """Resolve the STAC input ``path`` into a VRT written in ``folder``."""
    item = load_item(path)
    sources = choose_assets(item, band_order(bands), allow_remote)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.id)[:80] or "item"
    vrt = Path(folder) / f"{safe}.vrt"
    n = 1
    while vrt.exists():
        n += 1
        vrt = Path(folder) / f"{safe}_{n}.vrt"
    build_vrt(item, sources, vrt)
    return StacRaster(
        str(item.get_self_href() or path),
        item.id,
        str(vrt),
        tuple(s["band"] for s in sources),
        [{k: s[k] for k in ("band", "asset", "href", "index")} for s in sources],
    )


@contextmanager
def stac_inputs(*paths, bands=None, allow_remote: bool | None = None, log=None):
    """Yield ``paths`` with each STAC input replaced by a temporary VRT (others and None unchanged);
    the VRTs are removed on exit. ``log``: called with one line per Item naming the chosen assets."""
    if not any(is_stac(p) for p in paths):
        yield list(paths)
        return
    with tempfile.TemporaryDirectory(prefix="geovl-stac-") as tmp:
        out = []
        for p in paths:
            if not is_stac(p):
                out.append(p)
                continue
            r = item_raster(p, tmp, bands, allow_remote)
            if log is not None:
                log(
                    f"[STAC] {r.item} (id {r.item_id}): "
                    + ", ".join(f"{s['band']}={s['asset']}" for s in r.sources)
                    + " / 按通用波段名选取资产"
                )
            out.append(r.vrt)
        yield out
