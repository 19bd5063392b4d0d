"""``geovl detect``: locate objects in a (large) raster with a model → GeoJSON (WGS 84) + GeoParquet (raster CRS)."""

from __future__ import annotations

import argparse

from geovl.cli import run_lazy

DESCRIPTION = """\
Ask a "where" question (框出所有新增建筑 / Locate every building) about every overlapping tile of an
image, read the model's boxes back to pixels through its family's box convention, merge boxes across
tile borders (one feature per object, nothing lost at the last partial tile) and place them on the
map: OUT/detections.geojson (RFC 7946, WGS 84 lon/lat, label, score, area in m², 公顷, 亩) and
OUT/detections.parquet (GeoParquet in the raster's CRS). A rotated/skewed geotransform gives rotated
quadrilaterals. An image without a CRS gives pixel coordinates, with a note.

分块检测：逐块提问、按模型家族的坐标约定还原像素框、跨块合并、输出 WGS84 GeoJSON（含面积：平方米/公顷/亩）
与原坐标系 GeoParquet；无坐标参考的影像输出像素坐标并注明。

examples:
  geovl detect after.tif --before before.tif --question "框出所有新增建筑" --model out/final --out det/
  geovl detect county.tif -q "Locate every building" --model out/final --out det/ --tile 448 --overlap 96
"""


def register(sub) -> None:
    from .eval import add_engine_args

    p = sub.add_parser(
        "detect",
        help="locate objects tile by tile → GeoJSON / GeoParquet on the map (分块目标定位)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "image",
        metavar="IMAGE.tif",
        help="the raster (GeoTIFF, or any image: pixel coordinates without a CRS; or a STAC Item JSON / catalog folder)",
    )
    p.add_argument("--question", "-q", required=True, help="what to locate, e.g. 框出所有建筑 / Locate every building")
    p.add_argument(
        "--before", metavar="OLD.tif", help="the earlier date on the same pixel grid (shown first, as in training)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--tile", type=int, default=448, metavar="PX", help="tile side in pixels (default 448)")
    p.add_argument(
        "--overlap",
        type=int,
        default=64,
        metavar="PX",
        help="overlap between tiles (default 64; larger than the objects)",
    )
    p.add_argument("--bands", metavar="ORDER", help="band order for rendering, e.g. blue,green,red,nir")
    p.add_argument("--pixel-size", metavar="M", help="ground pixel size in metres (areas for an image without a CRS)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_args(p)
    p.set_defaults(max_new_tokens=512)
    p.set_defaults(func=run_lazy("geovl.commands.detect:run"))


def run(args) -> int:
    from .rasters import local_rasters

    with local_rasters(args.image, args.before, bands=args.bands) as (args.image, args.before):
        return _run(args)


def _run(args) -> int:
    import json
    import sys

    from geovl.cli import CLIError
    from geovl.geo.detect import detect_raster
    from geovl.geo.errors import MeasureError
    from geovl.geo.tiles import TileGrid
    from geovl.inference import EngineError

    from .eval import open_engine_from_args, params_from_args

    params = params_from_args(args)
    try:
        TileGrid(1, 1, args.tile, args.overlap)
    except MeasureError as e:
        raise CLIError(str(e)) from e
    engine = open_engine_from_args(args)
    try:
        summary = detect_raster(
            engine,
            args.image,
            args.question,
            args.out,
            before=args.before,
            tile=args.tile,
            overlap=args.overlap,
            batch_size=args.batch_size,
            params=params,
            bands=args.bands,
            pixel_size=args.pixel_size,
            progress=not args.no_progress,
        )
    except (MeasureError, EngineError) as e:
        raise CLIError(str(e)) from e
    finally:
        close = getattr(engine, "close", None)
        if close:
            close()
    c = summary["counts"]
    print(
        f"tiles {c['tiles']} (nodata {c['nodata']}), answers unparsed {c['unparsed']}, boxes {c['boxes_raw']} → "
        f"{c['detections']} after merging tile borders → {summary['outputs']['geojson']}\n"
        f"共 {c['tiles']} 块，检测 {c['detections']} 个目标",
        file=sys.stderr,
    )
    for n in summary["notes"]:
        print(f"note: {n['en']} / {n['zh']}", file=sys.stderr)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0
