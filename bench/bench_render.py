"""Peak memory of the one render path on a scene larger than the render size.

Writes a tiled, deflate-compressed N×N 4-band uint16 GeoTIFF (no overviews: the worst case — GDAL
decimates from full-resolution blocks), renders it as `geovl ask`/`infer` do
(``geovl.geo.tiles.image_for_model``: a 4096² decimated read) in a fresh process, and records the
child's peak RSS in bench/results/render.json.

    python bench/bench_render.py [N]      # default 12000
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from geovl.geo.tiles import image_for_model
t = time.perf_counter()
data, info = image_for_model(sys.argv[1])
print(json.dumps({"seconds": round(time.perf_counter() - t, 2), "out": [info["width"], info["height"]],
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def main() -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 12000
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "scene.tif"
        with rasterio.open(p, "w", driver="GTiff", width=n, height=n, count=4, dtype="uint16", crs="EPSG:32650",
                           transform=from_origin(0, 0, 10, 10), tiled=True, compress="deflate") as dst:
            row = (np.arange(n, dtype=np.uint32) % 4000 + 100).astype(np.uint16)
            blk = np.broadcast_to(row, (4, 512, n)).copy()
            for y in range(0, n, 512):
                h = min(512, n - y)
                dst.write(blk[:, :h], window=Window(0, y, n, h))
        out = subprocess.run([sys.executable, "-c", CHILD, str(p)], capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update({"scene": f"{n}x{n}x4 uint16", "decoded_bytes": n * n * 4 * 2, "date": time.strftime("%Y-%m-%d")})
    dest = Path(__file__).parent / "results" / "render.json"
    dest.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
