"""Benchmark `geovl data convert`: throughput and peak memory for N and 10N records.

Generates a LLaVA/ShareGPT JSONL file and the same records as one JSON list (the MMDU-45k
layout: ``id``, ``image`` list, multi-turn ``conversations`` with ``<image>`` tags) with a
distinct small PNG per image, then converts N and 10N records of each to Parquet, each run in its
own subprocess (``python -m geovl data convert``), in rounds interleaved (jsonl N, jsonl 10N, json
list N, json list 10N; ≥ 3 rounds). This is a scaling check, not a race against another tool: the
"baseline" is the same converter on a tenth of the records. Peak RSS is the child's own
``ru_maxrss`` (``os.wait4``); records/s comes from the conversion's summary (interpreter start-up
excluded). Streaming means the 10N run's peak RSS stays close to the N run's; the 10N/N ratios are
taken per round and reported as median (min–max).

    python bench/bench_convert.py [--quick] [--n 1500] [--repeats 3]   # --quick: N = 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from abtest import MIN_REPEATS, SideFailed, exact_same, finish, fmt_ratio, interleave, quick_from_env, ratio, spread

ROOT = Path(__file__).resolve().parents[1]


def make_llava(folder: Path, n: int, size: int = 48) -> Path:
    """n records: 2/3 single-image one-turn, 1/3 two-image two-turn; every image distinct
    (a gradient plus sensor-like noise, so PNGs do not compress to nothing: ~5 KB each)."""
    rng = np.random.default_rng(0)
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    path = folder / "data.jsonl"
    k = 0
    with open(path, "w", encoding="utf-8") as f, open(folder / "data.json", "w", encoding="utf-8") as fl:
        fl.write("[\n")
        for i in range(n):
            n_img = 2 if i % 3 == 0 else 1
            names = []
            for _ in range(n_img):
                arr = np.stack([(xx * 3 + k) % 256, (yy * 5 + 7 * k) % 256, ((xx + yy) * 2 + 13 * k) % 256], -1)
                arr = (arr + rng.integers(0, 24, arr.shape)) % 256
                name = f"{k:07d}.png"
                Image.fromarray(arr.astype(np.uint8)).save(img_dir / name, compress_level=1)
                names.append(f"images/{name}")
                k += 1
            if n_img == 2:
                conv = [
                    {"from": "human", "value": "<image>\n<image>\nCompare the two scenes."},
                    {"from": "gpt", "value": f"The second one is brighter ({i})."},
                    {"from": "human", "value": "Which has more water?"},
                    {"from": "gpt", "value": "The first."},
                ]
            else:
                conv = [
                    {"from": "human", "value": "<image>\n这张影像里有水体吗？"},
                    {"from": "gpt", "value": "有" if i % 2 else "没有"},
                ]
            line = json.dumps({"id": f"r{i}", "image": names, "conversations": conv}, ensure_ascii=False)
            f.write(line + "\n")
            fl.write(("  " if i == 0 else ", ") + line + "\n")  # the same records as one JSON list
        fl.write("]\n")
    return path


def run_convert(src: Path, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "geovl",
        "data",
        "convert",
        "--from",
        "llava",
        "--input",
        str(src),
        "--output",
        str(out),
        "--no-progress",
    ]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = p.stdout.read().decode(), p.stderr.read().decode()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SideFailed(src.name, f"convert exited with {p.returncode}:\n{stdout[-1000:]}\n{stderr[-3000:]}")
    summary = json.loads(out.with_name(out.stem + ".summary.json").read_text())
    if not summary["conserved"] or summary["rejected"]:
        raise SideFailed(src.name, f"unexpected rejects / counts: {summary}")
    return {
        "records": summary["read"],
        "written": summary["written"],
        "convert_seconds": summary["seconds"],
        "wall_seconds_incl_startup": round(wall, 3),
        "records_per_second": round(summary["read"] / summary["seconds"], 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "output_mb": round(out.stat().st_size / 2**20, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", default=quick_from_env())
    ap.add_argument("--n", type=int, help="N records (default 1500; 500 with --quick)")
    ap.add_argument("--repeats", type=int, default=MIN_REPEATS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "convert.json")
    args = ap.parse_args()
    n = args.n or (500 if args.quick else 1500)

    def body(env: dict) -> dict:
        gen = {}
        with tempfile.TemporaryDirectory(prefix="geovl-bench-convert-") as tmp:
            srcs = {}
            for label, k in (("N", n), ("10N", 10 * n)):
                folder = Path(tmp) / label
                tg = time.perf_counter()
                src = make_llava(folder, k)
                gen[label] = round(time.perf_counter() - tg, 2)
                srcs[f"jsonl:{label}"] = (src, folder / "out_jsonl.parquet")
                srcs[f"json_list:{label}"] = (src.with_suffix(".json"), folder / "out_json_list.parquet")
            order = ["jsonl:N", "jsonl:10N", "json_list:N", "json_list:10N"]
            runs = interleave({key: (lambda i, key=key: run_convert(*srcs[key])) for key in order}, args.repeats)
        for key, rs in runs.items():
            if not exact_same(rs, "written"):
                raise RuntimeError(f"{key}: written counts differ between rounds: {[r['written'] for r in rs]}")
        ratios = {}
        for kind in ("jsonl", "json_list"):
            a, b = runs[f"{kind}:N"], runs[f"{kind}:10N"]
            ratios[f"{kind}_peak_rss_10N_over_N"] = ratio(
                b, a, "peak_rss_mb", f"{kind}: peak RSS of 10N records over N, per round"
            )
            ratios[f"{kind}_records_per_s_10N_over_N"] = ratio(
                b, a, "records_per_second", f"{kind}: records/s at 10N over N, per round"
            )
        summary = {key: {k: spread([r[k] for r in rs], 1) for k in ("records_per_second", "peak_rss_mb", "convert_seconds")}
                   for key, rs in runs.items()}  # fmt: skip
        j = summary
        return {
            "what": "geovl data convert --from llava (JSONL and the same records as a JSON list; distinct noisy 48x48 PNG per "
            "image, 1/3 two-image two-turn), N vs 10N records",
            "size": "quick" if args.quick else "full",
            "repeats": args.repeats,
            "order": ", ".join(order) + " in rounds",
            "settings": {
                "shared": {
                    "n": n,
                    "records_10n": 10 * n,
                    "generate_seconds": gen,
                    "command": "python -m geovl data convert --from llava --input F --output O --no-progress",
                }
            },
            "counts": {
                key: {"records": rs[0]["records"], "written": rs[0]["written"], "output_mb": rs[0]["output_mb"]}
                for key, rs in runs.items()
            },
            "summary": summary,
            "ratios": ratios,
            "behind": None,
            "runs": runs,
            "table": {
                "name": "convert (`bench_convert.py`)",
                "baseline": "the same converter on N = {:,} records (10N = {:,}); a scaling check, no other tool".format(
                    n, 10 * n
                ),
                "counts": f"peak RSS JSONL {j['jsonl:N']['peak_rss_mb']['median']:.0f} → {j['jsonl:10N']['peak_rss_mb']['median']:.0f} MB, "
                f"JSON list {j['json_list:N']['peak_rss_mb']['median']:.0f} → {j['json_list:10N']['peak_rss_mb']['median']:.0f} MB; "
                f"all records written, 0 rejects",
                "ratios": [
                    ["peak RSS 10N/N (JSONL)", "jsonl_peak_rss_10N_over_N"],
                    ["peak RSS 10N/N (JSON list)", "json_list_peak_rss_10N_over_N"],
                ],
            },  # fmt: skip
        }

    rc = finish(args.out, body, "convert")
    if rc == 0:
        r = json.loads(args.out.read_text())
        for k, v in r["ratios"].items():
            print(f"{k}: {fmt_ratio(v)}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
