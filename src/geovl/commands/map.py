"""``geovl map``: ask a yes/no question about every tile of a large raster → flags GeoTIFF, GeoJSON, PNG."""

from __future__ import annotations

import argparse

from geovl.cli import run_lazy

DESCRIPTION = """\
Tiled inference over a georeferenced raster of any size: overlapping windows are read one at a
time (never the whole raster), rendered to RGB like training images, and asked QUESTION in batches.
Writes a per-tile GeoTIFF (one pixel per tile stride, the raster's CRS; band 1 answer code 1 yes /
0 no / 255 unknown, band 2 P(yes)), optionally a GeoJSON of flagged tiles (RFC 7946, WGS 84;
opens in QGIS) and a GeoParquet of them in the raster CRS, and a PNG
overview with flagged tiles outlined. All-nodata tiles are skipped. Finished tiles go to
OUT.tiles.jsonl; --resume continues an interrupted run.

对大幅影像分块推理：重叠窗口逐块读取、渲染为 RGB 并批量提问；输出每块答案/概率 GeoTIFF、
疑似图斑 GeoJSON 与 PNG 概览图；全为无数据的块跳过；中断后可 --resume 续跑。

examples:
  geovl map county.tif --question "图中是否有新增建筑占用耕地？" --out flags.tif --model out/final \\
      --geojson flags.geojson --png overview.png --label "疑似违规建设: 新增建筑位于耕地"
  geovl map county.tif -q "Is there water?" --out water.tif --api http://localhost:8000/v1 --resume
"""


def register(sub) -> None:
    from .eval import add_engine_args

    p = sub.add_parser(
        "map",
        help="tiled yes/no inference over a large raster → flags GeoTIFF/GeoJSON/PNG (大幅影像分块推理)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "raster",
        metavar="RASTER.tif",
        help="georeferenced raster (any size, any band count), or a STAC Item JSON / catalog folder",
    )
    p.add_argument("--question", "-q", required=True, help="a yes/no question asked about every tile")
    p.add_argument("--out", required=True, metavar="FLAGS.tif", help="per-tile answer/probability GeoTIFF")
    p.add_argument("--tile", type=int, default=224, metavar="PX", help="tile side in pixels (default 224)")
    p.add_argument(
        "--overlap", type=int, default=32, metavar="PX", help="overlap between neighbouring tiles (default 32)"
    )
    p.add_argument(
        "--bands",
        metavar="ORDER",
        help="band order for rendering, e.g. blue,green,red,nir (default: "
        "band descriptions, else blue,green,red,nir for 4+ bands)",
    )
    p.add_argument("--flag-if", choices=["yes", "no"], default="yes", help="which answer flags a tile (default yes)")
    p.add_argument(
        "--answer-from",
        choices=["text", "choice"],
        default="text",
        help="text: the generated answer (default); choice: the more probable of yes/no (local models)",
    )
    p.add_argument("--label", help="label written on flagged features (default: the question)")
    p.add_argument(
        "--geojson", metavar="FLAGS.geojson", help="also write the flagged tiles as polygons (RFC 7946: WGS 84 lon/lat)"
    )
    p.add_argument(
        "--geoparquet", metavar="FLAGS.parquet", help="also write the flagged tiles as GeoParquet (raster CRS)"
    )
    p.add_argument(
        "--png", metavar="OVERVIEW.png", help="also write a downsampled overview with flagged tiles outlined"
    )
    p.add_argument(
        "--png-size", type=int, default=1024, metavar="PX", help="longest side of the overview (default 1024)"
    )
    p.add_argument("--resume", action="store_true", help="continue a run: skip the tiles in FLAGS.tiles.jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_args(p)
    p.set_defaults(max_new_tokens=8)
    p.set_defaults(func=run_lazy("geovl.commands.map:run"))


def run(args) -> int:
    from .rasters import local_rasters

    with local_rasters(args.raster, bands=args.bands) as (args.raster,):
        return _run(args)


def _run(args) -> int:
    import json
    import sys

    from geovl.cli import CLIError
    from geovl.geo.errors import MeasureError
    from geovl.geo.mapper import map_raster
    from geovl.geo.tiles import TileGrid
    from geovl.inference import EngineError

    from .eval import open_engine_from_args, params_from_args

    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite exclude each other")
    params = params_from_args(args)
    try:
        TileGrid(1, 1, args.tile, args.overlap)  # option errors before a model is loaded
    except MeasureError as e:
        raise CLIError(str(e)) from e
    engine = open_engine_from_args(args)
    try:
        summary = map_raster(
            engine,
            args.raster,
            args.question,
            args.out,
            tile=args.tile,
            overlap=args.overlap,
            batch_size=args.batch_size,
            bands=args.bands,
            flag_if=args.flag_if,
            answer_from=args.answer_from,
            label=args.label,
            geojson=args.geojson,
            geoparquet=args.geoparquet,
            png=args.png,
            png_size=args.png_size,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            params=params,
        )
    except (MeasureError, EngineError) as e:
        raise CLIError(str(e)) from e
    finally:
        close = getattr(engine, "close", None)
        if close:
            close()
    a = summary["answers"]
    print(
        f"tiles {summary['tiles']}: answered {a['yes'] + a['no'] + a['unknown']} (yes {a['yes']}, no {a['no']}, "
        f"unknown {a['unknown']}), nodata {summary['nodata']}, run now {summary['run']}, from earlier run "
        f"{summary['done_before']}; flagged {summary['flagged']} → {', '.join(summary['written'])}\n"
        f"共 {summary['tiles']} 块：是 {a['yes']}，否 {a['no']}，无法判断 {a['unknown']}，无数据 {summary['nodata']}，"
        f"标记 {summary['flagged']} 块",
        file=sys.stderr,
    )
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0
