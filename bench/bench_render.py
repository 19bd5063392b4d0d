"""Peak memory of the one render path on a scene larger than the render size.

Writes a tiled, deflate-compressed N×N 4-band uint16 GeoTIFF (no overviews: the worst case — GDAL
decimates from full-resolution blocks), renders it as `geovl ask`/`infer` do
(``geovl.geo.tiles.image_for_model``: a decimated read of at most 4096² px) in a fresh process, 3 times,
and records the child's peak RSS and time (median and min–max) in bench/results/render.json, with the
harness's provenance. A memory check, not a comparison: there is no baseline side.

    python bench/bench_render.py [--quick] [--size N]      # N: 12000 (full), 6000 (QUICK=1)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from abtest import MIN_REPEATS, finish, quick_from_env, spread  # noqa: E402

CHILD = """
import json, resource, sys, time
from geovl.geo.tiles import image_for_model
t = time.perf_counter()
data, info = image_for_model(sys.argv[1])
print(json.dumps({"seconds": round(time.perf_counter() - t, 2), "out": [info["width"], info["height"]],
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""
RSS_BUDGET_MB = 1536


def write_scene(path: Path, n: int) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=n,
        height=n,
        count=4,
        dtype="uint16",
        crs="EPSG:32650",
        transform=from_origin(0, 0, 10, 10),
        tiled=True,
        compress="deflate",
    ) as dst:
        row = (np.arange(n, dtype=np.uint32) % 4000 + 100).astype(np.uint16)
        blk = np.broadcast_to(row, (4, 512, n)).copy()
        for y in range(0, n, 512):
            h = min(512, n - y)
            dst.write(blk[:, :h], window=Window(0, y, n, h))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", default=quick_from_env())
    ap.add_argument("--size", type=int, default=None, help="scene side in pixels")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "render.json")
    a = ap.parse_args()
    n = a.size or (6000 if a.quick else 12000)

    def body(env: dict) -> dict:
        runs = []
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "scene.tif"
            write_scene(p, n)
            for i in range(MIN_REPEATS):
                out = subprocess.run([sys.executable, "-c", CHILD, str(p)], capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"render run {i + 1} failed: {out.stderr.strip()[-2000:]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  run {i + 1}/{MIN_REPEATS}: {runs[-1]}", file=sys.stderr, flush=True)
        peak = spread([r["peak_rss_mb"] for r in runs], 1)
        return {
            "what": "the one render path (geovl.geo.tiles.image_for_model, as ask/infer) on a tiled deflate GeoTIFF "
            "without overviews, in a fresh process per run",
            "size": "quick" if a.quick else "full",
            "settings": {
                "scene": f"{n}x{n}x4 uint16",
                "decoded_bytes": n * n * 4 * 2,
                "rendered_px": runs[0]["out"],
                "runs": MIN_REPEATS,
            },
            "peak_rss_mb": peak,
            "render_seconds": spread([r["seconds"] for r in runs], 2),
            "rss_budget_mb": RSS_BUDGET_MB,
            "within_budget": peak["max"] <= RSS_BUDGET_MB,
            "repeats": MIN_REPEATS,
            "table": {
                "kind": "memory",
                "name": "render (`bench_render.py`)",
                "baseline": "none: a memory check (peak RSS against the 1.5 GB budget)",
                "counts": f"{n}×{n}×4 uint16 ({n * n * 8 / 1e9:.2f} GB decoded) rendered to "
                f"{runs[0]['out'][0]}×{runs[0]['out'][1]} px; time {spread([r['seconds'] for r in runs], 2)['median']} s (median)",
                "value": "peak_rss_mb",
            },
        }

    return finish(a.out, body, "render")


if __name__ == "__main__":
    sys.exit(main())
