"""The side-by-side harness of bench_sft.py and bench_grpo.py: geovl and the TRL baseline each train in
their own subprocess (same script, ``--worker geovl|trl``), so neither run's memory, threads or
compiled kernels leak into the other's numbers; each worker writes its measurements as JSON."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Callable


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def parse_args(description: str, default_out: Path) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=default_out, help=f"result JSON (default {default_out})")
    ap.add_argument("--worker", choices=["geovl", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args()


def serve_worker(a: argparse.Namespace, workers: dict[str, Callable[[Path, Path, Path], dict]]) -> int:
    """In a worker subprocess: run ``workers[a.worker](model, data, out)`` and write its result JSON."""
    a.result.write_text(json.dumps(workers[a.worker](a.model, a.data, a.out), indent=2))
    return 0


def run_worker(script: str, which: str, model: Path, data: Path, out: Path) -> dict:
    """Run ``script --worker which`` in a fresh Python and return what it measured."""
    res = out.with_suffix(".json")
    cmd = [sys.executable, script, "--worker", which, "--model", str(model), "--data", str(data), "--out", str(out), "--result", str(res)]
    p = subprocess.run(cmd, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"), capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"{which} worker failed ({p.returncode})")
    return json.loads(res.read_text())
