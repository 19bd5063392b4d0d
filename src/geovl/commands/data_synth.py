"""``geovl data synth``: synthetic county scenes with exact ground truth (the embedded default data)."""

from __future__ import annotations

import argparse

from geovl.cli import run_lazy

DESCRIPTION = """\
Generate procedural top-down scenes of a Chinese county (cropland, forest, water, built-up land with
countable buildings, roads, bare land) on two dates, with exact class maps and change ground truth.
Writes RGB PNGs, 4-band reflectance GeoTIFFs (UTM 50N), class-map GeoTIFFs, scenes.jsonl,
classes.json and Chinese/English Q/A as geovl dataset files (<split>.parquet, split by scene).

生成合成的县域遥感场景（耕地、林地、水体、建设用地与可数的建筑、道路、裸地），每个场景两个时相，
附精确的地类图与变化真值；输出 RGB PNG、四波段反射率 GeoTIFF、地类 GeoTIFF，以及中英文问答数据集。
"""


def register(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="generate synthetic county scenes and zh/en Q/A (合成县域场景与中英文问答)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (created; must be empty unless --overwrite)"
    )
    p.add_argument(
        "--scenes", required=True, type=int, metavar="N", help="number of scenes (each has a before and an after image)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed (same seed and arguments -> identical files; default 0)"
    )
    p.add_argument("--size", type=int, default=224, metavar="PX", help="image side in pixels (default 224)")
    p.add_argument("--lang", default="zh,en", help="question languages, comma-separated: zh, en (default zh,en)")
    p.add_argument(
        "--pixel-size",
        type=float,
        default=10.0,
        metavar="M",
        help="ground pixel size in metres (default 10, like Sentinel-2)",
    )
    p.add_argument(
        "--questions-per-scene",
        type=int,
        default=8,
        metavar="K",
        help="questions per scene and language; 8 (default) asks each task once, tasks rotate when fewer",
    )
    p.add_argument(
        "--split", default="train=0.8,test=0.2", help="scene split NAME=FRACTION,... (default train=0.8,test=0.2)"
    )
    p.add_argument("--max-buildings", type=int, default=6, metavar="N", help="most buildings in one image (default 6)")
    p.add_argument(
        "--tasks",
        default="all",
        help="question tasks, comma-separated (default all): presence, count, area, compare, "
        "rural_urban, change_count, change_increase, change_area; grounded (= grounded_area,grounded_change: measured figures in the prompt); "
        "boxes (= box_buildings,box_new_buildings,box_water: qtype grounding with exact boxes)",
    )
    p.add_argument(
        "--presence-classes",
        default=None,
        metavar="LIST",
        help="classes asked about in presence questions (default: cropland,forest,water,bare,road)",
    )
    p.add_argument(
        "--format",
        choices=["parquet", "jsonl"],
        default="parquet",
        help="dataset file format (jsonl: images as files beside it; convert later with `geovl data convert --from messages`)",
    )
    p.add_argument(
        "--dates",
        type=int,
        default=None,
        metavar="N",
        help="time series: each place on N dates (2-12, years apart) that change with exact truth; one N-image "
        "sample per question (which year buildings appeared, cropland lost, interval of forest loss, built-up "
        "growth), meta.dates ISO and the dates in the prompt; --tasks then picks among series_* tasks "
        "(时间序列：每个地点 N 期影像，见 docs/timeseries.md)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty directory (replaces its scenes/ folder)"
    )
    p.add_argument(
        "--video",
        type=int,
        default=0,
        metavar="N",
        help="also render MP4 clips of the first N scenes (construction appearing, a flight) with zh/en Q/A "
        "into <split>_video.<format> (geovl.synth.video) / 同时生成 N 个场景的视频片段与问答",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_lazy("geovl.commands.data_synth:run"))


def run(args) -> int:
    import json
    import sys

    from geovl.cli import CLIError
    from geovl.synth import SynthError, synthesize

    try:
        summary = synthesize(
            args.out,
            args.scenes,
            seed=args.seed,
            size=args.size,
            langs=args.lang,
            pixel_size=args.pixel_size,
            questions_per_scene=args.questions_per_scene,
            split=args.split,
            max_buildings=args.max_buildings,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            tasks=args.tasks,
            fmt=args.format,
            presence_classes=args.presence_classes,
            dates=args.dates,
        )
        if args.video:
            from geovl.synth.video import synthesize_videos

            summary["video"] = synthesize_videos(
                args.out,
                args.video,
                seed=args.seed,
                size=args.size,
                langs=args.lang,
                split=args.split,
                max_buildings=args.max_buildings,
                fmt=args.format,
                image_scenes=args.scenes,
                progress=not args.no_progress,
            )
    except SynthError as e:
        raise CLIError(str(e)) from e
    if args.video:
        print(f"wrote {summary['video']['samples']} video samples / 视频问答样本", file=sys.stderr)
    per_split = ", ".join(f"{k} {v['written']}" for k, v in summary["splits"].items())
    what = f"{args.scenes} places x {args.dates} dates" if args.dates else f"{args.scenes} scenes"
    print(
        f"wrote {summary['samples']} samples ({per_split}) from {what} to {summary['out_dir']}\n"
        f"已写入 {summary['samples']} 条样本（{per_split}），共 {args.scenes} 个场景：{summary['out_dir']}",
        file=sys.stderr,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "answers"}, ensure_ascii=False, indent=2))
    return 0
