"""Benchmark: sampled video decode (geovl.imagery.video.read_frames) on a long clip vs decoding every frame.

A 640×360 H.264 clip (a textured scene panning one pixel per frame, so it does not compress to nothing),
``--seconds`` long at 10 fps, encoded twice with :func:`encode_mp4`: keyframes every 2 s (``keyint=20``)
and x264's default (every 250 frames). For each, in a fresh subprocess (peak RSS per run):

- ``read_frames`` with the default settings (2 fps, at most 16 frames): wall time, frames decoded,
  peak RSS;
- a plain PyAV loop that decodes every frame and converts it to RGB (what a naive reader does): the
  same numbers.

    python bench/bench_video.py [--seconds 120]   # writes bench/results/video.json
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

ROOT = Path(__file__).resolve().parents[1]


def _make(path: Path, seconds: int, keyint: int | None) -> dict:
    import numpy as np

    from geovl.imagery.video import encode_mp4

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (360, 640 + seconds * 10 + 1, 3), dtype=np.uint8)
    base = ((base.astype(np.uint16) + np.roll(base, 1, 1) + np.roll(base, 1, 0)) // 3).astype(np.uint8)  # smoother
    t = time.perf_counter()
    data = encode_mp4((base[:, i : i + 640] for i in range(seconds * 10)), fps=10, keyint=keyint)
    path.write_bytes(data)
    return {"bytes": len(data), "encode_s": round(time.perf_counter() - t, 2)}


def _child(mode: str, path: str) -> None:
    import resource

    t = time.perf_counter()
    if mode == "read_frames":
        from geovl.imagery.video import read_frames

        clip = read_frames(path)
        out = {"frames_kept": len(clip.frames), "frames_decoded": clip.decoded}
    else:
        import av

        n = 0
        with av.open(path) as c:
            for f in c.decode(video=0):
                f.to_ndarray(format="rgb24")
                n += 1
        out = {"frames_kept": n, "frames_decoded": n}
    out["seconds"] = round(time.perf_counter() - t, 3)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        _child(*a.child)
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    results = {"clip": {"width": 640, "height": 360, "fps": 10, "seconds": a.seconds, "frames": a.seconds * 10}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, keyint in (("keyframe_every_2s", 20), ("x264_default_keyint_250", None)):
            p = Path(tmp) / f"{label}.mp4"
            row = _make(p, a.seconds, keyint)
            for mode in ("read_frames", "decode_all"):
                cmd = [sys.executable, __file__, "--child", mode, str(p)]
                row[mode] = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
            results[label] = row
            print(label, json.dumps(row), file=sys.stderr)
    out = ROOT / "bench" / "results" / "video.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
