"""Benchmark `geovl measure` on large rasters: peak memory and pixels/s at two sizes (issue 15).

Writes, in a temporary folder, a single-band uint8 land-cover class raster (WorldCover codes, a
block pattern with nodata; tiled, deflate) and a 4-band uint16 blue/green/red/NIR image (tiled,
deflate, predictor 2) — both written strip by strip, so generating them needs little memory — and
runs ``geovl measure FILE --json`` on each in its own subprocess. Peak RSS is the child's own
``VmHWM`` (``/proc/self/status`` at exit); pixels/s = pixels / wall seconds of the child (start-up included).
Two sizes per kind (the large one and a quarter of its pixels) show whether time is linear in
pixels and memory flat. Goal (issue 15): peak RSS ≤ 1.5 GB on 36000² classes and 20000² × 4 bands.

    python bench/bench_measure.py            # 36000² / 18000² classes, 20000² / 10000² image
    QUICK=1 python bench/bench_measure.py    # 6000² / 3000² classes, 4000² / 2000² image
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

ROOT = Path(__file__).resolve().parents[1]
WORLDCOVER = np.array([10, 20, 30, 40, 50, 60, 80, 90], np.uint8)
SIG = np.array(
    [  # blue, green, red, NIR DN (reflectance × 10000) per pattern class
        [400, 600, 300, 3500],
        [300, 500, 250, 4500],
        [700, 800, 900, 2000],
        [900, 1000, 1100, 1300],
        [600, 500, 400, 100],
        [1200, 1300, 1400, 1600],
    ],
    np.uint16,
)
GOAL_MB = 1536


def _strips(h: int, rows: int = 512):
    for r0 in range(0, h, rows):
        yield r0, min(h, r0 + rows)


def write_classes(path: Path, n: int) -> None:
    prof = {
        "driver": "GTiff",
        "width": n,
        "height": n,
        "count": 1,
        "dtype": "uint8",
        "nodata": 0,
        "crs": "EPSG:32650",
        "transform": Affine(10.0, 0, 300_000, 0, -10.0, 5_000_000),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    cols = np.arange(n)
    with rasterio.open(path, "w", **prof) as dst:
        for r0, r1 in _strips(n):
            rr = np.arange(r0, r1)[:, None]
            k = (rr // 97 + cols[None] // 131 + (rr * cols[None]) // 50_000) % 9
            data = np.where(k == 8, 0, WORLDCOVER[k % 8]).astype(np.uint8)  # class 8 of 9 = nodata
            dst.write(data[None], window=rasterio.windows.Window(0, r0, n, r1 - r0))


def write_image(path: Path, n: int) -> None:
    prof = {
        "driver": "GTiff",
        "width": n,
        "height": n,
        "count": 4,
        "dtype": "uint16",
        "nodata": None,
        "crs": "EPSG:32650",
        "transform": Affine(10.0, 0, 300_000, 0, -10.0, 5_000_000),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "predictor": 2,
        "BIGTIFF": "IF_SAFER",
    }
    cols = np.arange(n)
    with rasterio.open(path, "w", **prof) as dst:
        for r0, r1 in _strips(n):
            rr = np.arange(r0, r1)[:, None]
            k = (rr // 89 + cols[None] // 113) % 6
            data = SIG[k].transpose(2, 0, 1) + ((rr + cols[None]) % 64).astype(np.uint16)[None]
            dst.write(data, window=rasterio.windows.Window(0, r0, n, r1 - r0))
        dst.descriptions = ("blue", "green", "red", "nir")


def main() -> int:
    quick = os.environ.get("QUICK") == "1"
    cls_n, img_n = (6000, 4000) if quick else (36000, 20000)
    out_path = ROOT / "bench" / "results" / ("measure_quick.json" if quick else "measure.json")
    rows = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geovl-bench-measure-") as tmp:
        for kind, big, writer, extra in (
            ("classes_1band_uint8", cls_n, write_classes, ["--class-table", "worldcover"]),
            ("image_4band_uint16", img_n, write_image, []),
        ):
            for n in (big // 2, big):
                path = Path(tmp) / f"{kind}_{n}.tif"
                tg = time.perf_counter()
                writer(path, n)
                gen = time.perf_counter() - tg
                r = _run(path, extra)
                doc = r["doc"]
                valid = doc["dates"]["image"]["valid_pixels"]
                rows[f"{kind}:{n}"] = {
                    "kind": kind,
                    "size": [n, n],
                    "pixels": n * n,
                    "file_mb": round(path.stat().st_size / 2**20, 1),
                    "generate_seconds": round(gen, 1),
                    "measure_wall_seconds": round(r["wall"], 2),
                    "pixels_per_second": round(n * n / r["wall"]),
                    "peak_rss_mb": r["peak_rss_mb"],
                    "valid_pixels": valid,
                    "within_goal": r["peak_rss_mb"] <= GOAL_MB,
                }
                print(f"{kind} {n}²: {rows[f'{kind}:{n}']}", file=sys.stderr, flush=True)
                path.unlink()
    ratios = {}
    for kind, big in (("classes_1band_uint8", cls_n), ("image_4band_uint16", img_n)):
        a, b = rows[f"{kind}:{big // 2}"], rows[f"{kind}:{big}"]
        ratios[kind] = {
            "pixels": round(b["pixels"] / a["pixels"], 2),
            "wall_seconds": round(b["measure_wall_seconds"] / a["measure_wall_seconds"], 2),
            "peak_rss": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
        }
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(
        subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True).stdout
    )
    cpu = (
        next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    result = {
        "benchmark": "geovl measure --json on a one-band uint8 class raster and a 4-band uint16 image (tiled deflate "
        "GeoTIFFs, EPSG:32650), each in its own subprocess; peak RSS = the child's VmHWM at exit",
        "quick": quick,
        "goal_peak_rss_mb": GOAL_MB,
        "git_commit": commit + ("-dirty" if dirty else ""),
        "machine": {
            "cpu": cpu,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {"numpy": np.__version__, "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__},
        "runs": rows,
        "ratios_large_over_small": ratios,
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "note": "Wall times on a shared 2-core machine vary run to run; compare the ratios of one run. "
        "Linear time: wall ratio ≈ pixel ratio (4); bounded memory: peak RSS ratio ≈ 1.",
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    print(f"wrote {out_path}")
    return 0


def _run(path: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-c", CHILD, "measure", str(path), "--json", "--no-progress", *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=ROOT, env=env)
        _, status, _ = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read().decode(), fe.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"measure {path.name} failed:\n{out[-2000:]}\n{err[-2000:]}")
    hwm = [ln for ln in err.splitlines() if ln.startswith("VmHWM:")][-1]
    return {"wall": wall, "doc": json.loads(out), "peak_rss_mb": round(int(hwm.split()[1]) / 1024, 1)}


# The child prints its own peak RSS (VmHWM of its address space) at exit. ru_maxrss from wait4 is not
# used: Linux carries the forking parent's RSS into it across exec, and the parent holds the writer's strips.
CHILD = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))))\n"
    "from geovl.cli import main\n"
    "sys.exit(main(sys.argv[1:]))"
)


if __name__ == "__main__":
    sys.exit(main())
