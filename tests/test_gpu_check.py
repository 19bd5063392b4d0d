"""scripts/gpu_check.sh, dry run on CPU: the checks that can run here pass and print one JSON line each (also
written to --out), the CUDA-only and missing-package checks print skip with the reason, bad usage exits 2."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(*args, timeout=500):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    import sys

    return subprocess.run(
        ["bash", str(SCRIPT), "--python", sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_dry_run_on_cpu_prints_and_writes_one_json_line_per_check(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()  # an empty carried-wheels folder: the --wheels path runs, nothing to install
    out = tmp_path / "checks.jsonl"
    p = _run(
        "--device", "cpu", "--only", "sft_lora_qwen2.5-vl,merge_logits,zero3,liger", "--out", out, "--wheels", wheels
    )
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    printed = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert printed == [json.loads(line) for line in out.read_text().splitlines()]
    by = {r["check"]: r for r in printed}
    assert list(by) == ["sft_lora_qwen2.5-vl", "merge_logits", "zero3", "liger"]
    assert by["sft_lora_qwen2.5-vl"]["status"] == "pass" and by["sft_lora_qwen2.5-vl"]["detail"]["loss"] > 0
    m = by["merge_logits"]
    assert m["status"] == "pass" and m["detail"]["max_abs_diff"] <= 1e-4 and m["detail"]["adapter_effect"] > 1e-3
    for r in printed:
        assert r["device"] == "cpu"
        if r["status"] == "pass":
            assert r["seconds"] > 0 and r["peak_gpu_mib"] is None
    assert by["zero3"]["status"] == "skip" and "needs CUDA" in by["zero3"]["reason"]
    assert by["liger"]["status"] == "skip" and (
        "liger_kernel" in by["liger"]["reason"] or "needs CUDA" in by["liger"]["reason"]
    )


def test_bad_usage_exits_2(tmp_path):
    p = _run("--device", "cpu", "--only", "nonsense", "--out", tmp_path / "x.jsonl", timeout=120)
    assert p.returncode == 2 and "unknown check(s) ['nonsense']" in p.stderr
    p = _run("--frobnicate", timeout=60)
    assert p.returncode == 2 and "unknown argument --frobnicate" in p.stderr
    p = _run("--device", "cpu", "--wheels", tmp_path / "absent", timeout=60)
    assert p.returncode == 2 and "is not a folder" in p.stderr


def test_cuda_run_without_a_gpu_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        return  # the real run; nothing to refuse
    p = _run("--only", "sft_lora_qwen2-vl", "--out", tmp_path / "x.jsonl", timeout=120)
    assert p.returncode == 2 and "no CUDA device" in p.stderr and not (tmp_path / "x.jsonl").exists()
