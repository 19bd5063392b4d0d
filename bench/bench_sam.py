"""Benchmark the chunked spectral angle mapper (`geovl spectral map`).

1. **Bounded memory.** Writes an ENVI BSQ int16 cube larger than the memory budget (default
   300 bands × 3000 × 3000 ≈ 5.4 GB) to a temporary folder in row chunks, then runs the chunked
   SAM (:func:`geovl.spectral.sam.sam_map`, the code behind `geovl spectral map`) over it in a
   subprocess. Peak RSS is the child's own ``VmHWM`` (``/proc/self/status``); it must stay ≤ 1.5 GB.
   (``ru_maxrss`` from ``os.wait4`` is recorded too, but on Linux it includes the parent's RSS at fork.)
2. **Throughput.** On a cube that fits in memory (default 300 × 1000 × 1000), compares the same
   chunked code path (reading from disk, writing the GeoTIFF) with a straightforward whole-array
   numpy SAM on the cube already loaded in memory (:func:`geovl.spectral.sam.sam_numpy`; load time
   excluded), each in its own subprocess in the same run, best of ``--repeats``. The chunked path
   should reach ≥ 0.8× the in-memory pixels/s. The two class maps are compared pixel by pixel (float32 rounding can
   flip exact ties).

The cube is a linear mixture of the 10 library endmembers (7 alteration minerals + 3 background,
USGS splib07) with smooth abundance patterns and noise, wavelengths 400–2500 nm. If the temp
folder lacks space for the big cube, a smaller one is used and the result says so. The big
file is deleted afterwards.

    python bench/bench_sam.py [--big 3000] [--small 1000] [--bands 300] [--tmp /tmp] [--out bench/results/sam.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RSS_LIMIT_MB = 1536
RATIO_TARGET = 0.8


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
    with EnviWriter(path, bands, size, size, "int16", wavelengths=wl, fwhm=fwhm,
                    good_bands=water_vapour_mask(wl), scale=10000) as w:
        for r0 in range(0, size, chunk_rows):
            h = min(chunk_rows, size - r0)
            yy = np.arange(r0, r0 + h, dtype=np.float32)[:, None]
            logits = np.stack([3 * np.sin(freq[k, 0] * xx[None] + phase[k, 0]) * np.cos(freq[k, 1] * yy + phase[k, 1])
                               for k in range(K)])  # (K, h, size)
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
    from geovl.spectral.sam import prepare, sam_map, sam_numpy

    lib = named_library("minerals+background")
    cube = open_cube(cube_path)
    if mode == "chunked":
        t0 = time.perf_counter()
        summary = sam_map(cube, lib, out)
        secs = time.perf_counter() - t0
        res = {"seconds": secs, "windows": summary["windows"], "rows_per_window": summary["rows_per_window"],
               "bands_used": summary["bands_used"]}
    else:
        L, bidx = prepare(cube, lib)
        data = cube.read_float(bidx)  # whole cube of the used bands in memory (not timed)
        t0 = time.perf_counter()
        cls, ang = sam_numpy(data, L)
        secs = time.perf_counter() - t0
        np.save(out, cls)
        res = {"seconds": secs, "bands_used": int(len(bidx))}
    res["pixels"] = cube.rows * cube.cols
    status = Path("/proc/self/status").read_text()
    res["vm_hwm_mb"] = round(int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM:"))) / 1024, 1)
    print(json.dumps(res))


def run_child(mode: str, cube: Path, out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(cube), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    stdout, stderr = p.stdout.read().decode(), p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode} SAM failed:\n{stdout}\n{stderr}")
    res = json.loads(stdout.strip().splitlines()[-1])
    # Peak RSS: the child's own VmHWM (/proc/self/status, this process image only). ru_maxrss from
    # os.wait4 is kept for reference but on Linux it also carries the parent's RSS at fork time.
    res["peak_rss_mb"] = res.pop("vm_hwm_mb")
    res["ru_maxrss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: KiB
    res["pixels_per_second"] = round(res["pixels"] / res["seconds"], 1)
    res["seconds"] = round(res["seconds"], 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", type=int, default=3000, help="side of the larger-than-budget cube")
    ap.add_argument("--small", type=int, default=1000, help="side of the in-memory comparison cube")
    ap.add_argument("--bands", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sam.json"))
    ap.add_argument("--child", nargs=3, metavar=("MODE", "CUBE", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child)

    work = Path(tempfile.mkdtemp(prefix="geovl-bench-sam-", dir=a.tmp))
    note = ""
    big = a.big
    need = a.bands * big * big * 2
    free = shutil.disk_usage(work).free
    if free < need * 1.2 + 2**30:
        big = int(np.sqrt((free - 2**30) / 1.2 / (a.bands * 2)))
        note = f"only {free / 2**30:.1f} GiB free in {a.tmp}: big cube reduced to {big}×{big}"
        need = a.bands * big * big * 2
    results: dict = {"benchmark": "chunked spectral angle mapper (geovl spectral map) vs whole-array numpy SAM",
                     "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
                     "library": "minerals+background (10 USGS splib07 records)", "note": note}
    try:
        t0 = time.perf_counter()
        big_hdr = make_cube(work / "big.img", a.bands, big)
        gen = time.perf_counter() - t0
        big_run = run_child("chunked", big_hdr, work / "big_sam.tif")
        results["big"] = {"shape": [a.bands, big, big], "dtype": "int16", "file_gb": round(need / 1e9, 2),
                          "write_seconds": round(gen, 1), **big_run, "rss_limit_mb": RSS_LIMIT_MB,
                          "rss_ok": big_run["peak_rss_mb"] <= RSS_LIMIT_MB}
        (work / "big.img").unlink()
        (work / "big_sam.tif").unlink(missing_ok=True)

        small_hdr = make_cube(work / "small.img", a.bands, a.small, seed=1)
        chunked, inmem = [], []
        for _ in range(a.repeats):
            chunked.append(run_child("chunked", small_hdr, work / "small_sam.tif"))
            inmem.append(run_child("inmem", small_hdr, work / "small_inmem.npy"))
        import warnings

        import rasterio

        with warnings.catch_warnings(), rasterio.open(work / "small_sam.tif") as ds:
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            agree = float(np.mean(ds.read(1) == np.load(work / "small_inmem.npy")))
        best_c = max(chunked, key=lambda r: r["pixels_per_second"])
        best_m = max(inmem, key=lambda r: r["pixels_per_second"])
        ratio = best_c["pixels_per_second"] / best_m["pixels_per_second"]
        results["fits"] = {"shape": [a.bands, a.small, a.small], "chunked": best_c, "in_memory": best_m,
                           "all_runs": {"chunked": chunked, "in_memory": inmem},
                           "throughput_ratio": round(ratio, 3), "ratio_target": RATIO_TARGET,
                           "ratio_ok": ratio >= RATIO_TARGET, "class_map_agreement": agree}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    b, f = results["big"], results["fits"]
    rows = [
        ("run", "cube", "seconds", "Mpx/s", "peak RSS MB"),
        ("chunked, on disk (big)", "×".join(map(str, b["shape"])), b["seconds"], b["pixels_per_second"] / 1e6, b["peak_rss_mb"]),
        ("chunked, on disk (fits)", "×".join(map(str, f["shape"])), f["chunked"]["seconds"],
         f["chunked"]["pixels_per_second"] / 1e6, f["chunked"]["peak_rss_mb"]),
        ("whole-array numpy (fits)", "×".join(map(str, f["shape"])), f["in_memory"]["seconds"],
         f["in_memory"]["pixels_per_second"] / 1e6, f["in_memory"]["peak_rss_mb"]),
    ]
    for r in rows:
        print(f"{r[0]:<26} {r[1]:<16} {r[2]!s:>8} {r[3] if isinstance(r[3], str) else f'{r[3]:.2f}':>7} {r[4]!s:>12}")
    print(f"big cube {b['file_gb']} GB: peak RSS {b['peak_rss_mb']} MB (limit {RSS_LIMIT_MB}: {'ok' if b['rss_ok'] else 'FAIL'}); "
          f"throughput chunked/in-memory {f['throughput_ratio']:.2f} (target {RATIO_TARGET}: {'ok' if f['ratio_ok'] else 'FAIL'}); "
          f"class maps agree on {f['class_map_agreement']:.4%} of pixels" + (f"; NOTE {note}" if note else ""))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
