"""``geovl measure``: land-cover areas (m², km², 公顷, 亩) measured on georeferenced rasters, two-date
change matrices and change patches (GeoJSON), clipped to an AOI."""

from __future__ import annotations

import argparse

from geovl.cli import run_lazy

DESCRIPTION = """\
Measure land-cover class areas on a georeferenced raster — numbers come from pixel counts × ground
pixel area, never from a model's guess. Classes come from a supplied categorical raster (--classes,
or IMAGE itself when it has one band; tables: worldcover, dynamicworld, synth or a JSON file) or are
derived from spectral-index thresholds (NDVI/NDWI/NDBI) when IMAGE has blue, green, red, NIR bands.
With --before / --before-classes: the from→to change matrix, gain/loss/net per class and the change
patches (GeoJSON, opens in QGIS). The output states the method and the known accuracy of such maps.

在地理参考影像上量算各地类面积（平方米、平方公里、公顷、亩）：面积 = 像元数 × 像元地面面积，而非模型估计。
地类来自提供的分类栅格，或由光谱指数阈值推导；给出前时相时输出转移矩阵、各类新增/减少/净变化及变化图斑（GeoJSON）。

examples:
  geovl measure after.tif --classes after_classes.tif --before-classes before_classes.tif --out out/
  geovl measure worldcover_2021.tif --class-table worldcover --aoi county.geojson --json
  geovl measure s2_2024q2.tif --before s2_2024q1.tif --bands blue,green,red,nir,swir
"""


def register(sub) -> None:
    p = sub.add_parser(
        "measure",
        help="measure land-cover areas and two-date change on GeoTIFFs (土地覆盖面积与变化量算)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "image",
        metavar="IMAGE.tif",
        help="the (later) image: multi-band reflectance, or a one-band class raster; "
        "also a STAC Item JSON or a catalog folder holding one Item (bands chosen by common name)",
    )
    p.add_argument("--before", metavar="OLD.tif", help="the earlier image of the same area (two-date change)")
    p.add_argument(
        "--classes", metavar="CLASSES.tif", help="land-cover class raster for IMAGE's date (one band, integer codes)"
    )
    p.add_argument("--before-classes", metavar="OLD_CLASSES.tif", help="class raster of the earlier date")
    p.add_argument(
        "--class-table",
        metavar="TABLE",
        help="worldcover, dynamicworld, synth, or a JSON class table "
        "(default: auto — synth beside geovl synthetic data, worldcover when all codes fit, else codes)",
    )
    p.add_argument("--aoi", metavar="AOI.geojson", help="measure inside this Polygon/MultiPolygon only")
    p.add_argument(
        "--aoi-crs",
        metavar="CRS",
        help="CRS of the AOI coordinates (default: the file's crs member, "
        "EPSG:4326 for lon/lat coordinates, else the raster CRS)",
    )
    p.add_argument("--pixel-size", metavar="M", help="ground pixel size in metres (X or X,Y) for rasters without a CRS")
    p.add_argument(
        "--area",
        choices=["auto", "planar", "ellipsoidal"],
        default="auto",
        help="projected rasters: planar map area, or area on the WGS 84 ellipsoid (default auto: planar "
        "unless the projection distorts areas by more than 1%%)",
    )
    p.add_argument(
        "--bands",
        metavar="ORDER",
        help="band order of the reflectance images, e.g. blue,green,red,nir,swir "
        "(default blue,green,red,nir; other names skip a band)",
    )
    p.add_argument(
        "--index-rules", metavar="FILE", help="JSON/YAML with bands, thresholds, offset of the index classifier"
    )
    p.add_argument(
        "--top", type=int, default=0, metavar="N", help="keep only the N largest change patches (default 0: all)"
    )
    p.add_argument(
        "--min-patch-pixels", type=int, default=1, metavar="N", help="drop change patches smaller than N pixels"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of the table")
    p.add_argument(
        "--context", choices=["zh", "en"], help="print the compact text given to a model (geovl ask) instead"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="also write measurement.json, report.txt, changes.geojson (two dates), derived class maps",
    )
    p.add_argument(
        "--wgs84", action="store_true", help="with --out: also write changes_4326.geojson (EPSG:4326, RFC 7946)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_lazy("geovl.commands.measure:run"))


def run(args) -> int:
    import json
    import sys
    from contextlib import ExitStack
    from pathlib import Path

    from geovl.cli import CLIError
    from geovl.geo.errors import MeasureError
    from geovl.geo.indices import load_rules
    from geovl.geo.measure import measure_raster

    from .rasters import local_rasters

    if args.top < 0 or args.min_patch_pixels < 1:
        raise CLIError("--top must be >= 0 and --min-patch-pixels >= 1")
    if args.wgs84 and not args.out:
        raise CLIError("--wgs84 writes changes_4326.geojson into --out DIR; give --out too")
    stack = ExitStack()
    try:
        image, before = stack.enter_context(
            local_rasters(args.image, args.before, bands=args.bands)
        )  # STAC → local VRT
        rules = load_rules(args.index_rules, args.bands)
        m = measure_raster(
            image,
            classes=args.classes,
            before=before,
            before_classes=args.before_classes,
            class_table=args.class_table,
            aoi=args.aoi,
            aoi_crs=args.aoi_crs,
            pixel_size=args.pixel_size,
            rules=rules,
            area=args.area,
            top=args.top or None,
            min_patch_pixels=args.min_patch_pixels,
            progress=not args.no_progress,
        )
        doc = m.to_json()
        text = m.text()
        written = []
        if args.out:
            out = Path(args.out)
            if out.exists() and not out.is_dir():
                raise MeasureError(f"{out}: exists and is not a directory")
            out.mkdir(parents=True, exist_ok=True)
            _write(out / "measurement.json", json.dumps(doc, ensure_ascii=False, indent=2) + "\n", written)
            _write(out / "report.txt", text + "\n", written)
            if m.change is not None:
                _write(out / "changes.geojson", json.dumps(m.geojson(), ensure_ascii=False) + "\n", written)
                if args.wgs84:
                    _write(
                        out / "changes_4326.geojson",
                        json.dumps(m.geojson(wgs84=True), ensure_ascii=False) + "\n",
                        written,
                    )
            written += m.write_class_rasters(out)
    except MeasureError as e:
        raise CLIError(str(e)) from e
    except MemoryError:
        raise CLIError(
            f"{args.image}: out of memory while measuring — rasters are read in windows, so this is a "
            "whole-array step (two dates on different grids, change patches of a large grid): put both "
            "dates on one grid (gdalwarp), clip with --aoi, or use a machine with more memory / 内存不足"
        ) from None
    finally:
        stack.close()
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    elif args.context:
        print(m.context_text(args.context))
    else:
        print(text)
    if written:
        print("wrote 已写入: " + ", ".join(written), file=sys.stderr)
    return 0


def _write(path, text: str, written: list) -> None:
    path.write_text(text, encoding="utf-8")
    written.append(str(path))
