"""Benchmark `geovl data convert`: throughput and peak memory for N and 10N records.

Generates a LLaVA/ShareGPT JSONL file and the same records as one JSON list (the MMDU-45k
layout: ``id``, ``image`` list, multi-turn ``conversations`` with ``<image>`` tags) with a
distinct small PNG per image, then converts N and 10N records of each to Parquet, each in its
own subprocess (``python -m geovl data convert``). Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``); records/s comes from the
conversion's summary (interpreter start-up excluded). Streaming means the 10N run's peak RSS
stays close to the N run's.

    python bench/bench_convert.py [--n 1500] [--out bench/results/convert.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

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
                conv = [{"from": "human", "value": "<image>\n<image>\nCompare the two scenes."},
                        {"from": "gpt", "value": f"The second one is brighter ({i})."},
                        {"from": "human", "value": "Which has more water?"},
                        {"from": "gpt", "value": "The first."}]
            else:
                conv = [{"from": "human", "value": "<image>\n这张影像里有水体吗？"},
                        {"from": "gpt", "value": "有" if i % 2 else "没有"}]
            line = json.dumps({"id": f"r{i}", "image": names, "conversations": conv}, ensure_ascii=False)
            f.write(line + "\n")
            fl.write(("  " if i == 0 else ", ") + line + "\n")  # the same records as one JSON list
        fl.write("]\n")
    return path


def run_convert(src: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "geovl", "data", "convert", "--from", "llava", "--input", str(src),
           "--output", str(out), "--no-progress"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = p.stdout.read().decode(), p.stderr.read().decode()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"convert failed ({p.returncode}):\n{stdout}\n{stderr}")
    summary = json.loads(out.with_name(out.stem + ".summary.json").read_text())
    if not summary["conserved"] or summary["rejected"]:
        raise SystemExit(f"unexpected rejects / counts: {summary}")
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
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "convert.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="geovl-bench-convert-") as tmp:
        for label, n in (("N", args.n), ("10N", 10 * args.n)):
            folder = Path(tmp) / label
            tg = time.perf_counter()
            src = make_llava(folder, n)
            gen = time.perf_counter() - tg
            for kind, path in (("jsonl", src), ("json_list", src.with_suffix(".json"))):
                key = f"{kind}:{label}"
                rows[key] = {"n": n, "input": kind, "generate_seconds": round(gen, 2),
                             **run_convert(path, folder / f"out_{kind}.parquet")}
                print(f"{key}: {rows[key]}", file=sys.stderr, flush=True)
    ratios = {}
    for kind in ("jsonl", "json_list"):
        a, b = rows[f"{kind}:N"], rows[f"{kind}:10N"]
        ratios[kind] = {
            "records": round(b["records"] / a["records"], 2),
            "peak_rss": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
            "records_per_second": round(b["records_per_second"] / a["records_per_second"], 3),
        }
    result = {
        "benchmark": "geovl data convert --from llava (JSONL and the same records as a JSON list; distinct noisy 48x48 PNG per image, 1/3 two-image two-turn)",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "runs": rows,
        "ratios_10N_over_N": ratios,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "note": "Wall times on shared 2-core machines vary run to run; compare the ratios of one run.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'input':<16}{'records':>9}{'rec/s':>10}{'peak RSS MB':>13}{'convert s':>11}{'output MB':>11}")
    for kind in ("jsonl", "json_list"):
        for label in ("N", "10N"):
            r = rows[f"{kind}:{label}"]
            print(f"{kind + ' ' + label:<16}{r['records']:>9}{r['records_per_second']:>10}{r['peak_rss_mb']:>13}"
                  f"{r['convert_seconds']:>11}{r['output_mb']:>11}")
        rt = ratios[kind]
        print(f"{kind + ' 10N/N':<16}{rt['records']:>9}{rt['records_per_second']:>10}{rt['peak_rss']:>13}")
    print(f"wrote {args.out} ({result['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
