"""``geovl ask``: a model's answer grounded in figures measured on the rasters (geovl.geo.ask)."""

from __future__ import annotations

import argparse

from geovl.cli import run_lazy

DESCRIPTION = """\
Measure land-cover areas (and two-date change) on georeferenced rasters with `geovl measure`, put
the measured figures into the model's context in a fixed form, and ask the question. Prints the
measurement table and streams the answer (--json: {answer, measurement, context, prompt}).

The prompt is one user turn: the images (before first), then
  测量结果（来自地理配准影像，非模型估计）：<measurement context>\\n问题：<question>
(English: "Measurements (from the georeferenced rasters, not model estimates):" … "Question: …").
`geovl data synth --tasks grounded` writes training data in exactly this form.

A "where" question (框出 / 在哪里 / 位置 / where / locate …) also reads the answer's boxes through the
model's box convention (as `geovl detect`) and reports each in raster pixels and on the map (WGS 84)
with its ground area in m², 公顷 and 亩 (--json: "boxes"; --geojson FILE: RFC 7946 features).

先在地理配准影像上量算各地类面积（及两期变化），再把量算结果以固定格式放进模型上下文中提问；
输出量算表并流式输出回答。

examples:
  geovl ask --image after.tif --classes after_classes.tif --question "耕地面积约为多少公顷？" --model out/final
  geovl ask --image after.tif --question "框出所有建筑" --model out/final --geojson buildings.geojson
  geovl ask --image after.tif --before before.tif --classes after_classes.tif --before-classes before_classes.tif \\
      --question "How much new cropland is there?" --api http://localhost:8000/v1 --json
"""


def register(sub) -> None:
    from .eval import add_engine_args

    p = sub.add_parser(
        "ask",
        help="answer a question with measured areas in the model's context (量算结果支撑的问答)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--image",
        required=True,
        metavar="NEW.tif",
        help="the (later) image shown to the model and measured "
        "(also a STAC Item JSON or a catalog folder holding one Item)",
    )
    p.add_argument("--before", metavar="OLD.tif", help="the earlier image of the same area (two dates: change figures)")
    p.add_argument(
        "--classes",
        metavar="C.tif",
        help="land-cover class raster of --image's date (else classes are derived from spectral indices)",
    )
    p.add_argument("--before-classes", metavar="OC.tif", help="class raster of the earlier date")
    p.add_argument(
        "--class-table", metavar="TABLE", help="worldcover, dynamicworld, synth or a JSON class table (default: auto)"
    )
    p.add_argument("--aoi", metavar="AOI.geojson", help="measure inside this Polygon/MultiPolygon only")
    p.add_argument("--aoi-crs", metavar="CRS", help="CRS of the AOI coordinates (default: as `geovl measure`)")
    p.add_argument("--pixel-size", metavar="M", help="ground pixel size in metres for rasters without a CRS")
    p.add_argument(
        "--bands",
        metavar="ORDER",
        help="band order, e.g. blue,green,red,nir (rendering and derived classes), or 1-based "
        "band numbers shown as R,G,B, e.g. 3,2,1 (rendering only)",
    )
    p.add_argument("--question", "-q", required=True, help="the question (its language picks the context language)")
    p.add_argument(
        "--lang", choices=["zh", "en"], help="context language (default: zh when the question has CJK characters)"
    )
    p.add_argument(
        "--json", action="store_true", help="print {answer, measurement, context, prompt} as JSON (no streaming)"
    )
    p.add_argument(
        "--geojson",
        metavar="FILE",
        help='"where" questions: write the answer\'s boxes as RFC 7946 GeoJSON '
        "(WGS 84, with areas) / 定位类问题：把回答中的框写成 GeoJSON",
    )
    p.add_argument("--show-prompt", action="store_true", help="also print the exact prompt text given to the model")
    add_engine_args(p)
    p.set_defaults(max_new_tokens=256)
    p.set_defaults(func=run_lazy("geovl.commands.ask:run"))


def run(args) -> int:
    from .rasters import local_rasters

    with local_rasters(args.image, args.before, bands=args.bands) as (args.image, args.before):
        return _run(args)


def _run(args) -> int:
    import json
    import sys

    from geovl.cli import CLIError
    from geovl.geo.ask import build_grounded, detect_lang, measure_inputs, render_images
    from geovl.geo.ask_boxes import boxes_geojson, boxes_text, is_where_question, locate_answer
    from geovl.geo.errors import MeasureError
    from geovl.inference import EngineError
    from geovl.inference.capabilities import input_spec

    from .eval import local_preprocess, open_engine_from_args, params_from_args

    params = params_from_args(args)
    if not args.question.strip():
        raise CLIError("--question is empty")
    lang = args.lang or detect_lang(args.question)
    where = is_where_question(args.question)
    if args.geojson and not where:
        raise CLIError(
            f"--geojson is for questions that ask where objects are (框出/在哪里/where/locate …); "
            f"{args.question!r} does not"
        )
    try:  # measure and render first: bad rasters fail before a model is loaded
        m = measure_inputs(
            args.image,
            args.before,
            args.classes,
            args.before_classes,
            args.class_table,
            args.aoi,
            args.aoi_crs,
            args.pixel_size,
            bands=args.bands,
        )
        pre = local_preprocess(args)  # the model's render settings, read before the model loads
        rendered = render_images(args.image, args.before, pre, args.bands)  # unreadable images fail here too
    except MeasureError as e:
        raise CLIError(str(e)) from e
    engine = open_engine_from_args(args)
    try:
        gp = build_grounded(
            args.image,
            args.question,
            before_path=args.before,
            bands=args.bands,
            lang=lang,
            preprocess=input_spec(engine).preprocess,
            measurement=m,
            rendered=rendered if input_spec(engine).preprocess == pre else None,
        )

        def locate(answer: str):  # "where": the answer's boxes on the (later) raster, written as GeoJSON if asked
            info = locate_answer(engine, args.image, gp.renders[-1], answer, args.pixel_size)
            if args.geojson:
                from pathlib import Path

                Path(args.geojson).write_text(
                    json.dumps(boxes_geojson(info, gp.question), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
                )
            return info

        if args.json:
            answer = engine.generate([gp.request()], params)[0].strip()
            doc = {
                "answer": answer,
                "measurement": m.to_json(),
                "context": gp.context,
                "prompt": gp.prompt,
                "question": gp.question,
                "lang": gp.lang,
                "images": gp.image_paths,
                "renders": gp.renders,
                "engine": engine.name,
            }
            if where:
                doc["boxes"] = locate(answer)
            print(json.dumps(doc, ensure_ascii=False, indent=2))
            return 0
        print(m.text())
        for line in gp.band_lines():
            print(f"[波段 bands] {line}")
        if args.show_prompt:
            print("\n[提示词 prompt]\n" + gp.prompt)
        print("\n[回答 answer] " if lang == "zh" else "\n[answer 回答] ", end="", flush=True)
        pieces = []
        for delta in engine.stream(gp.request(), params):
            pieces.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
        print()
        if where:
            print(boxes_text(locate("".join(pieces)), lang))
            if args.geojson:
                print(f"GeoJSON: {args.geojson}")
    except (MeasureError, EngineError) as e:
        raise CLIError(str(e)) from e
    finally:
        close = getattr(engine, "close", None)
        if close:
            close()
    return 0
