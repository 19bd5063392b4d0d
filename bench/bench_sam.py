"""Benchmark the chunked spectral angle mapper (`geovl spectral map`).

1. **Bounded memory.** Writes an ENVI BSQ int16 cube (full size 300 bands × 3000 × 3000 ≈ 5.4 GB,
   larger than the memory budget; ``--quick`` 300 × 1700 × 1700 ≈ 1.7 GB, just above it) to a temporary folder in row
   chunks, then runs the chunked SAM (:func:`geovl.spectral.sam.sam_map`, the code behind
   `geovl spectral map`) over it in a subprocess. Peak RSS is the child's own ``VmHWM``; it must stay
   ≤ 1.5 GB.
2. **Throughput, same kernel on both sides.** On a cube that fits in memory (full 300 × 1000 × 1000,
   quick 300 × 500 × 500), three sides, each run in its own subprocess, interleaved A B C A B C A B C:
   ``chunked`` (the code path above: reads windows from disk, writes the GeoTIFF),
   ``in_memory_same_kernel`` (:func:`geovl.spectral.sam.classify_block` — the very kernel the chunked path
   runs — on the whole cube already in memory; load time excluded, the library resampling ``prepare`` timed on
   every side as it is inside the chunked path) and ``in_memory_naive``
   (:func:`geovl.spectral.sam.sam_numpy`, arccos of every library record; the old baseline, kept for
   reference). The fair ratio is chunked / same-kernel in-memory pixels/s; it is taken per round and
   reported as median (min–max). The chunked path pays for reading int16 from disk, scaling, and the
   GeoTIFF; where it is behind, the result file says so.

The cube is a linear mixture of the 10 library endmembers (7 alteration minerals + 3 background,
USGS splib07) with smooth abundance patterns and noise, wavelengths 400–2500 nm. If the temp
folder lacks space for the big cube, a smaller one is used and the result says so. The big
file is deleted afterwards. Class maps of all sides are compared pixel by pixel.

    python bench/bench_sam.py [--quick] [--repeats 3] [--big N] [--small N] [--bands 300]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from abtest import MIN_REPEATS, SideFailed, finish, fmt_ratio, interleave, quick_from_env, ratio, spread, vm_hwm_mb
from abtest import behind as behind_note

ROOT = Path(__file__).resolve().parents[1]
RSS_LIMIT_MB = 1536
RATIO_TARGET = 0.8
SIZES = {"full": {"big": 3000, "small": 1000}, "quick": {"big": 1700, "small": 500}}
MODES = ("chunked", "in_memory_same_kernel", "in_memory_naive")


def make_cube(path: Path, bands: int, size: int, chunk_rows: int = 50, seed: int = 0) -> Path:
    from geovl.spectral.cube import Window
    from geovl.spectral.envi import EnviWriter
    from geovl.spectral.library import ALTERATION, BACKGROUND, load_usgs
    from geovl.spectral.sensors import resample, water_vapour_mask

    wl = np.linspace(400.0, 2500.0, bands)
    fwhm = np.full(bands, float(wl[1] - wl[0]))
    lib = load_usgs().subset([m.rule for m in ALTERATION + BACKGROUND])
    E = resample(lib.filled(), lib.wavelengths, wl, fwhm).astype(np.float32)  # (K, B)
    K = E.shape[0]
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.002, 0.02, (K, 2))
    phase = rng.uniform(0, 2 * np.pi, (K, 2))
    xx = np.arange(size, dtype=np.float32)
    with EnviWriter(
        path, bands, size, size, "int16", wavelengths=wl, fwhm=fwhm, good_bands=water_vapour_mask(wl), scale=10000
    ) as w:
        for r0 in range(0, size, chunk_rows):
            h = min(chunk_rows, size - r0)
            yy = np.arange(r0, r0 + h, dtype=np.float32)[:, None]
            logits = np.stack(
                [
                    3 * np.sin(freq[k, 0] * xx[None] + phase[k, 0]) * np.cos(freq[k, 1] * yy + phase[k, 1])
                    for k in range(K)
                ]
            )  # (K, h, size)
            ab = np.exp(logits)
            ab /= ab.sum(0, keepdims=True)
            refl = np.einsum("kb,khw->bhw", E, ab, optimize=True)
            refl += rng.standard_normal(refl.shape, dtype=np.float32) * np.float32(0.004)
            w.write(np.clip(np.round(refl * 10000), 0, 32767).astype(np.int16), Window(r0, 0, h, size))
    return path.with_suffix(".hdr")


def child(mode: str, cube_path: str, out: str) -> None:
    """Run in a subprocess: print a JSON line with seconds and pixels."""
    from geovl.spectral.library import named_library
    from geovl.spectral.readers import open_cube
    from geovl.spectral.sam import classify_block, prepare, sam_map, sam_numpy

    lib = named_library("minerals+background")
    cube = open_cube(cube_path)
    import rasterio  # noqa: F401 - the GeoTIFF writer's import (seconds on a loaded machine) is not the work: not timed
    import tqdm  # noqa: F401

    if mode == "chunked":
        t0 = time.perf_counter()
        summary = sam_map(cube, lib, out)
        secs = time.perf_counter() - t0
        res = {
            "seconds": secs,
            "windows": summary["windows"],
            "rows_per_window": summary["rows_per_window"],
            "bands_used": summary["bands_used"],
        }
    else:
        kernel = {"in_memory_same_kernel": classify_block, "in_memory_naive": sam_numpy}[mode]
        t0 = time.perf_counter()
        L, bidx = prepare(cube, lib)  # the library resampled to the cube's bands: timed, as inside sam_map
        prep = time.perf_counter() - t0
        data = cube.read_float(bidx)  # whole cube of the used bands in memory (not timed)
        t0 = time.perf_counter()
        cls, ang = kernel(data, L)
        secs = time.perf_counter() - t0 + prep
        np.save(out, cls)
        res = {
            "seconds": secs,
            "prepare_seconds": round(prep, 3),
            "bands_used": int(len(bidx)),
            "kernel": kernel.__name__,
        }
    res["pixels"] = cube.rows * cube.cols
    res["vm_hwm_mb"] = vm_hwm_mb()
    print(json.dumps(res))


def run_child(mode: str, cube: Path, out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(cube), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    stdout, stderr = p.stdout.read().decode(), p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SideFailed(mode, f"exit {os.waitstatus_to_exitcode(status)}:\n{stdout[-1000:]}\n{stderr[-3000:]}")
    res = json.loads(stdout.strip().splitlines()[-1])
    # Peak RSS: the child's own VmHWM (/proc/self/status, this process image only). ru_maxrss from
    # os.wait4 is kept for reference but on Linux it also carries the parent's RSS at fork time.
    res["peak_rss_mb"] = res.pop("vm_hwm_mb")
    res["ru_maxrss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: KiB
    res["pixels_per_second"] = round(res["pixels"] / res["seconds"], 1)
    res["seconds"] = round(res["seconds"], 3)
    return res


def _class_map(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return ds.read(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=quick_from_env())
    ap.add_argument("--big", type=int, help="side of the bounded-memory cube (default 3000, quick 1700)")
    ap.add_argument("--small", type=int, help="side of the in-memory comparison cube (default 1000, quick 500)")
    ap.add_argument("--bands", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=MIN_REPEATS)
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sam.json")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "CUBE", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return 0
    size = SIZES["quick" if a.quick else "full"]
    big, small = a.big or size["big"], a.small or size["small"]

    def body(env: dict) -> dict:
        work = Path(tempfile.mkdtemp(prefix="geovl-bench-sam-", dir=a.tmp))
        note, b = "", big
        need = a.bands * b * b * 2
        free = shutil.disk_usage(work).free
        if free < need * 1.2 + 2**30:
            b = int(np.sqrt((free - 2**30) / 1.2 / (a.bands * 2)))
            note = f"only {free / 2**30:.1f} GiB free in {a.tmp}: big cube reduced to {b}×{b}"
            need = a.bands * b * b * 2
        try:
            t0 = time.perf_counter()
            big_hdr = make_cube(work / "big.img", a.bands, b)
            gen = time.perf_counter() - t0
            try:
                big_run = run_child("chunked", big_hdr, work / "big_sam.tif")
            except SideFailed as e:
                raise SideFailed("chunked (big cube)", e.error) from None
            big_res = {"shape": [a.bands, b, b], "dtype": "int16", "file_gb": round(need / 1e9, 2),
                       "write_seconds": round(gen, 1), **big_run, "rss_limit_mb": RSS_LIMIT_MB,
                       "rss_ok": big_run["peak_rss_mb"] <= RSS_LIMIT_MB,
                       "cube_larger_than_rss_limit": need / 2**20 > RSS_LIMIT_MB}  # fmt: skip
            (work / "big.img").unlink()
            (work / "big_sam.tif").unlink(missing_ok=True)

            small_hdr = make_cube(work / "small.img", a.bands, small, seed=1)
            outs = {
                "chunked": work / "small_sam.tif",
                "in_memory_same_kernel": work / "same.npy",
                "in_memory_naive": work / "naive.npy",
            }
            runs = interleave({m: (lambda i, m=m: run_child(m, small_hdr, outs[m])) for m in MODES}, a.repeats)
            maps = {m: _class_map(outs[m]) for m in MODES}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ref = maps["in_memory_same_kernel"]
        agree = {m: float(np.mean(maps[m] == ref)) for m in MODES if m != "in_memory_same_kernel"}
        fair = ratio(runs["chunked"], runs["in_memory_same_kernel"], "pixels_per_second",
                     "chunked (disk → GeoTIFF) pixels/s over the same kernel (classify_block) on the cube in memory, per round",
                     goal=RATIO_TARGET)  # fmt: skip
        naive = ratio(
            runs["chunked"],
            runs["in_memory_naive"],
            "pixels_per_second",
            "chunked pixels/s over sam_numpy (arccos of every record) in memory: the old, slower-kernel baseline",
        )
        kern = ratio(
            runs["in_memory_same_kernel"],
            runs["in_memory_naive"],
            "pixels_per_second",
            "kernel effect alone: classify_block over sam_numpy, both in memory",
        )
        behind = behind_note(fair, "chunked pixels/s vs the same kernel on the cube already in memory (goal ≥ 0.8×)")
        if behind:
            behind += "; what the chunked path buys is bounded memory on cubes larger than RAM"
        summary = {m: {"pixels_per_second": spread([r["pixels_per_second"] for r in runs[m]], 1),
                       "seconds": spread([r["seconds"] for r in runs[m]]),
                       "peak_rss_mb": spread([r["peak_rss_mb"] for r in runs[m]], 1)} for m in MODES}  # fmt: skip
        return {
            "what": "chunked spectral angle mapper (geovl spectral map) vs the same kernel in memory (and the old naive kernel)",
            "size": "quick" if a.quick else "full",
            "repeats": a.repeats,
            "order": ", ".join(MODES) + " in rounds",
            "settings": {
                "shared": {
                    "library": "minerals+background (10 USGS splib07 records)",
                    "bands": a.bands,
                    "threads": os.environ.get("OMP_NUM_THREADS", "2") + " (OMP_NUM_THREADS of each child)",
                },
                "chunked": "geovl.spectral.sam.sam_map (all of it timed: library resampling, reading, classification, GeoTIFF; "
                "module imports done before timing on every side): "
                "raw int16 strips read one ahead in a thread, classify_block per strip, GeoTIFF written one behind in a thread",
                "in_memory_same_kernel": "library resampling (prepare) + classify_block on the whole cube (used bands, float32) "
                "already in memory; loading not timed",
                "in_memory_naive": "prepare + sam_numpy on the same in-memory cube: arccos of all K angles per pixel, then argmin",
            },  # fmt: skip
            "note": note,
            "big": big_res,
            "fits": {"shape": [a.bands, small, small], "class_map_agreement_with_same_kernel": agree},
            "summary": summary,
            "ratios": {
                "chunked_over_same_kernel_in_memory": fair,
                "chunked_over_naive_in_memory": naive,
                "same_kernel_over_naive_in_memory": kern,
            },
            "behind": behind,
            "runs": runs,
            "table": {
                "name": "SAM (`bench_sam.py`)",
                "baseline": "the **same kernel** (`classify_block`) on the cube already in memory",
                "counts": f"{big_res['file_gb']} GB cube mapped at {big_res['peak_rss_mb']:.0f} MB peak RSS "
                f"({big_res['windows']} windows); in-memory side peaks at "
                f"{summary['in_memory_same_kernel']['peak_rss_mb']['median']:.0f} MB on the "
                f"{small}×{small} cube vs {summary['chunked']['peak_rss_mb']['median']:.0f} MB chunked",
                "ratios": [["pixels/s chunked vs same kernel in memory", "chunked_over_same_kernel_in_memory"]],
            },  # fmt: skip
        }

    rc = finish(a.out, body, "sam")
    if rc == 0:
        r = json.loads(a.out.read_text())
        print(f"big cube {r['big']['file_gb']} GB: peak RSS {r['big']['peak_rss_mb']} MB (limit {RSS_LIMIT_MB})")
        for k, v in r["ratios"].items():
            print(f"{k}: {fmt_ratio(v)}")
        if r["behind"]:
            print("BEHIND:", r["behind"])
    return rc


if __name__ == "__main__":
    sys.exit(main())
