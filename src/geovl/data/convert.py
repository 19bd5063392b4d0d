"""``geovl data convert``: published dataset formats -> the one sample schema (Parquet/JSONL).

The driver is format-agnostic. An adapter (:mod:`geovl.data.adapters`) is a module with a
generator ``iter_records(opts) -> Iterator[(source, sample_or_error)]`` that yields ONE item
per INPUT record: a sample dict, or an exception carrying ``reason``/``detail``
(:class:`SampleError`, :class:`ImageError`). The driver counts every item (``read_one``) and
writes or rejects it, so ``written + rejected == read`` always holds. Fatal problems with a
whole file raise :class:`ConvertError` naming the file.

Outputs: ``OUT`` (or ``OUT.<split>.<ext>`` with ``--split``), ``OUT.rejects.jsonl`` (one line
per rejected record: source, reason, detail) and ``OUT.summary.json``.
"""

from __future__ import annotations

import importlib
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import GeoVLError

ADAPTERS = {
    "rsvqa": "geovl.data.adapters.rsvqa",
    "llava": "geovl.data.adapters.llava",
    "csv": "geovl.data.adapters.csv_table",
    "messages": "geovl.data.adapters.messages",
    "coco": "geovl.data.adapters.coco",
    "dior-rsvg": "geovl.data.adapters.dior_rsvg",
}


class ConvertError(GeoVLError):
    """A fatal conversion problem (bad file, bad option). The message names the file."""


@dataclass
class ConvertOptions:
    """Everything an adapter may read. Built from CLI args by ``geovl.commands.data_convert.options_from_args``."""

    fmt: str
    input: Path
    output: Path
    split_prefix: str | None = None
    images_root: Path | None = None
    split: str | None = None
    seed: int = 0
    preset: str | None = None
    mapping: Path | None = None
    bin_counts: bool = False
    max_pixels: int | None = None
    question: str | None = None
    limit: int | None = None
    progress: bool = True
    classes: str | None = None  # coco: category names to keep
    boxes: str | None = None  # llava: the scale of box numbers in the text (0-1, 0-100, 0-1000)
    bands: str | None = None  # --bands: "3,2,1" or "blue,green,red,nir" (geovl.imagery.render)
    keep_nodata: bool = False  # keep images with no valid pixel (rejected as all_nodata by default)
    renders: dict = field(default_factory=dict)  # filled while converting: band order used -> images
    qtype_inferred: int = 0  # filled while converting: written samples whose qtype was inferred

    @property
    def render(self):
        from ..imagery.render import RenderError, parse_bands

        try:
            return parse_bands(self.bands)
        except RenderError as e:
            raise ConvertError(str(e)) from None

    @property
    def pixel_limit(self) -> int:
        from ..imagery.decode import DEFAULT_MAX_PIXELS

        return int(self.max_pixels) if self.max_pixels else DEFAULT_MAX_PIXELS


class ImageCache:
    """Decode each image file once; keep the last ``size`` results (bytes or the error).

    Adapters whose records share images (RSVQA: ~100 questions per image, grouped) decode an
    image once and reuse its bytes while memory stays bounded by ``size`` images.
    """

    def __init__(self, max_pixels: int, size: int = 8, opts: "ConvertOptions | None" = None):
        from collections import OrderedDict

        self.max_pixels = max_pixels
        self.opts = opts
        self.render = opts.render if opts is not None else None
        self.size = size
        self._d: "OrderedDict[str, Any]" = OrderedDict()
        self.decoded = 0  # number of actual decodes (for tests and stats)

    def load(self, path: str | Path):
        """``LoadedImage`` for ``path``; raises the (cached) ``ImageError`` if it cannot be used."""
        from ..imagery.decode import ImageError, load_image

        key = str(path)
        hit = self._d.get(key)
        if hit is None:
            try:
                hit = load_image(path, self.max_pixels, render=self.render)
                self._check_rendered(hit, path)
            except ImageError as e:
                hit = e
            self.decoded += 1
            self._d[key] = hit
            if len(self._d) > self.size:
                self._d.popitem(last=False)
        else:
            self._d.move_to_end(key)
        if isinstance(hit, ImageError):
            raise ImageError(hit.reason, hit.detail)  # a fresh exception: no traceback build-up
        return hit

    def _check_rendered(self, img, path) -> None:
        """An image with no valid pixel is rejected (``all_nodata``) unless ``--keep-nodata``; the band
        order each raster was rendered with is counted for the summary."""
        check_rendered(img, path, self.opts)


class VideoCache:
    """Check each video file once (headers, then the sampled frames decode: :func:`geovl.imagery.video.read_frames`)
    and keep the bytes (or the error) of the last ``size`` files; records that share a video read it once."""

    def __init__(self, settings=None, size: int = 4):
        from collections import OrderedDict

        from ..imagery.video import VideoSettings

        self.settings = settings or VideoSettings()
        self.size = size
        self._d: "OrderedDict[str, Any]" = OrderedDict()
        self.decoded = 0

    def load(self, path: Path) -> bytes:
        """The bytes of the video at ``path``; raises :class:`~geovl.imagery.video.VideoError` (or
        :class:`~geovl.data.schema.SampleError` ``missing_video``) when it cannot be used."""
        from ..imagery.video import VideoError, read_frames
        from .schema import SampleError

        key = str(path)
        hit = self._d.get(key)
        if hit is None:
            try:
                if not Path(path).is_file():
                    raise SampleError("missing_video", f"{path}: no such video file")
                read_frames(path, self.settings)  # every check, and the sampled frames decode
                hit = Path(path).read_bytes()
            except (VideoError, SampleError) as e:
                hit = e
            self.decoded += 1
            self._d[key] = hit
            if len(self._d) > self.size:
                self._d.popitem(last=False)
        else:
            self._d.move_to_end(key)
        if isinstance(hit, Exception):
            raise type(hit)(hit.reason, hit.detail)  # a fresh exception: no traceback build-up
        return hit

    def check_bytes(self, data: bytes) -> bytes:
        """``data`` after the same checks (an embedded video: base64 or a data URI)."""
        from ..imagery.video import read_frames

        read_frames(data, self.settings)
        self.decoded += 1
        return data


def check_rendered(img, name, opts: "ConvertOptions | None") -> None:
    if "band_order" not in img.meta:
        return
    if opts is not None:
        opts.renders[img.meta["band_order"]] = opts.renders.get(img.meta["band_order"], 0) + 1
    if img.meta.get("valid_fraction", 1.0) == 0.0 and not (opts is not None and opts.keep_nodata):
        from ..imagery.decode import ImageError

        raise ImageError("all_nodata", f"{name}: every pixel is nodata/fill (keep such images with --keep-nodata)")


def summary_path_for(out: Path) -> Path:
    stem = out.name.rsplit(".", 1)[0]
    return out.with_name(stem + ".summary.json")


def check_options(o: ConvertOptions) -> None:
    if o.fmt not in ADAPTERS:
        raise ConvertError(f"unknown --from {o.fmt!r}; choose one of {sorted(ADAPTERS)}")
    if not o.input.exists():
        raise ConvertError(f"{o.input}: input does not exist")
    if o.output.suffix not in (".parquet", ".jsonl"):
        raise ConvertError(f"{o.output}: output must end in .parquet (canonical) or .jsonl")
    if o.output.resolve() == o.input.resolve():
        raise ConvertError(f"{o.output}: output would overwrite the input")
    if o.images_root is not None and not o.images_root.is_dir():
        raise ConvertError(f"{o.images_root}: --images-root is not a folder")
    if o.max_pixels is not None and int(o.max_pixels) <= 0:
        raise ConvertError(f"--max-pixels must be positive, got {o.max_pixels}")
    if o.limit is not None and int(o.limit) < 0:
        raise ConvertError(f"--limit must be >= 0, got {o.limit}")
    if o.fmt != "csv" and (o.preset or o.mapping):
        raise ConvertError("--preset/--mapping apply only to --from csv")
    if o.fmt != "csv" and o.question:
        raise ConvertError("--question applies only to --from csv (it replaces the preset's fixed question)")
    if o.fmt != "rsvqa" and (o.split_prefix or o.bin_counts):
        raise ConvertError("--split-prefix/--bin-counts apply only to --from rsvqa")
    if o.fmt != "coco" and o.classes:
        raise ConvertError("--classes applies only to --from coco")
    if o.boxes is not None:
        from .adapters.norm_boxes import SCALES

        if o.fmt != "llava":
            raise ConvertError("--boxes applies only to --from llava (the scale of box numbers in the text)")
        if o.boxes not in SCALES:
            raise ConvertError(f"--boxes {o.boxes!r}: choose one of {', '.join(SCALES)}")
    if o.preset and o.mapping:
        raise ConvertError("give either --preset or --mapping, not both")


def _make_sink(o: ConvertOptions):
    from .io import DatasetWriter
    from .split import SplitWriter, parse_split_spec

    if o.split:
        try:
            spec = parse_split_spec(o.split)
        except ValueError as e:
            raise ConvertError(f"--split {o.split!r}: {e}") from None
        return SplitWriter(o.output, spec, o.seed)
    return DatasetWriter(o.output)


def convert(opts: ConvertOptions, log: Callable[[str], None] | None = None) -> dict:
    """Run one conversion; returns the summary dict (also written to ``OUT.summary.json``)."""
    check_options(opts)
    adapter = importlib.import_module(ADAPTERS[opts.fmt])
    gen: Iterator = adapter.iter_records(opts)
    try:
        return _convert(opts, gen, log)
    finally:
        gen.close()  # release the adapter's open files, also after an error


def _convert(opts: ConvertOptions, gen: Iterator, log) -> dict:
    from .io import write_text_atomic

    records: Iterator = gen
    t0 = time.perf_counter()
    limit = int(opts.limit) if opts.limit is not None else None
    # Start the adapter before creating any output: file-level problems (missing split file,
    # missing column, unknown preset) surface here, before OUT.*.partial files exist.
    first = next(records, None) if limit != 0 else None
    if first is not None:
        records = itertools.chain([first], records)
    else:
        records = iter(())
    try:
        sink = _make_sink(opts)
        _pump(sink, records, limit, opts)  # on any error the sink removes its partial files
        seconds = time.perf_counter() - t0
        counts = sink.counts
        summary = {
            "from": opts.fmt,
            "input": str(opts.input),
            **counts.as_dict(),
            "outputs": _outputs(sink, opts),
            "rejects": str(sink.rejects_path),
            "seconds": round(seconds, 3),
            "records_per_second": round(counts.read / seconds, 1) if seconds > 0 else None,
        }
    except OSError as e:  # a full disk, a read-only or missing folder: one line naming the file, no traceback
        raise ConvertError(os_error_message(e, opts.output) + "; nothing was written (partial files removed)") from None
    if opts.split:
        summary["split"] = {"spec": opts.split, "seed": opts.seed, "by": "image"}
    if opts.qtype_inferred:
        summary["qtype_inferred"] = opts.qtype_inferred
    if opts.renders:
        summary["render"] = {"settings": opts.render.to_json(), "band_orders": dict(opts.renders)}
    spath = summary_path_for(opts.output)
    try:
        write_text_atomic(spath, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    except OSError as e:
        raise ConvertError(
            os_error_message(e, spath) + f"; the {counts.written} samples were written, only the summary is missing"
        ) from None
    summary["summary"] = str(spath)
    if log:
        log(format_summary(summary))
        for how, n in opts.renders.items():
            log(f"rasters rendered with {how}: {n} image(s) / 栅格渲染波段: {how}")
    return summary


def _pump(sink, records, limit, opts: ConvertOptions) -> None:
    from tqdm import tqdm

    with sink:
        bar = tqdm(
            total=limit,
            unit="rec",
            desc=f"convert {opts.fmt}",
            file=sys.stderr,
            disable=not opts.progress,
            dynamic_ncols=True,
        )
        try:
            for source, item in itertools.islice(records, limit):
                sink.read_one()
                if isinstance(item, dict):
                    if sink.write(item) and (item.get("meta") or {}).get("qtype_inferred"):
                        opts.qtype_inferred += 1  # chat-form records without a qtype (adapters.messages)
                else:
                    sink.reject(source, getattr(item, "reason", "bad_record"), getattr(item, "detail", "") or str(item))
                bar.update(1)
        finally:
            bar.close()


def os_error_message(e: OSError, default: Path) -> str:
    """``FILE: what went wrong`` for an operating-system error while converting (the file it names, else ``default``)."""
    import errno as errno_

    name = e.filename or default
    what = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]
    code = e.errno if e.errno is not None else errno_.ENOSPC if "No space left" in str(e) else None  # pyarrow's errors
    hint = {
        errno_.ENOSPC: "the disk is full; free space and run again",
        errno_.EROFS: "the folder is on a read-only file system; choose another --output",
        errno_.EACCES: "no permission to write there; choose another --output",
        errno_.ENAMETOOLONG: "a file name is too long",
    }.get(code)
    return f"{name}: {what}" + (f" ({hint})" if hint else "")


def _outputs(sink, opts: ConvertOptions) -> dict:
    if opts.split:
        return {name: {"path": str(sink.paths[name]), "written": sink.written_by_split[name]} for name in sink.paths}
    return {"all": {"path": str(opts.output), "written": sink.counts.written}}


def format_summary(s: dict) -> str:
    lines = [f"geovl data convert --from {s['from']}: {s['input']}"]
    lines.append(f"  read      读取   {s['read']:>9}")
    lines.append(f"  written   写入   {s['written']:>9}")
    for name, o in s["outputs"].items():
        label = "" if name == "all" else f" [{name}]"
        lines.append(f"    {o['written']:>9}{label} -> {o['path']}")
    lines.append(f"  rejected  拒绝   {s['rejected']:>9}" + (f" -> {s['rejects']}" if s["rejected"] else ""))
    for reason, n in s["rejected_by_reason"].items():
        lines.append(f"    {reason:<22}{n:>9}")
    ok = s["conserved"]
    lines.append(f"  conserved: {'yes' if ok else 'NO'}   守恒：{'是' if ok else '否'}   (written + rejected = read)")
    if s.get("qtype_inferred"):
        lines.append(
            f"  qtype inferred 推断题型 {s['qtype_inferred']:>5}  (from the question: yes_no / count / area / open; "
            'give "qtype" to set it)'
        )
    rate = s.get("records_per_second")
    lines.append(f"  time {s['seconds']:.1f} s" + (f", {rate:g} records/s" if rate else ""))
    return "\n".join(lines)
