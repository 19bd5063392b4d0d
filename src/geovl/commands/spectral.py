"""``geovl spectral ...``: hyperspectral cubes — info, render, depth, index, synth, map (SAM), evaluate-sam,
vlm-map (tiled probability map from a spectral VLM), compare (the VLM vs SAM on held-out scenes).

Registration imports only argparse; the ``run_*`` functions import numpy/rasterio when called.
"""

from __future__ import annotations

import argparse

from geovl.cli import run_lazy

CUBE_HELP = "cube: ENVI (.hdr or its data file), GeoTIFF (.tif) or .npy"
LAYOUT_HELP = ".npy layout: bands-first (bands, rows, cols; default) or bands-last (rows, cols, bands)"


def _cube_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("cube", help=CUBE_HELP)
    p.add_argument("--layout", choices=["bands-first", "bands-last"], default=None, help=LAYOUT_HELP)


def register(sub) -> None:
    p = sub.add_parser(
        "spectral",
        help="hyperspectral cubes: render, band depth, SAM, synthetic alteration scenes (高光谱)",
        description="Hyperspectral prospecting tools. 高光谱找矿工具：渲染、吸收深度、光谱角制图、合成蚀变场景。",
    )
    p.set_defaults(_group_parser=p)
    s = p.add_subparsers(dest="spectral_command", metavar="SUBCOMMAND")

    q = s.add_parser("info", help="print a cube's metadata as JSON")
    _cube_args(q)
    q.set_defaults(func=run_lazy("geovl.commands.spectral:run_info"))

    q = s.add_parser(
        "render",
        help="false-colour PNG/GeoTIFF from nearest bands, a preset or a saved spec",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _cube_args(q)
    g = q.add_mutually_exclusive_group()
    g.add_argument(
        "--wavelengths",
        help="R,G,B wavelengths (nm, or with um), e.g. 2200,1650,600 (default: true colour 640,550,470)",
    )
    g.add_argument("--preset", help="true_colour, vnir_cir, swir, alteration, depth_rgb, ndvi, clay, iron_oxide")
    g.add_argument("--spec", help="rendering spec JSON (rendering.json, or a geovl_preprocess.json with 'rendering')")
    q.add_argument("--stretch", default="2,98", help="percentile stretch LO,HI per channel")
    q.add_argument("--fixed", metavar="MIN,MAX", help="fixed stretch instead of percentiles (e.g. 0,0.6 reflectance)")
    q.add_argument("--out", required=True, help="output .png (RGB) or .tif (3-band uint8 GeoTIFF, CRS kept)")
    q.add_argument("--spec-out", help="also write the resolved rendering spec JSON here")
    q.set_defaults(func=run_lazy("geovl.commands.spectral:run_render"))

    q = s.add_parser("depth", help="continuum-removed band depth at an absorption feature → float32 GeoTIFF")
    _cube_args(q)
    q.add_argument(
        "--feature",
        required=True,
        help="AlOH (~2200 nm), MgOH (~2330, also carbonate), FeOH (~2265), Fe3 (~900), or a wavelength such as 2200",
    )
    q.add_argument("--shoulders", metavar="LEFT,RIGHT", help="continuum shoulders (nm) for a custom feature")
    q.add_argument(
        "--mode",
        choices=["centre", "max"],
        default="centre",
        help="depth at the centre band or the max between shoulders",
    )
    q.add_argument("--out", required=True, help="output GeoTIFF")
    q.add_argument("--rows", type=int, default=None, help="rows per window (default: from a 64 MB budget)")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=run_lazy("geovl.commands.spectral:run_depth"))

    q = s.add_parser("index", help="band index (ndvi, clay, iron_oxide, or --nd/--ratio A,B) → float32 GeoTIFF")
    _cube_args(q)
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--name", help="ndvi (860,650 nd), clay (1650/2200), iron_oxide (650/480)")
    g.add_argument("--nd", metavar="A,B", help="normalised difference (A-B)/(A+B) of two wavelengths")
    g.add_argument("--ratio", metavar="A,B", help="ratio A/B of two wavelengths")
    q.add_argument("--out", required=True, help="output GeoTIFF")
    q.add_argument("--rows", type=int, default=None)
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=run_lazy("geovl.commands.spectral:run_index"))

    q = s.add_parser(
        "synth",
        help="synthetic alteration scenes (real USGS spectra) with ground truth and zh/en Q/A",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    q.add_argument("--out", required=True, metavar="DIR")
    q.add_argument("--sensor", choices=["gf5b", "aviris"], default="gf5b")
    q.add_argument("--scenes", type=int, required=True, metavar="N")
    q.add_argument("--size", type=int, default=64, metavar="PX")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--split", default="train=0.8,test=0.2", help="scene split NAME=FRACTION,...")
    q.add_argument(
        "--rendering", default="alteration", help="PNG rendering preset (alteration uses a fixed 0.05–0.75 stretch)"
    )
    q.add_argument("--formats", default="envi,geotiff", help="cube formats to write: envi, geotiff")
    q.add_argument("--lang", default="zh,en", help="question languages")
    q.add_argument("--noise", type=float, default=0.004, help="Gaussian noise σ in reflectance")
    q.add_argument("--overwrite", action="store_true", help="write into a non-empty DIR")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=run_lazy("geovl.commands.spectral:run_synth"))

    q = s.add_parser(
        "map",
        help="per-pixel mineral map: spectral angle mapper against USGS spectra → 2-band GeoTIFF",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _cube_args(q)
    q.add_argument("--method", choices=["sam"], default="sam")
    q.add_argument("--library", default="minerals+background", help="minerals, minerals+background or all (77 records)")
    q.add_argument("--max-angle", type=float, default=0.05, help="radians; worse matches become class 0")
    q.add_argument("--out", required=True, help="output GeoTIFF (band 1 class, band 2 angle) + <out>.classes.json")
    q.add_argument("--rows", type=int, default=None, help="rows per window (default: from --budget-mb)")
    q.add_argument("--budget-mb", type=int, default=128, help="memory budget of one window")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=run_lazy("geovl.commands.spectral:run_map"))

    q = s.add_parser(
        "evaluate-sam",
        help="SAM's main mineral per scene vs ground truth of a synth folder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    q.add_argument("dir", help="folder written by `geovl spectral synth`")
    q.add_argument("--split", default="test", help="split to evaluate (all = every scene)")
    q.add_argument("--library", default="minerals+background")
    q.add_argument("--max-angle", type=float, default=0.05)
    q.add_argument("--min-pixels", type=int, default=10, help="fewer mineral pixels → answer none")
    q.add_argument("--out", help="write the evaluation JSON here")
    q.set_defaults(func=run_lazy("geovl.commands.spectral:run_evaluate_sam"))

    q = s.add_parser(
        "vlm-map",
        help="mineralisation-probability map from a spectral VLM, window by window → float32 GeoTIFF + PNG",
        description="Ask a model trained on cubes (spectral projector) the mineralisation-probability question "
        "about every window of a cube and blend the answers into a per-pixel map. "
        "用光谱投影器模型逐窗口回答成矿概率，融合为逐像元概率图。",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _cube_args(q)
    q.add_argument("--model", required=True, help="model folder with a spectral projector (or a LoRA run's final/)")
    q.add_argument("--adapter", help="peft adapter folder (e.g. OUT/final of `geovl train sft`)")
    q.add_argument(
        "--out",
        required=True,
        metavar="PROB.tif",
        help="float32 probability GeoTIFF (CRS/transform of the cube, nodata NaN); the summary goes to PROB.json",
    )
    q.add_argument("--png", metavar="PROB.png", help="PNG preview (default: PROB.png beside --out)")
    q.add_argument("--tile", type=int, default=64, metavar="PX", help="window side in pixels")
    q.add_argument("--overlap", type=int, default=16, metavar="PX", help="overlap between neighbouring windows")
    q.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from OUT's .windows.jsonl journal"
    )
    q.add_argument(
        "--blend",
        choices=["taper", "mean"],
        default="taper",
        help="overlap blending: tapered weights (smooth seams) or the plain mean",
    )
    q.add_argument("--lang", choices=["en", "zh"], default="en", help="language of the question")
    q.add_argument("--batch-size", type=int, default=8, help="windows per generate call")
    q.add_argument("--max-new-tokens", type=int, default=8, help="answer length limit in tokens")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=run_lazy("geovl.commands.spectral:run_vlm_map"))

    q = s.add_parser(
        "compare",
        help="VLM vs SAM vs ground truth on held-out synthetic scenes (table)",
        description="Alteration, main mineral and probability: answers of `geovl eval` on SYNTH_DIR/<split>.parquet "
        "vs the spectral angle mapper vs scenes.jsonl. 光谱大模型与光谱角制图在留出合成场景上的对比。",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    q.add_argument("dir", metavar="SYNTH_DIR", help="folder written by `geovl spectral synth`")
    q.add_argument("--predictions", required=True, metavar="PRED.jsonl", help="predictions file of `geovl eval`")
    q.add_argument("--split", default="test", help="split to compare (all = every scene)")
    q.add_argument("--library", default="minerals+background", help="SAM library")
    q.add_argument("--max-angle", type=float, default=0.05, help="SAM: radians; worse matches are unclassified")
    q.add_argument("--min-pixels", type=int, default=10, help="SAM: fewer mineral pixels → answer none")
    q.add_argument("--out", metavar="TABLE.json", help="write the comparison JSON here")
    q.add_argument("--md", metavar="TABLE.md", help="write the table as Markdown here")
    q.set_defaults(func=run_lazy("geovl.commands.spectral:run_compare"))


# ---------------------------------------------------------------------------------------------


def _errors(fn):
    def wrapped(args):
        from geovl.cli import CLIError
        from geovl.spectral import SpectralError

        try:
            return fn(args)
        except SpectralError as e:
            raise CLIError(str(e)) from e

    return wrapped


def _open(args):
    from geovl.spectral.readers import open_cube

    return open_cube(args.cube, layout=args.layout)


def _pair(text: str, what: str) -> list[float]:
    from geovl.spectral import SpectralError
    from geovl.spectral.cube import parse_wavelengths

    vals = parse_wavelengths(text)
    if len(vals) != 2:
        raise SpectralError(f"{what} needs two values, got {text!r}")
    return vals


def _floats(text: str, what: str) -> list[float]:
    from geovl.spectral import SpectralError

    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 2:
        raise SpectralError(f"{what} needs two numbers A,B, got {text!r}")
    return vals


def _write_json(path: str, obj) -> None:
    """Write JSON to ``path`` whole or not at all (:func:`geovl.fileio.write_json`)."""
    from geovl.fileio import write_json

    write_json(path, obj, indent=1)


def _print_json(obj) -> None:
    import json

    print(json.dumps(obj, ensure_ascii=False, indent=1))


@_errors
def run_info(args) -> int:
    with _open(args) as c:
        info = {
            "path": str(c.path),
            "format": c.fmt,
            "bands": c.bands,
            "rows": c.rows,
            "cols": c.cols,
            "dtype": c.dtype.name,
            "nodata": c.nodata,
            "scale": c.scale,
            "crs": c.crs,
            "transform": list(c.transform) if c.transform else None,
            "bad_bands": int((~c.good_bands).sum()),
        }
        if c.wavelengths is not None:
            info["wavelength_range_nm"] = [float(c.wavelengths[0]), float(c.wavelengths[-1])]
        _print_json(info)
    return 0


def _load_spec(path: str) -> dict:
    import json
    from pathlib import Path

    from geovl.spectral import SpectralError

    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SpectralError(f"{path}: cannot read rendering spec ({e})") from None
    if isinstance(obj, dict) and "kind" not in obj and isinstance(obj.get("rendering"), dict):
        obj = obj["rendering"]
    return obj


@_errors
def run_render(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from geovl.spectral import render as R
    from geovl.spectral.cube import parse_wavelengths
    from geovl.spectral.readers import write_geotiff

    lo, hi = _floats(args.stretch, "--stretch")
    stretch = {"mode": "percentile", "lo": lo, "hi": hi}
    if not 0 <= lo < hi <= 100:
        from geovl.spectral import SpectralError

        raise SpectralError(f"--stretch: need 0 <= LO < HI <= 100, got {args.stretch!r}")
    if args.fixed:
        lo, hi = _floats(args.fixed, "--fixed")
        stretch = {"mode": "fixed", "min": lo, "max": hi}
    if args.spec:
        spec = R.validate(_load_spec(args.spec))
    elif args.preset:
        spec = R.preset(args.preset, stretch if (args.fixed or args.stretch != "2,98") else None)
    else:
        wl = parse_wavelengths(args.wavelengths or "640,550,470")
        spec = R.validate({"kind": "bands", "wavelengths": wl, "stretch": stretch})
    with _open(args) as cube:
        spec = R.resolve(cube, spec)
        rgb = R.render(cube, spec)
        out = Path(args.out)
        if out.suffix.lower() in (".tif", ".tiff"):
            write_geotiff(
                out,
                np.ascontiguousarray(rgb.transpose(2, 0, 1)),
                cube.crs,
                cube.transform,
                band_names=["red", "green", "blue"],
                tags={"rendering": json.dumps(spec)},
            )
        else:
            R.write_png(out, rgb)
    if args.spec_out:
        _write_json(args.spec_out, spec)
    _print_json({"out": str(out), "rendering": spec})
    return 0


@_errors
def run_depth(args) -> int:
    import json

    from geovl.spectral import render as R

    if args.shoulders:
        from geovl.spectral.cube import parse_wavelength

        left, right = _pair(args.shoulders, "--shoulders")
        feat = R.feature(
            {"name": f"custom_{args.feature}", "left": left, "centre": parse_wavelength(args.feature), "right": right}
        )
    else:
        feat = R.feature(args.feature)
    with _open(args) as cube:
        R.write_map(
            cube,
            lambda c, w: R.band_depth(c, feat, w, args.mode)[None],
            args.out,
            [f"band depth {feat['name']} {feat['centre']:g} nm"],
            rows=args.rows,
            progress=not args.no_progress,
            tags={"feature": json.dumps(feat), "continuum": "straight line between shoulders", "mode": args.mode},
        )
    _print_json({"out": args.out, "feature": feat, "mode": args.mode})
    return 0


@_errors
def run_index(args) -> int:
    import json

    from geovl.spectral import render as R

    if args.name:
        if args.name not in R.INDICES:
            from geovl.spectral import SpectralError

            raise SpectralError(f"unknown index {args.name!r}: choose from {', '.join(R.INDICES)}")
        ix = dict(R.INDICES[args.name])
    else:
        a, b = _pair(args.nd or args.ratio, "--nd/--ratio")
        ix = {"name": "custom", "op": "nd" if args.nd else "ratio", "a": a, "b": b}
    with _open(args) as cube:
        R.write_map(
            cube,
            lambda c, w: R.band_index_map(c, ix, w)[None],
            args.out,
            [f"index {ix['name']}"],
            rows=args.rows,
            progress=not args.no_progress,
            tags={"index": json.dumps(ix)},
        )
    _print_json({"out": args.out, "index": ix})
    return 0


@_errors
def run_synth(args) -> int:
    import sys

    from geovl.spectral.synth_write import synthesize

    summary = synthesize(
        args.out,
        args.scenes,
        sensor=args.sensor,
        size=args.size,
        seed=args.seed,
        split=args.split,
        rendering=args.rendering,
        formats=args.formats,
        langs=args.lang,
        noise=args.noise,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(
        f"wrote {summary['samples']} samples from {args.scenes} scenes to {summary['out_dir']}\n"
        f"已写入 {summary['samples']} 条样本，共 {args.scenes} 个场景：{summary['out_dir']}",
        file=sys.stderr,
    )
    _print_json(summary)
    return 0


@_errors
def run_map(args) -> int:
    from geovl.spectral.library import named_library
    from geovl.spectral.sam import sam_map

    lib = named_library(args.library)
    with _open(args) as cube:
        summary = sam_map(
            cube,
            lib,
            args.out,
            max_angle=args.max_angle,
            rows=args.rows,
            budget_mb=args.budget_mb,
            progress=not args.no_progress,
        )
    _print_json(summary)
    return 0


@_errors
def run_evaluate_sam(args) -> int:
    from geovl.spectral.sam import evaluate_sam, format_evaluation

    ev = evaluate_sam(
        args.dir, split=args.split, library=args.library, max_angle=args.max_angle, min_pixels=args.min_pixels
    )
    print(format_evaluation(ev))
    if args.out:
        _write_json(args.out, ev)
    return 0


@_errors
def run_vlm_map(args) -> int:
    from geovl.cli import CLIError
    from geovl.imagery.decode import ImageError
    from geovl.inference.engine import EngineError, LocalEngine
    from geovl.spectral.vlm_map import (
        check_grid_options,
        output_paths,
        probability_question,
        require_matching_bands,
        saved_projector,
        vlm_map,
    )

    check_grid_options(args.tile, args.overlap)  # option, model and cube errors before the model is loaded
    output_paths(args.out, args.png)
    probability_question(args.lang)
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise CLIError("--batch-size and --max-new-tokens must be >= 1")
    with _open(args) as cube:
        require_matching_bands(saved_projector(args.model, args.adapter), cube)
        try:
            engine = LocalEngine(args.model, adapter=args.adapter, device=args.device, batch_size=args.batch_size)
        except EngineError as e:
            raise CLIError(str(e)) from e
        try:
            summary = vlm_map(
                cube,
                engine,
                args.out,
                png=args.png,
                tile=args.tile,
                overlap=args.overlap,
                lang=args.lang,
                blend=args.blend,
                max_new_tokens=args.max_new_tokens,
                progress=not args.no_progress,
                meta={"model": args.model, "adapter": args.adapter},
                resume=args.resume,
            )
        except (EngineError, ImageError) as e:
            raise CLIError(f"{args.cube}: {e}") from e
        finally:
            engine.close()
    _print_json(summary)
    return 0


@_errors
def run_compare(args) -> int:
    from geovl.spectral.compare import compare, format_table, markdown_table, write_text

    result = compare(
        args.dir,
        args.predictions,
        split=args.split,
        library=args.library,
        max_angle=args.max_angle,
        min_pixels=args.min_pixels,
    )
    print(format_table(result))
    if args.out:
        _write_json(args.out, result)
    if args.md:
        write_text(args.md, markdown_table(result))
    return 0
