"""The shared harness of every bench in bench/: interleaved repeats, spreads, provenance, failure.

- **Interleaving.** :func:`interleave` runs the sides A B A B A B (``repeats`` rounds, each side at
  least 3 times), so a slow minute on the shared machine hits both sides instead of one. Ratios are
  taken per round (A_i / B_i) and reported as median and min–max (:func:`spread`), never best-of.
- **Provenance.** :func:`environment` records the git commit (and whether src/ or bench/ outside
  bench/results had uncommitted changes), the
  machine (CPU model, cores, load), Python and library versions; each bench adds the exact settings
  of both sides.
- **Failure.** A side that raises is recorded with its error; :func:`finish` then writes a result file
  with ``status: failed`` and *no* ratios and the bench exits non-zero (``make bench`` stops).
- **Workers.** The trainers (bench_sft, bench_grpo) run each side in a fresh subprocess
  (same script, ``--worker NAME``) so neither run's memory, threads or compiled kernels leak into the
  other's numbers; the worker writes its measurements as JSON.
- **Size.** ``QUICK=1`` in the environment (``make bench QUICK=1``) or ``--quick`` selects the small
  size every bench defines (all benches together a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
MIN_REPEATS = 3


class SideFailed(RuntimeError):
    def __init__(self, side: str, error: str):
        super().__init__(f"{side}: {error}")
        self.side, self.error = side, error


def quick_from_env() -> bool:
    return os.environ.get("QUICK", "").strip() not in ("", "0", "false", "no")


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def vm_hwm_mb() -> float:
    """This process's own peak RSS (``VmHWM``); unlike ``ru_maxrss`` of a child it excludes the parent's at fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return peak_rss_mb()


# -- provenance -------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git() -> dict:
    def git(*args):
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else None

    status = git(
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        "src",
        "bench",
        ":(exclude)bench/results",
        "pyproject.toml",
        "requirements.txt",
    )
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def versions(*packages: str) -> dict:
    out = {"python": platform.python_version()}
    for p in ("torch", "transformers", "trl", "peft", "datasets", "numpy", *packages):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def environment(*packages: str) -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "git": _git(),
        "machine": {
            "cpu_model": _cpu_model(),
            "cpus": os.cpu_count(),
            "cpus_usable": affinity,
            "platform": platform.platform(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        },  # fmt: skip
        "versions": versions(*packages),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- statistics -------------------------------------------------------------------------------------


def spread(values: list[float], digits: int = 3) -> dict:
    vals = [float(v) for v in values]
    return {"median": round(statistics.median(vals), digits), "min": round(min(vals), digits),
            "max": round(max(vals), digits), "runs": [round(v, digits) for v in vals]}  # fmt: skip


def ratio(a_runs: list[dict], b_runs: list[dict], key: str, meaning: str, goal: float | None = None) -> dict:
    """Per-round ratio ``a[key] / b[key]`` (round i of A against round i of B) as median and min–max."""
    r = spread([a[key] / b[key] for a, b in zip(a_runs, b_runs, strict=True)])
    r["meaning"] = meaning
    if goal is not None:
        r["goal_min"] = goal
        r["goal_met_by_median"] = r["median"] >= goal
    return r


def exact_same(runs: list[dict], key: str) -> bool:
    """Counts that must not vary between repeats (forward calls, tokens) really did not."""
    return len({json.dumps(r[key], sort_keys=True) for r in runs}) == 1


# -- running the sides ------------------------------------------------------------------------------


def interleave(sides: dict[str, Callable[[int], dict]], repeats: int, log=sys.stderr) -> dict[str, list[dict]]:
    """Run the sides in rounds (A B A B A B); ``sides[name](round)`` returns that run's measurements.
    A side that raises stops the bench with :class:`SideFailed` naming it."""
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats must be >= {MIN_REPEATS}, got {repeats}")
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for i in range(repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            try:
                r = fn(i)
            except SideFailed:
                raise
            except BaseException as e:  # noqa: BLE001 - recorded, then the bench fails
                if isinstance(e, KeyboardInterrupt):
                    raise
                raise SideFailed(name, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}") from e
            r["round"] = i
            runs[name].append(r)
            print(f"  round {i + 1}/{repeats} {name}: {time.perf_counter() - t0:.1f} s", file=log, flush=True)
    return runs


def finish(out: Path, body: Callable[[dict], dict], name: str, packages: tuple[str, ...] = ()) -> int:
    """Run ``body(env)`` (which returns the result dict) and write it to ``out``. On any failure write
    ``{"status": "failed", "error": ...}`` without ratios instead and return 1."""
    env = environment(*packages)
    t0 = time.perf_counter()
    try:
        result = body(env)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - every failure is recorded in the result file
        side = e.side if isinstance(e, SideFailed) else None
        err = e.error if isinstance(e, SideFailed) else f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
        failed = {"benchmark": name, "status": "failed", "failed_side": side, "error": err, "environment": env,
                  "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(failed, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"FAILED {name}" + (f" (side {side})" if side else "") + f": {err.splitlines()[0] if err else ''}\n→ {out}",
              file=sys.stderr)  # fmt: skip
        return 1
    result = {
        "benchmark": name,
        "status": "ok",
        **result,
        "environment": env,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"→ {out} ({result['seconds']} s)", file=sys.stderr)
    return 0


def fmt_ratio(r: dict, unit: str = "×") -> str:
    return f"{r['median']:.2f}{unit} ({r['min']:.2f}–{r['max']:.2f})"


def behind(r: dict, what: str) -> str | None:
    """The result file's ``behind`` note for a ratio (ours / baseline, higher is better): None when the
    median is ≥ 1; otherwise says whether every round was below 1× or the range includes 1×."""
    if r["median"] >= 1.0:
        return None
    how = (
        "below 1× in every round"
        if r["max"] < 1.0
        else "median below 1×, but the range includes 1×: no measured difference in this run"
    )
    return f"{what}: {fmt_ratio(r)}, {how}"


# -- exact counts ------------------------------------------------------------------------------------


class CallCounter:
    """Exact counts of a Qwen2.5-VL model's work, the same on every side: wraps ``forward`` of the
    transformers classes of the language model and the vision encoder (class level, so models built
    inside a trainer are counted too). ``forward_calls``: LLM forwards; ``prefill_calls`` /
    ``prefill_positions``: forwards over more than one position and their batch × length (padding
    included); ``vision_calls`` / ``vision_patches``: vision-encoder forwards and the patches they saw.
    Use as a context manager; :meth:`reset` zeroes the counts (e.g. after a warm-up)."""

    def __init__(self):
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as m

        self._classes = (m.Qwen2_5_VLTextModel, m.Qwen2_5_VisionTransformerPretrainedModel)
        self._orig = [c.forward for c in self._classes]
        self.reset()

    def reset(self):
        self.c = {
            "forward_calls": 0,
            "prefill_calls": 0,
            "prefill_positions": 0,
            "vision_calls": 0,
            "vision_patches": 0,
        }

    def __enter__(self):
        llm_fwd, vis_fwd = self._orig
        c = self

        def llm(mod, *args, **kw):
            x = kw.get("inputs_embeds")
            if x is None:
                x = kw.get("input_ids", args[0] if args else None)
            c.c["forward_calls"] += 1
            if x is not None and x.dim() >= 2 and x.shape[1] > 1:
                c.c["prefill_calls"] += 1
                c.c["prefill_positions"] += int(x.shape[0] * x.shape[1])
            return llm_fwd(mod, *args, **kw)

        def vis(mod, *args, **kw):
            x = args[0] if args else kw.get("hidden_states", kw.get("pixel_values"))
            c.c["vision_calls"] += 1
            c.c["vision_patches"] += int(x.shape[0]) if x is not None else 0
            return vis_fwd(mod, *args, **kw)

        self._classes[0].forward, self._classes[1].forward = llm, vis
        return self

    def __exit__(self, *exc):
        for cls, f in zip(self._classes, self._orig):
            cls.forward = f


# -- subprocess workers (bench_sft, bench_grpo) ------------------------------------------------------


def parse_args(
    description: str, default_out: Path, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=default_out, help=f"result JSON (default {default_out})")
    ap.add_argument(
        "--quick", action="store_true", default=quick_from_env(), help="small size (also QUICK=1 in the environment)"
    )
    ap.add_argument(
        "--repeats", type=int, default=MIN_REPEATS, help=f"interleaved rounds, >= {MIN_REPEATS} (default {MIN_REPEATS})"
    )
    ap.add_argument("--worker", choices=["geovl", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    if extra:
        extra(ap)
    a = ap.parse_args()
    if not a.worker and a.repeats < MIN_REPEATS:
        ap.error(f"--repeats must be >= {MIN_REPEATS}")
    return a


def serve_worker(a: argparse.Namespace, workers: dict[str, Callable[[Path, Path, Path, dict], dict]]) -> int:
    """In a worker subprocess: run ``workers[a.worker](model, data, out, size)`` and write its result JSON."""
    size = json.loads(a.size)
    a.result.write_text(json.dumps(workers[a.worker](a.model, a.data, a.out, size), indent=2))
    return 0


def run_worker(script: str, which: str, model: Path, data: Path, out: Path, size: dict) -> dict:
    """Run ``script --worker which`` in a fresh Python and return what it measured; a failing worker
    raises :class:`SideFailed` with the tail of its stderr."""
    res = out.with_suffix(".json")
    res.unlink(missing_ok=True)
    cmd = [sys.executable, script, "--worker", which, "--model", str(model), "--data", str(data), "--out", str(out),
           "--result", str(res), "--size", json.dumps(size)]  # fmt: skip
    p = subprocess.run(cmd, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"), capture_output=True, text=True)
    if p.returncode != 0 or not res.is_file():
        raise SideFailed(which, f"worker exited with {p.returncode}:\n{p.stderr[-3000:]}")
    return json.loads(res.read_text())
