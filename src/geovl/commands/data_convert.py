"""``geovl data convert``: published dataset formats -> the geovl sample schema."""

from __future__ import annotations

import argparse
from typing import Any

from ..cli import run_lazy

EPILOG = """\
examples / 示例:
  geovl data convert --from rsvqa --input RSVQA_LR --split-prefix LR_split_test --output lr_test.parquet
  geovl data convert --from rsvqa --input HR --split-prefix USGS_split_test_phili --bin-counts --output hr2.parquet
  geovl data convert --from llava --input mmdu45k.json --images-root images --output mmdu.parquet \\
      --split train=0.95,test=0.05 --seed 0
  geovl data convert --from csv --preset building-defect --input defects.csv --output defects.parquet
  geovl data convert --from csv --mapping my_table.yaml --input table.csv --output table.jsonl
  geovl data convert --from messages --input samples.jsonl --output samples.parquet

Every input record is written or listed in OUT.rejects.jsonl with its reason; the counts are
printed and saved to OUT.summary.json. 每条输入记录要么写出，要么连同原因记入 OUT.rejects.jsonl。
"""


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert RSVQA / LLaVA / CSV / messages-JSONL into one dataset file (Parquet or JSONL)",
        description="Convert a published dataset format into the geovl sample schema. "
        "将公开数据集格式转换为 geovl 统一样本格式。",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from",
        dest="from_",
        required=True,
        choices=["rsvqa", "llava", "csv", "messages", "coco", "dior-rsvg"],
        help="input format",
    )
    p.add_argument(
        "--input",
        required=True,
        metavar="PATH",
        help="rsvqa: folder with the split JSONs; llava: .json/.jsonl; csv: table; messages: .jsonl; "
        "coco: instances .json; dior-rsvg: folder with Annotations/ and JPEGImages/",
    )
    p.add_argument("--output", required=True, metavar="OUT", help="OUT.parquet (canonical) or OUT.jsonl")
    p.add_argument(
        "--split-prefix",
        metavar="P",
        help="rsvqa: split file prefix, e.g. LR_split_test, USGS_split_test_phili (auto if only one)",
    )
    p.add_argument(
        "--images-root", metavar="DIR", help="folder image paths are relative to (default: the input's folder)"
    )
    p.add_argument("--split", metavar="SPEC", help="split by image into OUT.<name>.<ext>, e.g. train=0.9,test=0.1")
    p.add_argument("--seed", type=int, default=0, help="seed for --split (default 0)")
    p.add_argument("--preset", metavar="NAME", help="csv: building-defect | image-question-answer")
    p.add_argument("--mapping", metavar="FILE.yaml", help="csv: your own column mapping (see the presets)")
    p.add_argument(
        "--bin-counts",
        action="store_true",
        help="rsvqa: map counts/areas to bins '0', 'between 1 and 10', ... 'more than 1000'",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="reject images with more pixels than N (checked before decoding; default 64e6)",
    )
    p.add_argument("--question", metavar="TEXT", help="csv: fixed question text (replaces the mapping's)")
    p.add_argument(
        "--classes",
        metavar="A,B",
        help="coco: category names to keep (default all); one 'locate every X' sample per image and class",
    )
    p.add_argument(
        "--boxes",
        choices=["0-1", "0-100", "0-1000"],
        help="llava: the scale of box numbers in the answers (required to convert boxes; never guessed)",
    )
    p.add_argument(
        "--bands",
        metavar="SPEC",
        help="raster bands shown as R,G,B: 1-based numbers (3,2,1) or the file's band "
        "names in order (blue,green,red,nir); default: band descriptions / colour interpretation, else "
        "blue,green,red,nir for 4+ bands, else bands 1-3 (see geovl.imagery.render). Record the same setting "
        "in the model's geovl_preprocess.json (rgb_bands / band_order) so serving renders alike",
    )
    p.add_argument(
        "--keep-nodata",
        action="store_true",
        help="keep images whose every pixel is nodata/fill (default: rejected with reason all_nodata)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="convert only the first N input records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_lazy("geovl.commands.data_convert:run"))


def options_from_args(args: Any):
    """The :class:`~geovl.data.convert.ConvertOptions` of ``geovl data convert``'s arguments."""
    from pathlib import Path

    from geovl.data.convert import ConvertOptions

    g = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    return ConvertOptions(
        fmt=g("from_") or g("fmt"),
        input=Path(g("input")),
        output=Path(g("output")),
        split_prefix=g("split_prefix"),
        images_root=Path(g("images_root")) if g("images_root") else None,
        split=g("split"),
        seed=int(g("seed", 0) or 0),
        preset=g("preset"),
        mapping=Path(g("mapping")) if g("mapping") else None,
        bin_counts=bool(g("bin_counts", False)),
        max_pixels=g("max_pixels"),
        question=g("question"),
        limit=g("limit"),
        progress=not g("no_progress", False),
        classes=g("classes"),
        boxes=g("boxes"),
        bands=g("bands"),
        keep_nodata=bool(g("keep_nodata", False)),
    )


def run(args) -> int:
    import sys
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from geovl.data.convert import convert

    opts = options_from_args(args)
    with warnings.catch_warnings():
        # RSVQA and many plain TIFFs carry no geotransform: expected, not worth a warning per run.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        summary = convert(opts, log=print)
    if not summary["conserved"]:  # pragma: no cover - a bug, never expected
        print("geovl: error: counts do not conserve (written + rejected != read)", file=sys.stderr)
        return 1
    if summary["read"] > 0 and summary["written"] == 0:
        top = max(summary["rejected_by_reason"].items(), key=lambda kv: kv[1])[0]
        print(
            f"geovl: error: no record was written (all {summary['read']} rejected, mostly {top!r}); "
            f"see {summary['rejects']}",
            file=sys.stderr,
        )
        return 1
    return 0
